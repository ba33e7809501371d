"""The public prediction API: which models are ready, their cards, and predictions.

    >>> effviz.list_models("audio")
    ['aum-fsdd', 'ast-fsdd', ...]
    >>> effviz.predict("deit-cifar", image="cat.png", top_k=3)
    {'cat': 0.81, 'dog': 0.12, 'frog': 0.03}
    >>> effviz.predict("aum-fsdd", audio=samples, sample_rate=44100)

A model is a folder ``weights/<model-id>/`` (see ``registry.weight_folders``), or an official
release (``effviz.models.releases.RELEASES``) whose checkpoint is fetched from the Hugging Face
Hub on first use into the Hub's cache and converted in memory. A folder's weights are loaded
only after their sha256 matches the one recorded when they were saved, so a corrupt,
half-copied or swapped file is refused instead of silently giving wrong answers. Each model is
loaded once per process and shared by every caller (the app serves concurrent users).

How a model's input is framed and its output read (resize, crop, fbank, softmax or sigmoid) is
its ``Preprocess`` record: ``preprocess.json`` in its folder, its release's, or for the models
trained here the framing of their training data.
"""
from __future__ import annotations

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
from safetensors.torch import load_model as load_safetensors

from .data.audio import DEFAULT_MAX_SECONDS, audio_to_tensor, read_audio
from .data.image import MAX_PIXELS, image_to_tensor, open_image
from .convert import convert_checkpoint
from .convert.loading import cached_file, download_from_hub, file_sha256, load_tensors
from .models import EffvizModel, ModelConfig, registry
from .models.registry import MODEL_ID_PATTERN, task_of
from .models.releases import RELEASES, Preprocess, Release, read_preprocess

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


_models: dict[str, tuple[EffvizModel, Preprocess]] = {}
_load_locks: dict[str, threading.Lock] = {}
_cache_lock = threading.Lock()  # guards the two dicts above, never held while loading


def list_models(task: str | None = None) -> list[str]:
    """Ids of the models ready to predict without a download, sorted: the model folders, then
    the official releases already in the local Hugging Face cache (checked without any network
    call); only those for ``task`` ("image", "audio" or "audio-visual") when given. A folder
    whose config.json cannot be read is left out, with a warning in the log."""
    _check_task(task)
    ids = []
    folders = registry.weight_folders()
    for model_id, folder in folders.items():
        try:
            cfg = _read_config(folder)
        except (OSError, ValueError, TypeError) as err:  # unreadable JSON, unknown or invalid fields
            log.warning("skipping %s: cannot read its config.json (%s)", folder, err)
            continue
        if task is None or task_of(cfg) == task:
            ids.append(model_id)
    for name, release in list_releases(task).items():
        if name not in folders and release_file(release) is not None:
            ids.append(name)
    return ids


def list_releases(task: str | None = None) -> dict[str, Release]:
    """The official releases published on the Hugging Face Hub (``RELEASES``), by model id; only
    those for ``task`` when given. Whether one is downloaded yet: :func:`release_file`."""
    _check_task(task)
    return {name: r for name, r in RELEASES.items()
            if r.repo_id is not None and (task is None or _release_task(r) == task)}


def release_file(release: Release) -> Path | None:
    """The release's checkpoint in the local Hugging Face cache, or None (no network call)."""
    return cached_file(release.repo_id, release.filenames, release.revision) if release.repo_id else None


def load_model(model_id: str) -> EffvizModel:
    """The model ``model_id`` in eval mode on ``prediction_device()``, loaded once and cached: a
    folder under ``weights/``, or an official release (its checkpoint downloaded from the
    Hugging Face Hub on first use, the cached file afterwards).

    Raises ValueError for an invalid or unknown id, for weights whose sha256 does not match the
    recorded one (or has none recorded), and FileNotFoundError for a release that is neither
    cached nor downloadable (offline: the message says so).
    """
    return _loaded(model_id)[0]


def model_preprocess(model_id: str) -> Preprocess:
    """How ``model_id``'s inputs are framed and its outputs read (loads the model)."""
    return _loaded(model_id)[1]


def _loaded(model_id: str) -> tuple[EffvizModel, Preprocess]:
    _validate_id(model_id)
    # A folder is cached by its path: the same id may name another folder once WEIGHTS_DIR changes.
    folder = registry.weight_folders().get(model_id)
    key = str(folder.resolve()) if folder is not None else f"release:{model_id}"
    with _cache_lock:
        if key in _models:
            return _models[key]
        load_lock = _load_locks.setdefault(key, threading.Lock())
    with load_lock:  # callers of other models are not held up while this one loads
        if key not in _models:  # another caller may have loaded it while this one waited
            model, pre = build_pretrained(model_id)
            with _cache_lock:
                _models[key] = (model.eval().to(prediction_device()), pre)
    return _models[key]


