"""Official releases: where each architecture's published weights live and how their inputs
must look (timm's ``pretrained_cfg`` and Hugging Face's ``preprocessor_config.json`` are the
models for this).

A ``Release`` names a Hub repo and file, the licence and reported result, the labels its head
predicts, and a ``Preprocess`` record: for images the resize / crop fraction / interpolation /
mean / std, for audio the rate, fbank normalisation, padding mode and frame count, and whether
the head's outputs are mutually exclusive classes (softmax) or independent labels (sigmoid).
``Preprocess.from_config`` gives the record of a model trained here, whose ``ModelConfig``
carries the framing its training data had.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import ModelConfig

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Model folders written by effviz.convert hold their release's record here, as HF folders hold
# preprocessor_config.json.
PREPROCESS_FILE = "preprocess.json"


@dataclass(frozen=True)
class ImagePreprocess:
    """How a picture becomes the model's input.

    resize: "shorter": the shorter side is scaled to ``floor(size / crop_pct)`` and the centre
        ``size`` is cropped (ImageNet evaluation, as timm and the DeiT/Vim/VRWKV code do);
        "squash": the whole picture is resized to ``size``, aspect ratio not kept (our 32 px
        CIFAR models, trained on whole photos).
    style: "photo" (RGB) or "digit" (MNIST framing: white ink on black, one channel).
    """

    size: tuple[int, int] = (224, 224)
    resize: str = "shorter"
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    style: str = "photo"

    def __post_init__(self) -> None:
        for name in ("size", "mean", "std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.resize not in ("shorter", "squash"):
            raise ValueError(f"unknown resize {self.resize!r}: expected 'shorter' or 'squash'")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"unknown interpolation {self.interpolation!r}: expected 'bicubic' or 'bilinear'")
        if self.style not in ("photo", "digit"):
            raise ValueError(f"unknown image style {self.style!r}: expected 'photo' or 'digit'")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must lie in (0, 1], got {self.crop_pct}")


@dataclass(frozen=True)
class AudioPreprocess:
    """How a waveform becomes the model's Kaldi fbank input (25 ms windows every 10 ms).

    padding: "centre": a clip shorter than ``min_seconds`` is centred in silence before the fbank,
        and frames are padded to a multiple of ``frame_multiple`` with the clip's quietest level
        (how effviz.train frames its clips); "end": the fbank is padded with zero frames at the
        end up to ``max_frames`` and then normalised (AST's code and HF's ASTFeatureExtractor).
    max_frames: longer inputs are cut to this many frames (0: never cut).
    band_hz: the training audio's bandwidth; a wider input is band-limited to it (0: full band).
    wave_scale: the waveform (samples in [-1, 1]) is multiplied by this before the fbank: 1 is
        AST's convention (its code and HF's extractor), 32768 Kaldi's own (16-bit sample units).
        The fbank floors power at float32 eps, i.e. log(eps) ~ -15.9; at scale 1 that floor is only
        ~28 dB under an average spoken frame, so the quiet bins of a quiet recording sit on it and a
        gain change moves them on and off it. At 32768 it is ~90 dB lower and never reached by sound.
    speech_only: the model was trained on tight clips of one spoken word, ``min_seconds`` long:
        the spoken part of an input is found (energy-based) and framed the same way, the loudest
        ``min_seconds`` of it when it is longer, so silence around a take and a long recording
        read as training clips did.
    """

    sample_rate: int = 16000
    mel_bins: int = 128
    fbank_mean: float = 0.0
    fbank_std: float = 1.0
    padding: str = "centre"
    min_seconds: float = 0.0
    max_frames: int = 0
    frame_multiple: int = 1
    band_hz: float = 0.0
    speech_only: bool = False
    wave_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.padding not in ("centre", "end"):
            raise ValueError(f"unknown audio padding {self.padding!r}: expected 'centre' or 'end'")
        if self.padding == "end" and self.max_frames <= 0:
            raise ValueError("padding 'end' pads up to max_frames, which must be positive")
        if self.speech_only and self.min_seconds <= 0:
            raise ValueError("speech_only frames the spoken part in min_seconds, which must be positive")


@dataclass(frozen=True)
class Preprocess:
    """Everything a model's inputs and outputs need besides its weights."""

    image: ImagePreprocess | None = None
    audio: AudioPreprocess | None = None
    activation: str = "softmax"  # "sigmoid" for multi-label heads (AudioSet)

    def __post_init__(self) -> None:
        if self.activation not in ("softmax", "sigmoid"):
            raise ValueError(f"unknown activation {self.activation!r}: expected 'softmax' or 'sigmoid'")

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> Preprocess:
        """The framing effviz.train gives a model's training data (``ModelConfig``'s fields)."""
        image = audio = None
        if "image" in cfg.modalities:
            # Models of at most 64 px saw whole photos shrunk to their size: a crop of a 32 px view
            # would lose much of a small object.
            small = max(cfg.image_size) <= 64
            image = ImagePreprocess(
                size=cfg.image_size, resize="squash" if small else "shorter", crop_pct=1.0 if small else 0.875,
                mean=cfg.image_mean, std=cfg.image_std, style=cfg.image_style,
            )
        if "audio" in cfg.modalities:
            audio = AudioPreprocess(
                sample_rate=cfg.sample_rate, mel_bins=cfg.mel_bins, fbank_mean=cfg.fbank_mean,
                fbank_std=cfg.fbank_std, min_seconds=cfg.min_audio_seconds, frame_multiple=cfg.audio_patch_size,
                band_hz=cfg.audio_band_hz, speech_only=cfg.min_audio_seconds > 0,
                wave_scale=cfg.fbank_wave_scale,
            )
        return cls(image, audio)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Preprocess:
        data = json.loads(text)
        return cls(
            image=ImagePreprocess(**data["image"]) if data.get("image") else None,
            audio=AudioPreprocess(**data["audio"]) if data.get("audio") else None,
            activation=data.get("activation", "softmax"),
        )


