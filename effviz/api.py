"""The public prediction API: which models are ready, their cards, and predictions.

    >>> effviz.list_models("audio")
    ['aum-fsdd', 'ast-fsdd', ...]
    >>> effviz.predict("deit-cifar", image="cat.png", top_k=3)
    {'cat': 0.81, 'dog': 0.12, 'frog': 0.03}
    >>> effviz.predict("aum-fsdd", audio=samples, sample_rate=44100)

A model is a folder ``weights/<model-id>/`` (see ``registry.weight_folders``). Its weights are
loaded only after their sha256 matches the one recorded when they were saved, so a corrupt,
half-copied or swapped file is refused instead of silently giving wrong answers. Each model is
loaded once per process and shared by every caller (the app serves concurrent users).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from .data.audio import DEFAULT_MAX_SECONDS, audio_to_tensor, read_audio
from .data.image import MAX_PIXELS, image_to_tensor, open_image
from .models import EffvizModel, ModelConfig, registry
from .models.registry import MODEL_ID_PATTERN, task_of

log = logging.getLogger("effviz.api")

TASKS = ("image", "audio", "audio-visual")


def limit_from_env(name: str, default: float) -> float:
    """A positive number from environment variable ``name``, or ``default`` when it is unset.
    Read once, at import: a deployment sizes its limits to its machine before starting."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ValueError(f"{name}={text!r}: expected a positive number (unset it for the default {default:g})")
    return value


# Input limits, shown by the app next to its upload boxes. A Pillow hard limit (~179 MP) caps the
# pixels whatever EFFVIZ_MAX_IMAGE_PIXELS says (see effviz.data.image.MAX_PIXELS).
MAX_AUDIO_SECONDS = limit_from_env("EFFVIZ_MAX_AUDIO_SECONDS", DEFAULT_MAX_SECONDS)
MAX_IMAGE_PIXELS = int(limit_from_env("EFFVIZ_MAX_IMAGE_PIXELS", MAX_PIXELS))
# effviz.train's README card ends with this line; imported official checkpoints, which have no
# card.json, record the sha256 of their weights the same way.
_README_SHA256 = re.compile(r"sha256 of model\.safetensors: `([0-9a-f]{64})`")
# Summarised in model_card, by the modality the field describes.
_CONFIG_SUMMARY = {
    None: ("mixer", "embed_dim", "depth", "num_heads", "num_classes", "labels", "modalities"),
    "image": ("image_size", "patch_size", "image_style"),
    "audio": ("sample_rate", "mel_bins", "audio_patch_size", "min_audio_seconds"),
}



def prediction_device() -> torch.device:
    """Where predictions run: ``$EFFVIZ_DEVICE`` (``cpu``, ``cuda``, ``cuda:1`` ...) when set, else
    the GPU when there is one (the kernels then use Triton), else the CPU."""
    name = os.environ.get("EFFVIZ_DEVICE", "").strip()
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"EFFVIZ_DEVICE={name!r} is not a device name (try cpu or cuda)") from err
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"EFFVIZ_DEVICE={name!r}: effviz runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"EFFVIZ_DEVICE={name!r} but this machine has no usable CUDA GPU")
    return device


_models: dict[Path, EffvizModel] = {}
_load_locks: dict[Path, threading.Lock] = {}
_cache_lock = threading.Lock()  # guards the two dicts above, never held while loading


def list_models(task: str | None = None) -> list[str]:
    """Ids of the models ready to predict, sorted; only those for ``task`` ("image", "audio" or
    "audio-visual") when given. A folder whose config.json cannot be read is left out, with a
    warning in the log."""
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)} (or None for all)")
    ids = []
    for model_id, folder in registry.weight_folders().items():
        try:
            cfg = _read_config(folder)
        except (OSError, ValueError, TypeError) as err:  # unreadable JSON, unknown or invalid fields
            log.warning("skipping %s: cannot read its config.json (%s)", folder, err)
            continue
        if task is None or task_of(cfg) == task:
            ids.append(model_id)
    return ids


def load_model(model_id: str) -> EffvizModel:
    """The model saved under ``weights/<model_id>/``, in eval mode on ``prediction_device()``,
    loaded once and cached.

    Raises ValueError for an invalid or unknown id, and for weights whose sha256 does not match
    the recorded one (or has none recorded).
    """
    folder = _model_folder(model_id)
    with _cache_lock:
        if folder in _models:
            return _models[folder]
        load_lock = _load_locks.setdefault(folder, threading.Lock())
    with load_lock:  # callers of other models are not held up while this one loads
        if folder not in _models:  # another caller may have loaded it while this one waited
            _verify_weights(folder)
            model = EffvizModel.from_pretrained(str(folder), strict=True).eval().to(prediction_device())
            with _cache_lock:
                _models[folder] = model
    return _models[folder]


