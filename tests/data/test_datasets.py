"""Training-set readers: small zips/npz built here for every behaviour, plus the real files in
../shared/data when this checkout has them (CIFAR-10 through a subset: decoding all 50,000 JPEGs
takes close to a minute on 2 cores)."""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from effviz.data import datasets, load_cifar10, load_fsdd, load_mnist

DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def needs(name: str):
    return pytest.mark.skipif(not (DATA_DIR / name).is_file(), reason=f"{name} not found in {DATA_DIR}")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFVIZ_CACHE", str(tmp_path / "cache"))


def jpeg(colour, size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def tiny_cifar(tmp_path: Path) -> Path:
    # Written out of order, with a folder entry and an unrelated file, as real zips can be.
    return write_zip(
        tmp_path / "tiny-cifar.zip",
        {
            "train/": b"",
            "train/ship/0001.jpg": jpeg((0, 0, 250)),
            "train/cat/0002.jpg": jpeg((250, 0, 0)),
            "train/ship/0000.jpg": jpeg((0, 250, 0)),
            "train/cat/0000.jpg": jpeg((250, 250, 250)),
            "README.txt": b"not an image",
        },
    )


# --- CIFAR-10 ------------------------------------------------------------------------------------


def test_cifar_images_labels_classes_in_sorted_order(tmp_path):
    images, labels, classes = load_cifar10(tiny_cifar(tmp_path))
    assert classes == ["cat", "ship"]
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 1, 1]
    # cat/0000 (white), cat/0002 (red), ship/0000 (green), ship/0001 (blue)
    expected = np.array([[250, 250, 250], [250, 0, 0], [0, 250, 0], [0, 0, 250]])
    assert np.abs(images[:, 16, 16].astype(int) - expected).max() <= 8