def read_preprocess(folder: Path, cfg: ModelConfig) -> Preprocess:
    """A model folder's ``preprocess.json``, or the record of its training framing when it has none."""
    file = Path(folder) / PREPROCESS_FILE
    if file.is_file():
        return Preprocess.from_json(file.read_text(encoding="utf-8"))
    return Preprocess.from_config(cfg)


@dataclass(frozen=True)
class Release:
    """One published set of weights for one of our architectures."""

    name: str  # the model id effviz gives it
    arch: str  # a key of registry.ARCHITECTURES
    repo_id: str | None  # Hugging Face Hub repo; None where the weights are not on the Hub
    filenames: tuple[str, ...]  # tried in order
    preprocess: Preprocess
    dataset: str  # what the head classifies: "ImageNet-1k" or "AudioSet" (labels in effviz/convert)
    model: str
    paper: str
    code: str
    top1: str  # the headline result as reported by the authors
    licence: str
    # A Hub revision (commit) to pin; None takes the repo's main branch and the card records the
    # commit actually downloaded.
    revision: str | None = None
    sha256: str | None = None  # of the checkpoint file, checked after download once known
    size_mb: int = 0  # download size, shown before the first download
    availability: str = ""  # how to get the weights where they are not on the Hub
    note: str = ""  # where our use of the weights differs from the official code


_IMAGENET_224 = Preprocess(ImagePreprocess())  # resize 256, crop 224: the Vim and VRWKV evaluation code
# timm's pretrained_cfg for its DeiT weights crops 0.9 of the resized picture (the DeiT code: 0.875).
_TIMM_DEIT_224 = Preprocess(ImagePreprocess(crop_pct=0.9))
# AST's AudioSet framing: 16 kHz, 128 mel bins, 1024 frames (10.24 s), normalised with the
# AudioSet fbank statistics; 527 independent labels.
_AUDIOSET_AST = Preprocess(
    audio=AudioPreprocess(sample_rate=16000, mel_bins=128, fbank_mean=-4.2677393, fbank_std=4.5689974,
                          padding="end", max_frames=1024),
    activation="sigmoid",
)

