"""Fuzzing the input boundary: whatever bytes or arrays a user sends, ``open_image``,
``read_audio`` and ``prepare_waveform`` give a valid result or a ``ValueError`` that says what is
wrong; never another exception (which the app would show as a bare "Error") and never a hang.

The budget is fixed and the examples derandomized, so CI runs the same cases every time."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from effviz.data.audio import (
    DEFAULT_MAX_SECONDS,
    FRAME_LENGTH_MS,
    FRAME_SHIFT_MS,
    MIN_FRAMES,
    prepare_waveform,
    read_audio,
)
from effviz.data.image import open_image

torch.set_num_threads(1)
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Far above the worst case seen on a loaded 2-core machine: a hang fails instead of blocking CI.
pytestmark = pytest.mark.timeout(600)


def _image_bytes(fmt: str) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if fmt == "GIF":  # two frames: the animated case
        img.save(buffer, format="GIF", save_all=True, append_images=[img.rotate(90)])
    else:
        img.save(buffer, format=fmt)
    return buffer.getvalue()


def _sound_bytes(fmt: str, subtype: str) -> bytes:
    t = np.arange(4000) / 16000
    samples = np.stack([np.sin(2 * np.pi * 440 * t), np.cos(2 * np.pi * 220 * t)], axis=1) * 0.5
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format=fmt, subtype=subtype)
    return buffer.getvalue()


VALID_IMAGES = [_image_bytes(fmt) for fmt in ("PNG", "JPEG", "GIF")]
VALID_SOUNDS = [_sound_bytes("WAV", "PCM_16"), _sound_bytes("WAV", "FLOAT"), _sound_bytes("FLAC", "PCM_16")]


@st.composite
def mutated(draw: st.DrawFn, originals: list[bytes]) -> bytes:
    """A valid file damaged the ways files get damaged: bytes overwritten (headers included),
    cut short, spliced, or with junk inserted."""
    data = bytearray(draw(st.sampled_from(originals)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["overwrite", "header", "truncate", "insert", "delete"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "overwrite" and data:
            data[position] = draw(st.integers(0, 255))
        elif kind == "header" and data:  # sizes, rates and dimensions live in the first bytes
            data[draw(st.integers(0, min(len(data), 64) - 1))] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif kind == "truncate":
            del data[position:]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "delete":
            del data[position:position + draw(st.integers(1, 32))]
    return bytes(data)


def assert_refused_clearly(err: ValueError) -> None:
    assert str(err).strip(), f"ValueError without a message: {err!r}"


def check_open_image(data: bytes) -> None:
    try:
        img = open_image(data)
    except ValueError as err:
        assert_refused_clearly(err)
        return
    assert img.mode == "RGB" and img.width >= 1 and img.height >= 1
    np.asarray(img)  # the pixels are really there


def check_read_audio(data: bytes) -> None:
    try:
        samples, sample_rate = read_audio(data, max_seconds=DEFAULT_MAX_SECONDS)
    except ValueError as err:
        assert_refused_clearly(err)
        return
    assert samples.dtype == np.float32 and samples.ndim in (1, 2) and samples.shape[0] > 0
    assert isinstance(sample_rate, int) and sample_rate > 0
    assert samples.shape[0] / sample_rate <= DEFAULT_MAX_SECONDS


@FUZZ
@given(st.binary(max_size=4096))
def test_open_image_random_bytes(data: bytes):
    check_open_image(data)


@FUZZ
@given(mutated(VALID_IMAGES))
def test_open_image_damaged_files(data: bytes):
    check_open_image(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_read_audio_random_bytes(data: bytes):
    check_read_audio(data)


@FUZZ
@given(mutated(VALID_SOUNDS))
def test_read_audio_damaged_files(data: bytes):
    check_read_audio(data)


DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
          np.bool_, np.complex64]
SHAPES = st.one_of(
    hnp.array_shapes(min_dims=1, max_dims=1, min_side=0, max_side=3000),
    st.tuples(st.integers(0, 400), st.integers(0, 40)),  # (samples, channels), more channels than allowed
    st.tuples(st.integers(0, 10), st.integers(0, 400)),  # (channels, samples)
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
)
RATES = st.one_of(
    st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000, 96000, 384000]),
    st.integers(-10, 500_000),
    st.floats(allow_nan=True, allow_infinity=True),
)


@st.composite
def waveforms(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(SHAPES)
    elements = hnp.from_dtype(dtype)  # any value of the type, NaN and inf included
    if dtype.kind == "f":  # the extremes, often: a sum of many huge samples overflows where one does not
        top = float(np.finfo(dtype).max)
        elements = st.one_of(elements, st.sampled_from([top, -top, float("nan"), float("inf"), 3e4, -1.0]))
    return draw(hnp.arrays(dtype, shape, elements=elements))


@FUZZ
@given(waveforms(), RATES, st.sampled_from([16000, 8000]))
def test_prepare_waveform_any_array(audio: np.ndarray, sample_rate: float, target_rate: int):
    try:
        waveform = prepare_waveform(audio, sample_rate, target_rate, DEFAULT_MAX_SECONDS)
    except ValueError as err:
        assert_refused_clearly(err)
        return
    window = round(target_rate * FRAME_LENGTH_MS / 1000)
    shift = round(target_rate * FRAME_SHIFT_MS / 1000)
    assert waveform.dtype == torch.float32 and waveform.ndim == 1
    assert waveform.shape[0] >= window + (MIN_FRAMES - 1) * shift  # enough for one fbank patch
    assert torch.isfinite(waveform).all(), "a non-finite waveform would make every probability NaN"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_float_samples_are_refused_not_turned_into_nan(dtype):
    # Found by the fuzzing above: two channels near float32's maximum overflowed when averaged.
    top = float(np.finfo(dtype).max)
    audio = np.full((4000, 2), top, dtype=dtype)
    with pytest.raises(ValueError, match=r"float audio should lie in \[-1, 1\]"):
        prepare_waveform(audio, 16000, 16000, DEFAULT_MAX_SECONDS)
    # int32-scaled floats, a common mistake, are still accepted and stay finite.
    scaled = np.full((4000, 2), 2.0**31, dtype=dtype)
    scaled[::2] *= -1
    assert torch.isfinite(prepare_waveform(scaled, 44100, 16000, DEFAULT_MAX_SECONDS)).all()