def build_pretrained(model_id: str) -> tuple[EffvizModel, Preprocess]:
    """A fresh copy of model ``model_id`` with its weights (checked), on the CPU, and its
    Preprocess record. Behind :func:`load_model` and ``create_model(name, pretrained=True)``."""
    _validate_id(model_id)
    if model_id in registry.weight_folders() or model_id not in RELEASES:
        folder = _model_folder(model_id)
        _verify_weights(folder)
        # Built here rather than by the Hub mixin's from_pretrained, which prints to stdout (the CLI's
        # --json output goes there).
        model = EffvizModel(_read_config(folder))
        load_safetensors(model, folder / "model.safetensors", strict=True, device="cpu")
        return model.eval(), read_preprocess(folder, model.config)
    release = RELEASES[model_id]
    if release.repo_id is None:
        raise ValueError(
            f"{model_id}: the weights are {release.availability}; import such a file with "
            f"`python -m effviz import {release.arch} FILE`"
        )
    resolved = download_from_hub(release.repo_id, release.filenames, release.arch,
                                 revision=release.revision, sha256=release.sha256)
    model, _ = convert_checkpoint(release.arch, load_tensors(resolved.path), what=str(resolved.path))
    return model, release.preprocess


def predict(
    model_id: str,
    image: Image.Image | bytes | str | Path | None = None,
    audio: np.ndarray | bytes | str | Path | None = None,
    sample_rate: int | None = None,
    top_k: int | None = None,
) -> dict[str, float]:
    """Class probabilities for an image and/or audio, as ``{label: probability}`` sorted from
    most to least likely: every class, or the ``top_k`` most likely. For a single-label model
    they sum to 1 (softmax); for a multi-label one (AudioSet) each is that label's own
    probability (sigmoid), as the model's Preprocess record says.

    image: a ``PIL.Image`` of any mode and size, or image file bytes or a path.
    audio: samples, 1-D (mono) or 2-D ``(samples, channels)``, int16 or float, at ``sample_rate``
        (required with samples; 8 kHz or more), or sound file bytes or a path. At most
        ``MAX_AUDIO_SECONDS``; framed as the model's Preprocess record says.
    Raises ValueError with a specific message for missing input, a modality the model does not
    take, a missing sample rate, unreadable or too large input, and an invalid model id.
    """
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None (all classes), got {top_k!r}")
    model, pre = _loaded(model_id)
    inputs = _framed_inputs(model_id, model.config, pre, image, audio, sample_rate)
    cfg = model.config
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(**{k: v.to(device) for k, v in inputs.items()})[0].float().cpu()
    # A multi-label head (AudioSet) scores each label on its own: "speech 0.91, dog 0.40".
    probabilities = logits.sigmoid() if pre.activation == "sigmoid" else logits.softmax(-1)
    labels = cfg.labels or [f"class {i}" for i in range(cfg.num_classes)]
    order = probabilities.argsort(descending=True)[:top_k].tolist()
    return {labels[i]: float(probabilities[i]) for i in order}


