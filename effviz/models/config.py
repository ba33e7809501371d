"""One config dataclass describes every model: the mixer is the only thing that must differ."""
from __future__ import annotations

from dataclasses import dataclass, field

TOKEN_MIXERS = ("mamba", "rwkv", "retention", "attention", "window_attention")
CHANNEL_MIXERS = ("mlp", "rwkv", "moe", None)
CAUSAL_MIXERS = ("mamba", "rwkv", "retention", "attention")  # the mixers with a streaming form


@dataclass
class ModelConfig:
    """Architecture of an effviz model; saved as config.json beside model.safetensors.

    Token mixers: "mamba" (Vim's bidirectional Mamba, v2), "rwkv" (Vision-RWKV spatial mix),
    "retention" (RetNet retention, ViR), "attention" (softmax attention, DeiT/AST),
    "window_attention" (softmax attention within a sliding window, a sparse-attention baseline).

    A hybrid names each block's token mixer in ``mixer_schedule`` (MambaVision: Mamba blocks, then
    attention in the last ones). ``mixer`` is then the model's main mixer, the one it is compared
    as (sweeps set efficient mixers against attention baselines), and must appear in the schedule.
    """

    mixer: str
    # One token mixer per block, block 0 first; empty: every block uses ``mixer``.
    mixer_schedule: tuple[str, ...] = ()
    embed_dim: int = 192
    depth: int = 12
    num_classes: int = 1000
    labels: list[str] = field(default_factory=list)
    # Tokenizers. Images: (in_chans, H, W) -> conv patches. Audio: a (frames, mel_bins) fbank is
    # treated as a 1-channel (mel_bins, frames) image, as in AST and AuM. Text: token ids through
    # an embedding of num_classes rows, the vocabulary (effviz.models.language; causal only).
    modalities: tuple[str, ...] = ("image",)
    in_chans: int = 3
    patch_size: int = 16
    grid_size: tuple[int, int] = (14, 14)  # image patch grid the position embedding was trained at
    # 0: one conv patchify, as in the papers. >0: a 3x3 conv with this many channels + GELU before
    # the image patchify, which our small bundled image models use (the same for every mixer): the
    # locality prior lets them learn from small data in a few CPU epochs. Audio tokenizers have no
    # stem: on 16x16 fbank patches it would make the patchify stem_channels times costlier.
    stem_channels: int = 0
    # 2: the stem adds a stride-2 3x3 conv to 2*stem_channels (patch_size stays the total stride),
    # so fewer, richer tokens reach the mixers: what made CIFAR training fit a 2-core CPU.
    stem_stride: int = 1
    # 3x3 convs (with GELU) at full resolution before the stride-2 one. The digit models use 2: with
    # one, the few image steps of the audio-visual recipe left even the training digits underfit
    # (the numbers are in effviz.train.RECIPE_LIMITS).
    stem_depth: int = 1
    mel_bins: int = 128
    audio_patch_size: int = 16
    audio_patch_stride: int = 0  # 0: the patch size (no overlap, as AuM); AST overlaps, stride 10
    # Mel bins an audio patch spans: 0 = audio_patch_size (square patches, as AST and AuM);
    # mel_bins = full-spectrum strips of audio_patch_size frames, one token per time step.
    audio_patch_mel: int = 0
    audio_grid_size: tuple[int, int] = (8, 64)  # (mel, time) patch grid of the audio position embedding
    # Readout: class token position ("first" as in DeiT, "middle" as in Vim, "last" as in ViR,
    # None with mean pooling as in Vision-RWKV).
    cls_token: str | None = "first"
    # AST (a DeiT-distilled ViT) has a second prefix token after the class token; the readout
    # averages the two, and its head has a LayerNorm of its own.
    dist_token: bool = False
    head_norm: bool = False
    norm: str = "layer"  # "layer" or "rms"
    norm_eps: float = 1e-6
    input_norm: bool = False  # Vision-RWKV normalises the embeddings before the first block (ln0)
    # Channel mixer after every token mixer: "mlp" (transformers, ViR), "rwkv" (VRWKV), "moe"
    # (a top-k mixture of MLP experts, V-MoE), None (Vim).
    channel_mixer: str | None = "mlp"
    mlp_ratio: float = 4.0
    # Mixture of experts ("moe"): experts per block, experts each token goes to, and how many
    # tokens one expert takes per forward: capacity_factor * tokens * top_k / experts, rounded up.
    moe_experts: int = 8
    moe_top_k: int = 2
    moe_capacity_factor: float = 1.25
    # Weight of each MoE block's load-balancing loss in EffvizModel.auxiliary_loss() (Switch's 0.01).
    moe_balance_weight: float = 0.01
    # Mixer details.
    num_heads: int = 3
    attn_impl: str = "sdpa"  # "sdpa" (fused) or "eager" (materialised attention matrix)
    # window_attention: each token attends to the tokens at most this many positions away.
    window_radius: int = 32
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    # Image preprocessing the weights expect.
    image_size: tuple[int, int] = (224, 224)
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    image_style: str = "photo"  # "photo" (RGB, resized) or "digit" (MNIST framing: white ink on black)
    # Audio preprocessing the weights expect (Kaldi fbank at this rate, 10 ms shift).
    sample_rate: int = 16000
    fbank_mean: float = 0.0
    fbank_std: float = 1.0
    # Samples are multiplied by this before the fbank (releases.AudioPreprocess.wave_scale).
    fbank_wave_scale: float = 1.0
    min_audio_seconds: float = 0.0  # shorter clips are zero-padded to this (the trained clip length)
    # Bandwidth of the training audio (FSDD is recorded at 8 kHz: nothing above 4 kHz), 0 = full band.
    # Wider inputs are band-limited to it, so a 44.1 kHz microphone take reads as training data did.
    audio_band_hz: float = 0.0
    # Subtract each mel bin's mean over the clip's speech frames (backbone.speech_mean_normalise).
    audio_cmn: bool = False
    # Every fbank bin raised to at least this many dB under the clip's loudest bin, before the mean
    # normalisation (backbone.level_floor); 0 = no floor.
    audio_floor_db: float = 0.0
    modality_embed: bool = False  # learned per-modality embedding (multimodal early fusion)
    # A causal language model (effviz.models.language) reads text the same way: causal mixers, no
    # class token, no position embedding, a next-token head on every token.
    # A streaming transcriber (effviz.models.transcriber): every token mixer causal and carrying
    # its state from one chunk to the next, fbank frames stacked ``audio_patch_size`` to a token,
    # no class token and no position embedding (the recurrences and the causal mask order the
    # tokens, and a stream has no end to size an embedding for), a CTC head on every token.
    causal: bool = False

    def __post_init__(self) -> None:
        # JSON turns tuples into lists; restore them so configs compare equal after a round trip.
        for name in ("mixer_schedule", "modalities", "grid_size", "audio_grid_size", "image_size", "image_mean",
                     "image_std"):
            setattr(self, name, tuple(getattr(self, name)))
        for mixer in (self.mixer, *self.mixer_schedule):
            if mixer not in TOKEN_MIXERS:
                raise ValueError(f"unknown mixer {mixer!r}; known: {', '.join(TOKEN_MIXERS)}")
        if self.mixer_schedule and len(self.mixer_schedule) != self.depth:
            raise ValueError(f"mixer_schedule names {len(self.mixer_schedule)} blocks, but depth is {self.depth}")
        if self.mixer_schedule and self.mixer not in self.mixer_schedule:
            raise ValueError(f"the main mixer {self.mixer!r} is not in mixer_schedule {self.mixer_schedule}")
        if self.channel_mixer not in CHANNEL_MIXERS:
            raise ValueError(f"unknown channel mixer {self.channel_mixer!r}")
        if self.channel_mixer == "moe" and not 1 <= self.moe_top_k <= self.moe_experts:
            raise ValueError(f"moe_top_k must be between 1 and moe_experts ({self.moe_experts}), got {self.moe_top_k}")
        if self.channel_mixer == "moe" and self.moe_capacity_factor <= 0:
            raise ValueError(f"moe_capacity_factor must be positive, got {self.moe_capacity_factor}")
        if "window_attention" in self.block_mixers() and self.window_radius < 1:
            raise ValueError(f"window_radius must be at least 1, got {self.window_radius}")
        if self.cls_token not in ("first", "middle", "last", None):
            raise ValueError(f"unknown cls_token position {self.cls_token!r}")
        if self.dist_token and self.cls_token != "first":
            raise ValueError("a distillation token follows a class token in first position (cls_token='first')")
        if "text" in self.modalities and (self.modalities != ("text",) or not self.causal):
            raise ValueError("a text model is a causal language model: text alone, with causal=True")
        if self.causal and (self.modalities not in (("audio",), ("text",)) or self.cls_token is not None
                            or set(self.block_mixers()) - set(CAUSAL_MIXERS)):
            raise ValueError(f"a causal model reads audio or text alone, without a class token, through "
                             f"{', '.join(CAUSAL_MIXERS)} mixers")
        if self.labels and len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for {self.num_classes} classes")

    def block_mixers(self) -> tuple[str, ...]:
        """The token mixer of every block, block 0 first."""
        return self.mixer_schedule or (self.mixer,) * self.depth
