"""A causal speech model that streams: the shared backbone's blocks with causal mixers and a CTC
head on every token, for transcribing spoken digits as they are said.

    fbank frames (T, mel) -> less the running mean of the speech so far (``audio_cmn``) ->
    every audio_patch_stride frames, a token from the last audio_patch_size frames (a causal
    window) -> linear -> causal blocks -> final norm -> per-token logits over "blank" and the
    digits (CTC)

A token reads a window as long as a spoken digit (320 ms) that ends at its own frames: with
stacks of its own 40 ms only, every mixer had to learn to gather the last few tokens before any
digit could be told apart, and none left CTC's all-blank start within a CPU budget.

``forward`` reads a whole recording in one pass (the form training uses). ``step`` reads the next
chunk of a stream, carrying each block's state, and gives the same logits: for Mamba, RWKV and
RetNet the state has a fixed size however long the stream; for the causal transformer it is the
key-value cache, which grows by every token. Every layer is causal or per-token (norms, MLPs,
the head), so the logits of a token never depend on what follows it, and frames padded at the end
of a batch change nothing before them.
"""
from __future__ import annotations

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .backbone import Block, _init_weights, running_speech_mean_normalise
from .config import ModelConfig
from .layers import AddNorm

BLANK = "blank"  # CTC's "no new symbol here"; label 0


class Transcriber(nn.Module, PyTorchModelHubMixin, library_name="effviz"):
    """``forward(audio)``: (batch, frames, mel_bins) fbank -> (batch, frames // audio_patch_stride,
    classes) logits. Frames beyond the last whole token are left for the next chunk by the
    streaming engine and ignored here; before the first frame, the window reads zeros."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not config.causal:
            raise ValueError("a Transcriber is built from a causal config (ModelConfig.causal=True)")
        if not config.labels or config.labels[0] != BLANK:
            raise ValueError(f"a Transcriber's label 0 is CTC's {BLANK!r}, got labels {config.labels}")
        self.config = cfg = config
        self.frames_per_token = cfg.audio_patch_stride or cfg.audio_patch_size
        self.window = cfg.audio_patch_size
        if self.window < self.frames_per_token:
            raise ValueError(f"a token's window ({self.window} frames) must cover its stride ({self.frames_per_token})")
        self.embed = nn.Linear(self.window * cfg.mel_bins, cfg.embed_dim)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.norm_f = AddNorm(cfg.embed_dim, cfg.norm, cfg.norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        self.apply(_init_weights)
        if cfg.audio_cmn:
            # The running mean normalisation's prior: the training speech's per-bin mean and typical
            # loudest frame, set from the training data (train_transcriber) and saved with the weights.
            self.register_buffer("speech_prior_mean", torch.zeros(cfg.mel_bins))
            self.register_buffer("speech_prior_peak", torch.zeros(()))

    def normalise(self, audio: torch.Tensor, state: tuple | None) -> tuple[torch.Tensor, tuple | None]:
        """The fbank frames as the blocks read them: less the running mean of the stream's speech
        when the recipe says so (``audio_cmn``; backbone.running_speech_mean_normalise)."""
        if not self.config.audio_cmn:
            return audio, None
        return running_speech_mean_normalise(audio, self.config.fbank_std, self.speech_prior_mean,
                                             float(self.speech_prior_peak), state)

    def tokens(self, audio: torch.Tensor, before: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, frames, mel) -> (batch, frames // stride, embed_dim), and the frames the next
        chunk's windows reach back to (batch, window - stride, mel). ``before``: those of the
        previous chunk (None: zeros, the start of a stream)."""
        batch, frames, mel = audio.shape
        if mel != self.config.mel_bins:
            raise ValueError(f"expected {self.config.mel_bins} mel bins, got {mel}")
        count = frames // self.frames_per_token
        if before is None:
            before = audio.new_zeros(batch, self.window - self.frames_per_token, mel)
        frames = torch.cat([before, audio[:, : count * self.frames_per_token]], dim=1)
        windows = frames.unfold(1, self.window, self.frames_per_token)  # (batch, count, mel, window)
        tokens = self.embed(windows.transpose(2, 3).reshape(batch, count, self.window * mel))
        return tokens, frames[:, frames.shape[1] - before.shape[1]:]

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        h, residual = self.tokens(self.normalise(audio, None)[0])[0], None
        for block in self.blocks:
            h, residual = block(h, residual, None)
        return self.head(self.norm_f(h, residual)[0])

    def step(self, audio: torch.Tensor, state: list | None) -> tuple[torch.Tensor, list]:
        """The next chunk of a stream: (batch, frames, mel) with frames a multiple of the stride,
        and the state the previous chunk returned (None at the start) -> its logits and the new
        state: [the frames the windows reach back to, the mean normalisation's, each block's]."""
        if audio.shape[1] % self.frames_per_token:
            raise ValueError(f"a chunk holds whole tokens: a multiple of {self.frames_per_token} frames, "
                             f"got {audio.shape[1]}")
        before, speech, *blocks = state if state is not None else [None] * (2 + len(self.blocks))
        audio, speech = self.normalise(audio, speech)
        h, before = self.tokens(audio, before)
        residual, new_state = None, [before, speech]
        for block, block_state in zip(self.blocks, blocks):
            h, residual, block_state = block.step(h, residual, block_state)
            new_state.append(block_state)
        return self.head(self.norm_f(h, residual)[0]), new_state


def state_bytes(state: list | None) -> int:
    """Bytes a stream's state holds: every tensor in it (the KV cache, for attention)."""
    if state is None:
        return 0
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(s) for s in state)
    raise TypeError(f"unexpected {type(state).__name__} in a stream's state")