RELEASES: dict[str, Release] = {r.name: r for r in (
    Release(
        "vim-tiny-official", "vim-tiny", "hustvl/Vim-tiny-midclstok", ("vim_t_midclstok_76p1acc.pth",),
        _IMAGENET_224, "ImageNet-1k", "Vision Mamba Vim-Ti (middle class token)",
        "Zhu et al., ICML 2024, arXiv:2401.09417", "https://github.com/hustvl/Vim", "76.1%", "apache-2.0",
        size_mb=28,
    ),
    Release(
        "vim-small-official", "vim-small", "hustvl/Vim-small-midclstok", ("vim_s_midclstok_80p5acc.pth",),
        _IMAGENET_224, "ImageNet-1k", "Vision Mamba Vim-S (middle class token)",
        "Zhu et al., ICML 2024, arXiv:2401.09417", "https://github.com/hustvl/Vim", "80.5%", "apache-2.0",
        size_mb=104,
    ),
    Release(
        "vrwkv-tiny-official", "vrwkv-tiny", "OpenGVLab/Vision-RWKV", ("vrwkv_t_in1k_224.pth",),
        _IMAGENET_224, "ImageNet-1k", "Vision-RWKV VRWKV-T",
        "Duan et al., ICLR 2025, arXiv:2403.02308", "https://github.com/OpenGVLab/Vision-RWKV", "75.1%",
        "apache-2.0", size_mb=25,
    ),
    Release(
        "deit-tiny-official", "deit-tiny", "timm/deit_tiny_patch16_224.fb_in1k", ("model.safetensors",),
        _TIMM_DEIT_224, "ImageNet-1k", "DeiT-Ti", "Touvron et al., ICML 2021, arXiv:2012.12877",
        "https://github.com/facebookresearch/deit", "72.2%", "apache-2.0", size_mb=23,
    ),
    Release(
        "deit-small-official", "deit-small", "timm/deit_small_patch16_224.fb_in1k", ("model.safetensors",),
        _TIMM_DEIT_224, "ImageNet-1k", "DeiT-S", "Touvron et al., ICML 2021, arXiv:2012.12877",
        "https://github.com/facebookresearch/deit", "79.9%", "apache-2.0", size_mb=88,
    ),
    # The authors publish AuM-B (Fo-Bi) and AuM-S (Bi-Bi) checkpoints on Google Drive only, none for
    # the tiny size; this imports an AuM-Ti (Bi-Bi) trained with their code on AudioSet's 527 classes.
    Release(
        "aum-tiny-official", "aum-tiny", None, ("best_audio_model.pth",),
        Preprocess(audio=_AUDIOSET_AST.audio, activation="sigmoid"), "AudioSet",
        "Audio Mamba AuM-Ti (Bi-Bi, middle class token)", "Erol et al., IEEE SPL 2024, arXiv:2406.03344",
        "https://github.com/kaistmm/Audio-Mamba-AuM", "none published for tiny (AuM-S: 39.74 mAP on AudioSet)",
        "bsd-3-clause",
        availability="not on the Hugging Face Hub: the authors share AuM-B and AuM-S checkpoints through "
                     "Google Drive links in their README (none at the tiny size), and their training code "
                     "saves `best_audio_model.pth`",
    ),
    Release(
        "ast-base-official", "ast-base", "MIT/ast-finetuned-audioset-10-10-0.4593",
        ("model.safetensors", "pytorch_model.bin"), _AUDIOSET_AST, "AudioSet",
        "Audio Spectrogram Transformer AST-Base (AudioSet, patch stride 10)",
        "Gong et al., Interspeech 2021, arXiv:2104.01778", "https://github.com/YuanGongND/ast",
        "0.4593 mAP on AudioSet", "bsd-3-clause", size_mb=346,
    ),
)}


def release_for(arch: str) -> Release:
    """The official release of architecture ``arch`` (each importable architecture has one)."""
    for release in RELEASES.values():
        if release.arch == arch:
            return release
    raise ValueError(f"no official release of {arch!r}; releases exist for {', '.join(r.arch for r in RELEASES.values())}")