def predict(
    model_id: str,
    image: Image.Image | bytes | str | Path | None = None,
    audio: np.ndarray | bytes | str | Path | None = None,
    sample_rate: int | None = None,
    top_k: int | None = None,
) -> dict[str, float]:
    """Class probabilities for an image and/or audio, as ``{label: probability}`` sorted from
    most to least likely: every class, or the ``top_k`` most likely.

    image: a ``PIL.Image`` of any mode and size, or image file bytes or a path.
    audio: samples, 1-D (mono) or 2-D ``(samples, channels)``, int16 or float, at ``sample_rate``
        (required with samples; 8 kHz or more), or sound file bytes or a path. At most
        ``MAX_AUDIO_SECONDS``; shorter clips than the model was trained on are centred in silence.
    Raises ValueError with a specific message for missing input, a modality the model does not
    take, a missing sample rate, unreadable or too large input, and an invalid model id.
    """
    if image is None and audio is None:
        raise ValueError("nothing to predict on: give an image and/or audio")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None (all classes), got {top_k!r}")
    model = load_model(model_id)
    cfg = model.config
    given = [name for name, x in (("image", image), ("audio", audio)) if x is not None]
    refused = [name for name in given if name not in cfg.modalities]
    if refused:
        raise ValueError(f"{model_id} takes {' and/or '.join(cfg.modalities)}, not {' and '.join(refused)}")
    inputs = {}
    if image is not None:
        inputs["image"] = _image_input(image, cfg)
    if audio is not None:
        inputs["audio"] = _audio_input(audio, sample_rate, cfg)
    device = next(model.parameters()).device
    with torch.inference_mode():
        probabilities = model(**{k: v.to(device) for k, v in inputs.items()})[0].float().softmax(-1).cpu()
    labels = cfg.labels or [f"class {i}" for i in range(cfg.num_classes)]
    order = probabilities.argsort(descending=True)[:top_k].tolist()
    return {labels[i]: float(probabilities[i]) for i in order}


def model_card(model_id: str) -> dict:
    """What the Models tab shows: card.json's contents (metrics, recipe, data, sha256 ...) when the
    model has one, plus ``task``, ``params``, a ``config`` summary and the README.md text."""
    folder = _model_folder(model_id)
    card_file, readme = folder / "card.json", folder / "README.md"
    card = json.loads(card_file.read_text(encoding="utf-8")) if card_file.is_file() else {}
    cfg = _read_config(folder)
    config = asdict(cfg)
    fields = [*_CONFIG_SUMMARY[None], *(f for m in cfg.modalities for f in _CONFIG_SUMMARY[m])]
    card.update(model_id=model_id, task=task_of(cfg), config={name: config[name] for name in fields})
    if "params" not in card:  # imported checkpoints: counted from the file header, no tensor read
        card["params"] = _count_params(folder / "model.safetensors")
    if readme.is_file():
        card["readme"] = readme.read_text(encoding="utf-8")
    return card


def _model_folder(model_id: str) -> Path:
    """``weights/<model_id>``, after making sure the id cannot name anything outside it."""
    if not isinstance(model_id, str) or not MODEL_ID_PATTERN.fullmatch(model_id) or ".." in model_id:
        raise ValueError(
            f"invalid model id {model_id!r}: an id is a folder name under weights/ made of lowercase "
            "letters, digits, '.', '_' and '-' (see effviz.list_models())"
        )
    root = registry.WEIGHTS_DIR.resolve()
    folder = (root / model_id).resolve()
    if folder.parent != root:  # a symlink leading out of weights/
        raise ValueError(f"invalid model id {model_id!r}: it resolves outside {root}")
    if model_id not in registry.weight_folders():
        available = ", ".join(registry.weight_folders()) or f"none: {root} holds no saved model"
        raise ValueError(f"unknown model {model_id!r}; available: {available}")
    return folder


def _read_config(folder: Path) -> ModelConfig:
    return ModelConfig(**json.loads((folder / "config.json").read_text(encoding="utf-8")))


def _verify_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    expected, source = _recorded_sha256(folder)
    if expected is None:
        raise ValueError(
            f"refusing to load {weights}: no sha256 of it is recorded ({source}), so it cannot be "
            "checked; save the model again with effviz.train or effviz.convert"
        )
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ValueError(
            f"refusing to load {weights}: its sha256 {digest.hexdigest()} does not match {expected} "
            f"recorded in {source}; the file is damaged or was replaced"
        )


def _recorded_sha256(folder: Path) -> tuple[str | None, Path]:
    """The sha256 recorded for model.safetensors, and the file it was read from."""
    card = folder / "card.json"
    if card.is_file():
        return json.loads(card.read_text(encoding="utf-8")).get("sha256"), card
    readme = folder / "README.md"
    match = _README_SHA256.search(readme.read_text(encoding="utf-8"))
    return (match.group(1) if match else None), readme


def _count_params(weights: Path) -> int:
    with safe_open(weights, framework="pt") as f:
        return sum(int(np.prod(f.get_slice(name).get_shape())) for name in f.keys())


def _image_input(image: Image.Image | bytes | str | Path, cfg: ModelConfig) -> torch.Tensor:
    if not isinstance(image, (Image.Image, bytes, str, Path)):
        raise ValueError(f"image must be a PIL.Image, image file bytes or a path, not {type(image).__name__}")
    return image_to_tensor(open_image(image, max_pixels=MAX_IMAGE_PIXELS), cfg)


def _audio_input(audio: np.ndarray | bytes | str | Path, sample_rate: int | None, cfg: ModelConfig) -> torch.Tensor:
    if isinstance(audio, (bytes, str, Path)):
        if sample_rate is not None:
            raise ValueError("sample_rate is for audio given as samples; a sound file records its own rate")
        audio, sample_rate = read_audio(audio, max_seconds=MAX_AUDIO_SECONDS)
    elif sample_rate is None:
        raise ValueError("sample_rate is required with audio samples (samples per second, e.g. 16000)")
    elif isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer, np.floating)):
        raise ValueError(f"sample_rate must be a number of samples per second, got {sample_rate!r}")
    return audio_to_tensor(audio, sample_rate, cfg, max_seconds=MAX_AUDIO_SECONDS)
