"""Readers for the training sets effviz models are trained on (CIFAR-10, Free Spoken Digit
Dataset, MNIST), from files whose paths the caller gives. No data ships with effviz.

Every reader returns items in a fixed order (sorted by name), so that a seeded split of the
result is the same on every machine.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .audio import read_audio

log = logging.getLogger("effviz.data")

CIFAR_SIZE = (32, 32)
_CIFAR_ENTRY = re.compile(r"train/([^/]+)/([^/]+)\.jpg")
_FSDD_ENTRY = re.compile(r"recordings/(\d)_([A-Za-z]+)_(\d+)\.wav")


@dataclass
class Clip:
    """One FSDD recording: a spoken ``digit`` by ``speaker``, their ``take``-th attempt."""

    waveform: np.ndarray  # float32, mono, in [-1, 1]
    sample_rate: int
    digit: int
    speaker: str
    take: int


def load_cifar10(zip_path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """CIFAR-10 training images from a zip of ``train/<class>/<n>.jpg``.

    Returns ``(images, labels, classes)``: uint8 ``(N, 32, 32, 3)``, int64 ``(N,)`` indices into
    ``classes`` (the class folder names, sorted). Decoding 50,000 JPEGs takes most of a minute
    on 2 busy cores, so the arrays are cached in ``$EFFVIZ_CACHE/data`` (default
    ``~/.cache/effviz/data``, 150 MB), keyed by the zip's name, size and modification time;
    later calls read the cache in about a second.
    """
    path = _existing_file(zip_path)
    stat = path.stat()
    cache = _cache_dir() / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}.npz"
    cached = _read_cifar_cache(cache)
    if cached is not None:
        return cached

    started = time.perf_counter()
    with _open_zip(path) as archive:
        entries = sorted(name for name in archive.namelist() if _CIFAR_ENTRY.fullmatch(name))
        if not entries:
            raise ValueError(f"{path} has no train/<class>/<n>.jpg entries: not the CIFAR-10 training zip")
        class_of_entry = [_CIFAR_ENTRY.fullmatch(name).group(1) for name in entries]
        classes = sorted(set(class_of_entry))
        labels = np.array([classes.index(name) for name in class_of_entry], dtype=np.int64)
        images = np.empty((len(entries), *CIFAR_SIZE, 3), dtype=np.uint8)
        for i, name in enumerate(entries):
            images[i] = _decode_cifar_image(archive.read(name), f"{path}:{name}")
    log.info("decoded %d CIFAR-10 images in %.1f s", len(entries), time.perf_counter() - started)
    _write_cache(cache, images=images, labels=labels, classes=np.array(classes))
    return images, labels, classes


def _decode_cifar_image(data: bytes, where: str) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(data), formats=("JPEG",))
        img.load()
    except Exception as err:  # any decoder failure means a damaged entry
        raise ValueError(f"{where}: not a readable JPEG ({err})") from err
    if img.size != CIFAR_SIZE:
        raise ValueError(f"{where}: image is {img.size[0]}x{img.size[1]}, expected 32x32")
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


def _cache_dir() -> Path:
    return Path(os.environ.get("EFFVIZ_CACHE") or Path.home() / ".cache" / "effviz") / "data"


def _read_cifar_cache(cache: Path) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as arrays:
            images, labels, classes = arrays["images"], arrays["labels"], arrays["classes"].tolist()
    except Exception as err:  # a damaged cache is rebuilt, never trusted
        log.warning("ignoring unreadable cache %s (%s)", cache, err)
        return None
    if images.shape[1:] != (*CIFAR_SIZE, 3) or labels.shape != images.shape[:1]:
        log.warning("ignoring cache %s with unexpected shapes", cache)
        return None
    return images, labels, classes


def _write_cache(cache: Path, **arrays: np.ndarray) -> None:
    # One .npz (uncompressed .npy files in a zip) written under a temporary name and renamed:
    # a reader never sees a half-written cache, and images and labels cannot get out of step.
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.partial")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as file:
            np.savez(file, **arrays)
        os.replace(partial, cache)
    except OSError as err:  # a read-only home only costs the decoding time next run
        log.warning("could not cache decoded data at %s (%s)", cache, err)
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)


def load_fsdd(zip_path: str | Path) -> list[Clip]:
    """Free Spoken Digit Dataset recordings from a zip of ``recordings/<digit>_<speaker>_<take>.wav``,
    ordered by (digit, speaker, take)."""
    path = _existing_file(zip_path)
    with _open_zip(path) as archive:
        entries = []
        for name in archive.namelist():
            match = _FSDD_ENTRY.fullmatch(name)
            if match:
                entries.append((int(match.group(1)), match.group(2), int(match.group(3)), name))
        if not entries:
            raise ValueError(f"{path} has no recordings/<digit>_<speaker>_<take>.wav entries: not the FSDD zip")
        clips = []
        for digit, speaker, take, name in sorted(entries):
            try:
                samples, sample_rate = read_audio(archive.read(name))
            except ValueError as err:
                raise ValueError(f"{path}:{name}: {err}") from err
            if samples.ndim == 2:  # FSDD is mono; mix down anything else
                samples = samples.mean(axis=1, dtype=np.float32)
            clips.append(Clip(samples, sample_rate, digit, speaker, take))
    return clips


def load_mnist(npz_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits from an ``.npz`` holding ``images`` uint8 ``(N, 28, 28)`` and ``labels`` ``(N,)``.

    Returns ``(images, labels)`` with labels as int64.
    """
    path = _existing_file(npz_path)
    try:
        arrays = np.load(path, allow_pickle=False)
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array")
        with arrays:
            members = set(arrays.files)
            images = arrays["images"] if "images" in members else None
            labels = arrays["labels"] if "labels" in members else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable .npz file of images and labels ({err})") from err
    if images is None or labels is None:
        raise ValueError(f"{path} has arrays {sorted(members)}, expected 'images' and 'labels'")
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise ValueError(f"{path}: images are {images.dtype} {images.shape}, expected uint8 (N, 28, 28)")
    if labels.shape != images.shape[:1] or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: labels are {labels.dtype} {labels.shape}, expected integers ({images.shape[0]},)")
    return images, labels.astype(np.int64)


def _existing_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    return path


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path} is not a zip file") from err
