"""Streaming transcription of spoken digits: audio in chunks, each model's state carried from one
chunk to the next, digits out as they are said.

    samples -> FbankStream (whole 25 ms frames only) -> Transcriber.step (whole tokens only,
    with the state of the chunks before) -> GreedyCtc (collapses repeats across chunks) -> digits

Each stage holds back only what the next one cannot use yet (a partial frame's samples, a partial
token's frames), so a recording streamed in chunks of any size gives the same digits, at the
same times, as :func:`transcribe` on all of it at once. The fbank has no clip-wide step (fixed
normalisation); the models that remove the speech's mean do it with a running mean carried in
their state (``Transcriber.normalise``), so that streams too.

The transcribers are saved under ``weights/transcribers/<id>/`` (config.json, model.safetensors,
card.json with the weights' sha256), apart from the classifiers, which ``effviz.api`` lists.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
from safetensors.torch import load_model as load_safetensors

from .data.audio import FRAME_LENGTH_MS, FRAME_SHIFT_MS, DEFAULT_MAX_SECONDS, prepare_waveform, read_audio
from .models.config import ModelConfig
from .models.registry import MODEL_ID_PATTERN, WEIGHTS_DIR
from .models.transcriber import Transcriber, state_bytes

TRANSCRIBERS_DIR = WEIGHTS_DIR / "transcribers"
CHUNK_SECONDS = 0.16  # what a live stream hands over at a time: 4 tokens of 40 ms


def frame_geometry(rate: int) -> tuple[int, int]:
    """(window, shift) of one fbank frame in samples: 25 ms every 10 ms."""
    return round(rate * FRAME_LENGTH_MS / 1000), round(rate * FRAME_SHIFT_MS / 1000)


def causal_fbank(waveform: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Normalised log-mel frames (frames, mel_bins) of a mono waveform at ``cfg.sample_rate``: Kaldi
    fbank of the samples times ``cfg.fbank_wave_scale`` (Hanning, 25 ms every 10 ms, no dither;
    each frame's own DC offset removed), then ``(x - fbank_mean) / (2 * fbank_std)``. Every frame
    depends on its own 25 ms only; a waveform shorter than one window has no frame."""
    window, _ = frame_geometry(cfg.sample_rate)
    if waveform.shape[0] < window:
        return waveform.new_zeros(0, cfg.mel_bins)
    features = kaldi.fbank(waveform.float().unsqueeze(0) * cfg.fbank_wave_scale, htk_compat=True,
                           use_energy=False, window_type="hanning", num_mel_bins=cfg.mel_bins, dither=0.0,
                           frame_length=FRAME_LENGTH_MS, frame_shift=FRAME_SHIFT_MS,
                           sample_frequency=cfg.sample_rate)
    return (features - cfg.fbank_mean) / (2 * cfg.fbank_std)