def model_inputs(
    model_id: str,
    image: Image.Image | bytes | str | Path | None = None,
    audio: np.ndarray | bytes | str | Path | None = None,
    sample_rate: int | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors ``model_id`` reads for these inputs (``{"image": (1, C, H, W), "audio": (1,
    frames, mel)}``, on the CPU), decoded and framed by its Preprocess record, as
    :func:`predict` frames them. Raises ValueError as :func:`predict` does."""
    model, pre = _loaded(model_id)
    return _framed_inputs(model_id, model.config, pre, image, audio, sample_rate)


def _framed_inputs(
    model_id: str, cfg: ModelConfig, pre: Preprocess, image: Image.Image | bytes | str | Path | None,
    audio: np.ndarray | bytes | str | Path | None, sample_rate: int | None,
) -> dict[str, torch.Tensor]:
    if image is None and audio is None:
        raise ValueError("nothing to predict on: give an image and/or audio")
    modalities = cfg.modalities
    refused = [name for name, x in (("image", image), ("audio", audio)) if x is not None and name not in modalities]
    if refused:
        raise ValueError(f"{model_id} takes {' and/or '.join(modalities)}, not {' and '.join(refused)}")
    inputs = {}
    if image is not None:
        inputs["image"] = _image_input(image, pre)
    if audio is not None:
        inputs["audio"] = _audio_input(audio, sample_rate, pre)
    return inputs


def model_card(model_id: str) -> dict:
    """What the Models tab shows: card.json's contents (metrics, recipe, data, sha256 ...) when the
    model has one, plus ``task``, ``params``, a ``config`` summary, its ``preprocess`` record and
    the README.md text. For an official release not saved as a folder: its release record."""
    _validate_id(model_id)
    if model_id not in registry.weight_folders() and model_id in RELEASES:
        return _release_card(RELEASES[model_id])
    folder = _model_folder(model_id)
    card_file, readme = folder / "card.json", folder / "README.md"
    card = json.loads(card_file.read_text(encoding="utf-8")) if card_file.is_file() else {}
    cfg = _read_config(folder)
    config = asdict(cfg)
    fields = [*_CONFIG_SUMMARY[None], *(f for m in cfg.modalities for f in _CONFIG_SUMMARY[m])]
    card.update(model_id=model_id, task=task_of(cfg), config={name: config[name] for name in fields},
                preprocess=asdict(read_preprocess(folder, cfg)))
    if "params" not in card:  # imported checkpoints: counted from the file header, no tensor read
        card["params"] = _count_params(folder / "model.safetensors")
    if readme.is_file():
        card["readme"] = readme.read_text(encoding="utf-8")
    return card


def _release_card(release: Release) -> dict:
    from .bench.sweep import parameter_count  # the bench imports this module

    cfg = registry.architecture_config(release.arch)
    cached = release_file(release)
    params = parameter_count(release.arch)
    return {
        "model_id": release.name, "task": _release_task(release), "architecture": release.arch, "params": params,
        "weights": f"official: {release.repo_id}" + ("" if cached else f" (downloads ~{release.size_mb} MB on first use)"),
        "config": {"mixer": cfg.mixer, "embed_dim": cfg.embed_dim, "depth": cfg.depth, "modalities": cfg.modalities},
        "preprocess": asdict(release.preprocess), "metrics": {"reported": release.top1},
        "readme": (f"**{release.model}** ({release.paper}), the official {release.dataset} weights from the "
                   f"Hugging Face Hub repo `{release.repo_id}` ({', '.join(release.filenames)}), converted "
                   f"into effviz's `{release.arch}` architecture on load. Reported by the authors: "
                   f"{release.top1}. Licence: {release.licence}. Code: {release.code}."),
    }


def _release_task(release: Release) -> str:
    return "audio" if release.preprocess.audio is not None else "image"


def _check_task(task: str | None) -> None:
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)} (or None for all)")


def _validate_id(model_id: str) -> None:
    if not isinstance(model_id, str) or not MODEL_ID_PATTERN.fullmatch(model_id) or ".." in model_id:
        raise ValueError(
            f"invalid model id {model_id!r}: an id is a folder name under weights/ or an official release, "
            "made of lowercase letters, digits, '.', '_' and '-' (see effviz.list_models())"
        )


def _model_folder(model_id: str) -> Path:
    """``weights/<model_id>``, after making sure the id cannot name anything outside it."""
    _validate_id(model_id)
    root = registry.WEIGHTS_DIR.resolve()
    folder = (root / model_id).resolve()
    if folder.parent != root:  # a symlink leading out of weights/
        raise ValueError(f"invalid model id {model_id!r}: it resolves outside {root}")
    if model_id not in registry.weight_folders():
        available = ", ".join([*registry.weight_folders(), *list_releases()]) or f"none: {root} holds no saved model"
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
    actual = file_sha256(weights)
    if actual != expected:
        raise ValueError(
            f"refusing to load {weights}: its sha256 {actual} does not match {expected} "
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


def _image_input(image: Image.Image | bytes | str | Path, pre: Preprocess) -> torch.Tensor:
    if not isinstance(image, (Image.Image, bytes, str, Path)):
        raise ValueError(f"image must be a PIL.Image, image file bytes or a path, not {type(image).__name__}")
    return image_to_tensor(open_image(image, max_pixels=MAX_IMAGE_PIXELS), pre.image)


def _audio_input(audio: np.ndarray | bytes | str | Path, sample_rate: int | None, pre: Preprocess) -> torch.Tensor:
    if isinstance(audio, (bytes, str, Path)):
        if sample_rate is not None:
            raise ValueError("sample_rate is for audio given as samples; a sound file records its own rate")
        audio, sample_rate = read_audio(audio, max_seconds=MAX_AUDIO_SECONDS)
    elif sample_rate is None:
        raise ValueError("sample_rate is required with audio samples (samples per second, e.g. 16000)")
    elif isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer, np.floating)):
        raise ValueError(f"sample_rate must be a number of samples per second, got {sample_rate!r}")
    return audio_to_tensor(audio, sample_rate, pre.audio, max_seconds=MAX_AUDIO_SECONDS)