def test_cifar_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    path = tiny_cifar(tmp_path)
    first = load_cifar10(path)
    assert len(list((tmp_path / "cache" / "data").glob("*.npz"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(datasets, "_decode_cifar_image", no_decoding)
    second = load_cifar10(path)
    np.testing.assert_array_equal(second[0], first[0])
    np.testing.assert_array_equal(second[1], first[1])
    assert second[2] == first[2]

    stat = path.stat()  # a changed zip (new mtime) is decoded again
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        load_cifar10(path)


def test_cifar_damaged_cache_is_rebuilt(tmp_path):
    path = tiny_cifar(tmp_path)
    images = load_cifar10(path)[0]
    (cache,) = (tmp_path / "cache" / "data").glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:100])
    np.testing.assert_array_equal(load_cifar10(path)[0], images)
    assert np.load(cache)["images"].shape == images.shape  # rewritten whole


def test_cifar_unwritable_cache_still_loads(tmp_path, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should go")
    monkeypatch.setenv("EFFVIZ_CACHE", str(blocker))
    assert load_cifar10(tiny_cifar(tmp_path))[0].shape == (4, 32, 32, 3)


def test_cifar_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_cifar10(tmp_path / "missing.zip")
    with pytest.raises(ValueError, match="not a file"):
        load_cifar10(tmp_path)
    text = tmp_path / "fake.zip"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a zip file"):
        load_cifar10(text)
    other = write_zip(tmp_path / "other.zip", {"recordings/0_a_0.wav": b"x"})
    with pytest.raises(ValueError, match="not the CIFAR-10 training zip"):
        load_cifar10(other)
    wrong_size = write_zip(tmp_path / "big.zip", {"train/cat/0.jpg": jpeg((1, 2, 3), (64, 64))})
    with pytest.raises(ValueError, match=r"train/cat/0.jpg: image is 64x64, expected 32x32"):
        load_cifar10(wrong_size)
    broken = write_zip(tmp_path / "broken.zip", {"train/cat/0.jpg": jpeg((1, 2, 3))[:200]})
    with pytest.raises(ValueError, match=r"train/cat/0.jpg: not a readable JPEG"):
        load_cifar10(broken)


@needs("cifar10-train.zip")
def test_real_cifar_zip(tmp_path):
    with zipfile.ZipFile(DATA_DIR / "cifar10-train.zip") as archive:
        names = [name for name in archive.namelist() if datasets._CIFAR_ENTRY.fullmatch(name)]
        assert len(names) == 50_000
        per_class = {cls: sorted(n for n in names if n.split("/")[1] == cls)[:3] for cls in CIFAR_CLASSES}
        subset = write_zip(tmp_path / "subset.zip", {n: archive.read(n) for ns in per_class.values() for n in ns})
    images, labels, classes = load_cifar10(subset)
    assert classes == CIFAR_CLASSES
    assert images.shape == (30, 32, 32, 3) and labels.tolist() == [c for c in range(10) for _ in range(3)]
    assert images.std() > 30  # real photos, not blank decodes


# --- FSDD ----------------------------------------------------------------------------------------


def wav(samples: np.ndarray, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_fsdd_clips_in_digit_speaker_take_order(tmp_path):
    path = write_zip(
        tmp_path / "fsdd.zip",
        {
            "recordings/": b"",
            "recordings/3_theo_10.wav": wav(np.full(800, 0.25, dtype=np.float32)),
            "recordings/3_theo_2.wav": wav(np.full(400, -0.5, dtype=np.float32)),
            "recordings/0_george_7.wav": wav(np.zeros((100, 2), dtype=np.float32)),
            "recordings/notes.txt": b"ignored",
        },
    )
    clips = load_fsdd(path)
    assert [(c.digit, c.speaker, c.take) for c in clips] == [(0, "george", 7), (3, "theo", 2), (3, "theo", 10)]
    assert all(c.sample_rate == 8000 and c.waveform.dtype == np.float32 and c.waveform.ndim == 1 for c in clips)
    assert clips[0].waveform.shape == (100,)  # stereo mixed down
    np.testing.assert_allclose(clips[1].waveform, -0.5, atol=1e-4)
    assert clips[2].waveform.shape == (800,)


def test_fsdd_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_fsdd(tmp_path / "missing.zip")
    with pytest.raises(ValueError, match="not the FSDD zip"):
        load_fsdd(tiny_cifar(tmp_path))
    broken = write_zip(tmp_path / "broken.zip", {"recordings/1_theo_0.wav": b"RIFF, but not really"})
    with pytest.raises(ValueError, match="1_theo_0.wav: cannot read the audio"):
        load_fsdd(broken)


@needs("fsdd-5speakers.zip")
def test_real_fsdd():
    clips = load_fsdd(DATA_DIR / "fsdd-5speakers.zip")
    assert len(clips) == 2500
    assert {c.speaker for c in clips} == {"george", "jackson", "nicolas", "theo", "yweweler"}
    assert np.bincount([c.digit for c in clips]).tolist() == [250] * 10
    assert {c.take for c in clips} == set(range(50))
    assert {c.sample_rate for c in clips} == {8000}
    assert all(c.waveform.ndim == 1 and c.waveform.size > 0 for c in clips)


# --- MNIST ---------------------------------------------------------------------------------------


def test_mnist_reader(tmp_path):
    path = tmp_path / "digits.npz"
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28).astype(np.uint8)
    np.savez(path, images=images, labels=np.array([7, 1, 0], np.uint8))
    images, labels = load_mnist(path)
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [7, 1, 0]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((2, 28, 28), np.uint8)}, "expected 'images' and 'labels'"),
        ({"images": np.zeros((2, 28, 28), np.float32), "labels": np.zeros(2, int)}, "expected uint8"),
        ({"images": np.zeros((2, 32, 32), np.uint8), "labels": np.zeros(2, int)}, r"expected uint8 \(N, 28, 28\)"),
        ({"images": np.zeros((2, 28, 28), np.uint8), "labels": np.zeros(3, int)}, "labels are"),
    ],
    ids=["keys", "dtype", "shape", "labels"],
)
def test_mnist_wrong_contents(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        load_mnist(path)


def test_mnist_wrong_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_mnist(tmp_path / "missing.npz")
    text = tmp_path / "text.npz"
    text.write_text("nope")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_mnist(text)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="single array"):
        load_mnist(single)


@needs("mnist-8k.npz")
def test_real_mnist():
    images, labels = load_mnist(DATA_DIR / "mnist-8k.npz")
    assert images.shape == (8000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and sorted(set(labels.tolist())) == list(range(10))
