"""The one backbone behind every effviz model: tokenizers -> blocks of (token mixer, channel
mixer) on a pre-norm residual stream -> final norm -> pooled token -> linear head.

Models differ only in their ``ModelConfig``: which mixer, where the class token sits (DeiT first,
Vim middle, ViR last, VRWKV none + mean pooling), norm kind, and channel mixer.
"""

import math

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .config import ModelConfig
from .layers import AddNorm, PatchTokenizer, TokenLayout
from .mixers import build_channel_mixer, build_mixer
from .mixers.moe import MoeMlp

# Frames within this much natural-log energy (about 30 dB) of a clip's loudest frame count as its speech.
SPEECH_FRAME_RANGE = 7.0


def speech_mean_normalise(frames: torch.Tensor, fbank_std: float) -> torch.Tensor:
    """Per-utterance cepstral mean normalisation of fbank ``frames`` (batch, frames, mel bins),
    normalised as ``effviz.data.audio.fbank`` does with ``fbank_std`` (divided by 2 * fbank_std).

    Each mel bin's mean over the clip's speech frames (those whose mean energy is within
    ``SPEECH_FRAME_RANGE`` of the loudest frame) is subtracted from every frame. A microphone's
    frequency response and a room's colouring multiply the spectrum by a fixed filter, i.e. add a
    constant to each log-mel bin, so this removes them along with the speaker's average timbre;
    silence and padding are left out of the mean so that they do not set it.
    """
    speech = speech_frames(frames, fbank_std).to(frames.dtype).unsqueeze(-1)
    return frames - (frames * speech).sum(1, keepdim=True) / speech.sum(1, keepdim=True)


def level_floor(frames: torch.Tensor, fbank_std: float, floor_db: float) -> torch.Tensor:
    """Fbank ``frames`` (batch, frames, mel bins), normalised as ``effviz.data.audio.fbank`` does,
    with every bin raised to ``floor_db`` dB under the clip's loudest bin.

    What lies further down is the recording's noise floor, digital silence or a resampler's
    leakage, which differ between microphones and pipelines and set no word apart; a floor tied to
    the clip's own level is the same for a quiet and a loud take of the same word, so the model
    does not learn the level. (The loudest bin, not the loudest frame's mean: one of the 128 mel
    triangles at 16 kHz holds no FFT bin and stays at the fbank's floor whatever the gain.)
    """
    floor = frames.amax((-2, -1)) - floor_db / 10 * math.log(10) / (2 * fbank_std)
    return torch.maximum(frames, floor[:, None, None])


def speech_frames(frames: torch.Tensor, fbank_std: float) -> torch.Tensor:
    """(..., frames) bool: the frames of ``frames`` (..., frames, mel bins) whose mean energy is
    within ``SPEECH_FRAME_RANGE`` of the clip's loudest frame."""
    energy = frames.mean(-1)
    return energy > energy.amax(-1, keepdim=True) - SPEECH_FRAME_RANGE / (2 * fbank_std)


# The causal form's loudest-frame tracker forgets SPEECH_FRAME_RANGE over this many frames (10 s),
# so a quieter microphone is followed within seconds, while the pauses between digits do not
# let the noise floor count as speech.
PEAK_FALL_FRAMES = 1000
# Weight of the prior speech mean, in frames of speech: the first words are normalised mostly by
# it, a few seconds of speech by their own mean.
PRIOR_SPEECH_FRAMES = 50