class FbankStream:
    """:func:`causal_fbank` of a stream: ``push`` the next samples, get the frames now complete."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.window, self.shift = frame_geometry(cfg.sample_rate)
        self.pending = torch.zeros(0)  # samples from the next frame's start on

    def push(self, samples: torch.Tensor) -> torch.Tensor:
        self.pending = torch.cat([self.pending, samples.float()])
        frames = (self.pending.shape[0] - self.window) // self.shift + 1
        if frames <= 0:
            return torch.zeros(0, self.cfg.mel_bins)
        features = causal_fbank(self.pending[: (frames - 1) * self.shift + self.window], self.cfg)
        self.pending = self.pending[frames * self.shift:]
        return features


@dataclass(frozen=True)
class Digit:
    label: str
    seconds: float  # when it is heard: the end of the token that first says it


class GreedyCtc:
    """Greedy CTC decoding that can be fed token by token: the most likely label of each token,
    repeats merged, blanks (label 0) dropped. A repeat split by a chunk boundary is still one."""

    def __init__(self, labels: list[str], seconds_per_token: float, first_token_end: float):
        self.labels, self.seconds_per_token, self.first_token_end = labels, seconds_per_token, first_token_end
        self.previous, self.tokens = 0, 0

    def push(self, logits: torch.Tensor) -> list[Digit]:
        """logits: (tokens, classes) of the next tokens."""
        digits = []
        for index in logits.argmax(-1).tolist():
            if index != 0 and index != self.previous:
                digits.append(Digit(self.labels[index], round(self.first_token_end + self.tokens * self.seconds_per_token, 3)))
            self.previous = index
            self.tokens += 1
        return digits


def _decoder(cfg: ModelConfig) -> GreedyCtc:
    window, shift = frame_geometry(cfg.sample_rate)
    stride = cfg.audio_patch_stride or cfg.audio_patch_size  # frames between tokens
    return GreedyCtc(cfg.labels, stride * shift / cfg.sample_rate, ((stride - 1) * shift + window) / cfg.sample_rate)


@dataclass
class ChunkReport:
    """What one chunk of a stream gave: the digits it completed and what it cost."""

    digits: list[Digit]
    seconds_streamed: float  # audio received so far
    compute_seconds: float  # this chunk's fbank, model step and decoding, wall clock
    state_bytes: int  # held by the model's state after it (the KV cache, for attention)


@dataclass
class DigitStream:
    """One stream through one transcriber: ``feed`` chunks of samples at ``model.config.sample_rate``."""

    model: Transcriber
    fbank: FbankStream = field(init=False)
    decoder: GreedyCtc = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.model.config
        self.fbank, self.decoder = FbankStream(cfg), _decoder(cfg)
        self.frames = torch.zeros(0, cfg.mel_bins)  # waiting for a whole token
        self.state: list | None = None
        self.samples = 0
        self.transcript: list[Digit] = []

    @torch.inference_mode()
    def feed(self, samples: torch.Tensor) -> ChunkReport:
        start = time.perf_counter()
        per_token = self.model.frames_per_token
        self.frames = torch.cat([self.frames, self.fbank.push(samples)])
        usable = self.frames.shape[0] // per_token * per_token
        digits = []
        if usable:
            logits, self.state = self.model.step(self.frames[None, :usable], self.state)
            self.frames = self.frames[usable:]
            digits = self.decoder.push(logits[0])
        self.samples += samples.shape[0]
        self.transcript += digits
        return ChunkReport(digits, self.samples / self.model.config.sample_rate, time.perf_counter() - start,
                           state_bytes(self.state))


@torch.inference_mode()
def transcribe_waveform(model: Transcriber, waveform: torch.Tensor) -> list[Digit]:
    """All of a waveform (at the model's rate) in one forward pass, decoded: the offline transcript."""
    logits = model(causal_fbank(waveform, model.config)[None])
    return _decoder(model.config).push(logits[0])


def digits_text(digits: list[Digit]) -> str:
    return "".join(d.label for d in digits)


# ---- Saved transcribers ------------------------------------------------------------------------

_loaded: dict[str, Transcriber] = {}
_lock = threading.Lock()


def list_transcribers() -> list[str]:
    """Ids of the transcribers saved under ``weights/transcribers/``, sorted."""
    if not TRANSCRIBERS_DIR.is_dir():
        return []
    return sorted(f.name for f in TRANSCRIBERS_DIR.iterdir()
                  if MODEL_ID_PATTERN.fullmatch(f.name) and (f / "card.json").is_file())


def transcriber_card(model_id: str) -> dict:
    return json.loads((_folder(model_id) / "card.json").read_text(encoding="utf-8"))


def load_transcriber(model_id: str) -> Transcriber:
    """The saved transcriber ``model_id`` in eval mode, its weights checked against the card's
    sha256; loaded once and shared (a stream keeps its own state, never the model's)."""
    with _lock:
        if model_id not in _loaded:
            from .api import _verify_weights  # the classifiers' check, one definition

            folder = _folder(model_id)
            _verify_weights(folder)
            cfg = ModelConfig(**json.loads((folder / "config.json").read_text(encoding="utf-8")))
            model = Transcriber(cfg)
            load_safetensors(model, folder / "model.safetensors", strict=True, device="cpu")
            _loaded[model_id] = model.eval()
        return _loaded[model_id]


def _folder(model_id: str) -> Path:
    if not isinstance(model_id, str) or not MODEL_ID_PATTERN.fullmatch(model_id):
        raise ValueError(f"invalid transcriber id {model_id!r}")
    if model_id not in list_transcribers():
        raise ValueError(f"unknown transcriber {model_id!r}; available: {', '.join(list_transcribers()) or 'none'}")
    return TRANSCRIBERS_DIR / model_id


def recording(audio: np.ndarray | bytes | str | Path, sample_rate: int | None, cfg: ModelConfig,
              max_seconds: float = DEFAULT_MAX_SECONDS) -> torch.Tensor:
    """A recording (a file's bytes or path, or samples with their rate) as a mono waveform at the
    model's rate, checked as every audio input is (``prepare_waveform``)."""
    if isinstance(audio, (bytes, str, Path)):
        audio, sample_rate = read_audio(audio, max_seconds=max_seconds)
    elif sample_rate is None:
        raise ValueError("sample_rate is required with audio samples")
    return prepare_waveform(audio, sample_rate, cfg.sample_rate, max_seconds)


def stream_recording(model_id: str, audio: np.ndarray | bytes | str | Path, sample_rate: int | None = None,
                     chunk_seconds: float = CHUNK_SECONDS, max_seconds: float = DEFAULT_MAX_SECONDS):
    """Stream a recording through ``model_id`` in chunks of ``chunk_seconds``, as a live source would
    deliver it: yields a :class:`ChunkReport` per chunk."""
    if not 0.01 <= chunk_seconds <= 10:
        raise ValueError(f"chunk_seconds must lie between 0.01 and 10, got {chunk_seconds}")
    model = load_transcriber(model_id)
    waveform = recording(audio, sample_rate, model.config, max_seconds)
    stream = DigitStream(model)
    step = max(1, round(chunk_seconds * model.config.sample_rate))
    for start in range(0, waveform.shape[0], step):
        yield stream.feed(waveform[start:start + step])