def running_speech_mean_normalise(frames: torch.Tensor, fbank_std: float, prior_mean: torch.Tensor,
                                  prior_peak: float, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
    """The causal, streaming form of :func:`speech_mean_normalise`: frame t has subtracted the mean
    of the speech frames up to and including t, blended with ``prior_mean`` (mel bins,) at the
    weight of ``PRIOR_SPEECH_FRAMES``.

    A frame counts as speech when its mean energy is within ``SPEECH_FRAME_RANGE`` of a running
    loudest frame that falls by that range every ``PEAK_FALL_FRAMES`` frames and starts at
    ``prior_peak`` (the training utterances' typical loudest frame), so the silence before the
    first word is not taken for speech. ``state`` (None at the start of a stream) is what the
    previous chunk returned: (sum of its speech frames (batch, mel), their count (batch, 1), the
    running loudest energy (batch, 1)), a fixed size however long the stream; chunks of any size
    give the frames one pass gives.
    """
    batch, count, mel = frames.shape
    span = SPEECH_FRAME_RANGE / (2 * fbank_std)
    fall = span / PEAK_FALL_FRAMES
    if state is None:
        state = (frames.new_zeros(batch, mel), frames.new_zeros(batch, 1), frames.new_full((batch, 1), prior_peak))
    if count == 0:
        return frames, state
    total, seen, peak = state
    energy = frames.mean(-1)  # (batch, frames)
    steps = torch.arange(1, count + 1, dtype=frames.dtype, device=frames.device) * fall
    # peak_t = max(peak_0 - fall*t, max_{s<=t} (energy_s - fall*(t - s)))
    peaks = torch.maximum(peak - steps, (energy + steps).cummax(1).values - steps)
    speech = (energy > peaks - span).to(frames.dtype).unsqueeze(-1)
    totals = total.unsqueeze(1) + (frames * speech).cumsum(1)
    seens = seen.unsqueeze(1) + speech.cumsum(1)
    means = (prior_mean * PRIOR_SPEECH_FRAMES + totals) / (PRIOR_SPEECH_FRAMES + seens)
    return frames - means, (totals[:, -1], seens[:, -1], peaks[:, -1:])


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.norm1 = AddNorm(cfg.embed_dim, cfg.norm, cfg.norm_eps)
        self.mixer = build_mixer(cfg, layer_idx)
        self.ffn = build_channel_mixer(cfg, layer_idx)
        self.norm2 = AddNorm(cfg.embed_dim, cfg.norm, cfg.norm_eps) if self.ffn is not None else None

    def forward(self, h, residual, layout: TokenLayout | None):
        h, residual = self.norm1(h, residual)
        h = self.mixer(h, layout)
        if self.ffn is not None:
            h, residual = self.norm2(h, residual)
            h = self.ffn(h, layout)
        return h, residual

    def step(self, h, residual, state: tuple | None):
        """A causal block on the next chunk of a stream; state: (the mixer's, the channel mixer's
        when it has one), None at the start."""
        mixer_state, ffn_state = state if state is not None else (None, None)
        h, residual = self.norm1(h, residual)
        h, mixer_state = self.mixer.step(h, mixer_state)
        if self.ffn is not None:
            h, residual = self.norm2(h, residual)
            if getattr(self.ffn, "stateful", False):  # RWKV's channel mixer shifts tokens
                h, ffn_state = self.ffn.step(h, ffn_state)
            else:
                h = self.ffn(h, None)
        return h, residual, (mixer_state, ffn_state)


class EffvizModel(nn.Module, PyTorchModelHubMixin, library_name="effviz"):
    """Classifier over image and/or audio tokens. ``forward(image=..., audio=...)`` -> logits.

    image: (batch, in_chans, H, W) with H, W multiples of the patch size.
    audio: (batch, frames, mel_bins) Kaldi fbank, frames >= the audio patch size.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if "text" in config.modalities:
            raise ValueError("a text config is a language model's: build it with effviz.models.language.LanguageModel")
        self.config = cfg = config
        dim = cfg.embed_dim
        self.tokenizers = nn.ModuleDict()
        if "image" in cfg.modalities:
            self.tokenizers["image"] = PatchTokenizer(cfg.in_chans, cfg.patch_size, dim, cfg.grid_size, cfg.stem_channels,
                                                      cfg.stem_depth, cfg.stem_stride)
        if "audio" in cfg.modalities:
            patch = (cfg.audio_patch_mel or cfg.audio_patch_size, cfg.audio_patch_size)
            self.tokenizers["audio"] = PatchTokenizer(1, patch, dim, cfg.audio_grid_size, stride=cfg.audio_patch_stride)
        self.modality_embed = (
            nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, dim)) for m in cfg.modalities})
            if cfg.modality_embed else None
        )
        if cfg.cls_token is not None:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.cls_pos = nn.Parameter(torch.zeros(1, 1, dim))
        if cfg.dist_token:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.dist_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.input_norm = nn.LayerNorm(dim, eps=cfg.norm_eps) if cfg.input_norm else None
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.norm_f = AddNorm(dim, cfg.norm, cfg.norm_eps)
        self.head_norm = nn.LayerNorm(dim, eps=cfg.norm_eps) if cfg.head_norm else None
        self.head = nn.Linear(dim, cfg.num_classes)
        self.apply(_init_weights)
        for name in ("cls_token", "cls_pos", "dist_token", "dist_pos"):
            p = getattr(self, name, None)
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    def audio_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(batch, frames, mel) fbank frames as the audio tokenizer receives them: floored under the
        clip's loudest bin (``audio_floor_db``) and mean-normalised over its speech (``audio_cmn``)
        when the recipe says so."""
        if self.config.audio_floor_db:
            frames = level_floor(frames, self.config.fbank_std, self.config.audio_floor_db)
        return speech_mean_normalise(frames, self.config.fbank_std) if self.config.audio_cmn else frames

    def tokens(self, image: torch.Tensor | None = None, audio: torch.Tensor | None = None):
        """Embed the given modalities into one sequence; returns (tokens, layout)."""
        groups, grids = [], []
        for name, x in (("image", image), ("audio", audio)):
            if x is None:
                continue
            if name not in self.tokenizers:
                raise ValueError(f"this model takes {', '.join(self.tokenizers)}, not {name}")
            if name == "audio":
                # (batch, frames, mel) -> (batch, 1, mel, frames)
                x = self.audio_features(x).transpose(1, 2).unsqueeze(1)
            tokens, grid = self.tokenizers[name](x)
            if self.modality_embed is not None:
                tokens = tokens + self.modality_embed[name]
            groups.append(tokens)
            grids.append(grid)
        if not groups:
            raise ValueError(f"no input given; this model takes {' and/or '.join(self.tokenizers)}")
        x = torch.cat(groups, dim=1)
        cls_index = None
        if self.config.cls_token is not None:
            cls = (self.cls_token + self.cls_pos).expand(x.shape[0], -1, -1).to(x.dtype)
            # Vim's middle class token is reached by each scan direction after half the tokens. A
            # model of two modalities puts it at their boundary instead, after the image tokens and
            # before the audio, whichever of them are given: each modality then reaches it by the
            # same scan direction (image forward, audio backward) alone or fused. The exact middle
            # would make the image reach it across a run of audio tokens that the forward scan's
            # decay fades; the middle of each modality when alone (the earlier layout) made every
            # modality reach it one way alone and another way fused.
            if len(self.tokenizers) > 1:
                middle = groups[0].shape[1] if image is not None else 0
            else:
                middle = x.shape[1] // 2
            cls_index = {"first": 0, "middle": middle, "last": x.shape[1]}[self.config.cls_token]
            if self.config.dist_token:  # right after the class token, which is first
                cls = torch.cat([cls, (self.dist_token + self.dist_pos).expand(x.shape[0], -1, -1).to(x.dtype)], 1)
            x = torch.cat([x[:, :cls_index], cls, x[:, cls_index:]], dim=1)
        return x, TokenLayout(grid=grids[0] if len(grids) == 1 else None, cls_index=cls_index)

    def forward_features(self, image: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled (batch, embed_dim) representation."""
        h, layout = self.tokens(image, audio)
        if self.input_norm is not None:
            h = self.input_norm(h)
        residual = None
        for block in self.blocks:
            h, residual = block(h, residual, layout)
        h, _ = self.norm_f(h, residual)
        if self.config.dist_token:  # AST: the mean of the class and distillation tokens
            return (h[:, 0] + h[:, 1]) / 2
        return h[:, layout.cls_index] if layout.cls_index is not None else h.mean(dim=1)

    def auxiliary_loss(self) -> torch.Tensor:
        """What the last forward asks training to add to the task loss: the sum of the MoE blocks'
        load-balancing losses; zero for a model without experts."""
        losses = [block.ffn.balance_loss for block in self.blocks if isinstance(block.ffn, MoeMlp)]
        if any(loss is None for loss in losses):
            raise RuntimeError("auxiliary_loss() is set by a forward pass; run the model first")
        return torch.stack(losses).sum() if losses else torch.zeros((), device=self.head.weight.device)

    def forward(self, image: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> torch.Tensor:
        features = self.forward_features(image, audio)
        if self.head_norm is not None:
            features = self.head_norm(features)
        return self.head(features)


def _init_weights(module: nn.Module) -> None:
    """ViT-style init (truncated normal 0.02, zero bias) unless a mixer marked a parameter as its own."""
    if isinstance(module, nn.Linear):
        if not getattr(module.weight, "_no_reinit", False):
            nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None and not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
