"""Audio decoding, waveform preparation (channels, dtypes, rates, lengths) and fbank features."""
from __future__ import annotations

import io
import math
import tracemalloc

import numpy as np
import pytest
import soundfile
import torch
from torchaudio.compliance import kaldi

from effviz.data import audio_to_tensor, fbank, prepare_waveform, read_audio
from effviz.data.audio import frame_speech
from effviz.models.releases import AudioPreprocess

CFG = AudioPreprocess(sample_rate=16000, mel_bins=128, frame_multiple=16)
RATE = CFG.sample_rate
MIN_SAMPLES = 400 + 15 * 160  # 16 frames of 25 ms every 10 ms at 16 kHz


def tone(seconds: float, rate: int = RATE, hz: float = 1000.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def encode(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


# --- read_audio ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, subtype, tolerance", [("WAV", "PCM_16", 1e-4), ("FLAC", None, 1e-4), ("OGG", "VORBIS", 0.05)]
)
def test_read_audio_formats(fmt, subtype, tolerance):
    samples = tone(0.5, 8000)
    decoded, rate = read_audio(encode(samples, 8000, fmt, subtype))
    assert rate == 8000 and decoded.dtype == np.float32 and decoded.ndim == 1
    assert decoded.shape[0] == pytest.approx(samples.shape[0], abs=64)
    n = min(decoded.shape[0], samples.shape[0])
    assert np.abs(decoded[:n] - samples[:n]).max() < tolerance


def test_read_audio_from_path_keeps_channels(tmp_path):
    stereo = np.stack([tone(0.2), -tone(0.2)], axis=1)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo, RATE)
    for source in (path, str(path)):
        decoded, rate = read_audio(source)
        assert decoded.shape == stereo.shape and rate == RATE
        np.testing.assert_allclose(decoded, stereo, atol=1e-4)


def test_read_audio_empty_file(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        read_audio(b"")
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_audio(path)


def test_read_audio_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_audio(tmp_path / "nope.wav")


def test_read_audio_non_audio_named_wav_lists_readable_formats(tmp_path):
    path = tmp_path / "song.wav"
    path.write_text("definitely not a RIFF header\n" * 20)
    with pytest.raises(ValueError, match="not a sound file") as info:
        read_audio(path)
    assert "WAV" in str(info.value) and "FLAC" in str(info.value) and "OGG" in str(info.value)


@pytest.mark.skipif("MP3" not in soundfile.available_formats(), reason="this libsndfile has no MP3 codec")
def test_read_audio_decodes_mp3_where_libsndfile_can():
    samples = tone(0.5, 16000)
    decoded, rate = read_audio(encode(samples, 16000, "MP3"))
    assert rate == 16000 and decoded.ndim == 1
    assert decoded.shape[0] == pytest.approx(samples.shape[0], rel=0.1)  # MP3 adds encoder padding


class _NoDecoder:
    """What libsndfile without an MP3 codec does with MP3 bytes."""

    def __init__(self, *args, **kwargs):
        raise soundfile.SoundFileError("Format not recognised.")


def test_mp3_without_a_decoder_says_so_and_how_to_fix_it(monkeypatch):
    mp3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + bytes(400)
    monkeypatch.setattr(soundfile, "SoundFile", _NoDecoder)
    monkeypatch.setattr(soundfile, "available_formats", lambda: {"WAV": "", "FLAC": "", "OGG": ""})
    with pytest.raises(ValueError, match="looks like an MP3 file.*no decoder.*Convert it to WAV, FLAC or OGG"):
        read_audio(mp3)
    frame_sync_only = b"\xff\xfb\x90\x64" + bytes(400)  # an MP3 without an ID3 tag
    with pytest.raises(ValueError, match="MP3"):
        read_audio(frame_sync_only)


@pytest.mark.parametrize("head, name", [(b"\x00\x00\x00\x20ftypM4A ", "MP4/M4A"), (b"\x1a\x45\xdf\xa3", "WebM")])
def test_containers_libsndfile_never_reads_are_named(head, name):
    with pytest.raises(ValueError, match=f"looks like an? {name}"):
        read_audio(head + bytes(600))


def test_read_audio_zero_samples():
    with pytest.raises(ValueError, match="no samples"):
        read_audio(encode(np.zeros(0, dtype=np.float32), RATE, "WAV"))


def test_read_audio_refuses_long_files_before_decoding():
    data = encode(tone(2.0), RATE, "WAV")
    with pytest.raises(ValueError, match="2.0 s long; the limit is 1 s"):
        read_audio(data, max_seconds=1.0)
    assert read_audio(data, max_seconds=2.0)[0].shape == (2 * RATE,)


# --- prepare_waveform ----------------------------------------------------------------------------


def test_mono_float_at_target_rate_is_unchanged():
    samples = tone(1.0)
    out = prepare_waveform(samples, RATE, RATE, max_seconds=30)
    assert out.dtype == torch.float32 and out.shape == (RATE,)
    np.testing.assert_array_equal(out.numpy(), samples)


def test_both_channel_layouts_mix_to_the_same_mono():
    left, right = tone(0.5), tone(0.5, hz=440)
    samples_first = prepare_waveform(np.stack([left, right], axis=1), RATE, RATE, 30)
    channels_first = prepare_waveform(np.stack([left, right], axis=0), RATE, RATE, 30)
    torch.testing.assert_close(samples_first, channels_first)
    torch.testing.assert_close(samples_first, torch.from_numpy((left + right) / 2))


def test_six_channels_are_averaged():
    channels = np.stack([tone(0.5, amplitude=0.1 * (c + 1)) for c in range(6)], axis=1)  # 5.1 layout
    out = prepare_waveform(channels, RATE, RATE, 30)
    torch.testing.assert_close(out, torch.from_numpy(tone(0.5, amplitude=0.35)), atol=1e-6, rtol=0)
    torch.testing.assert_close(prepare_waveform(channels.T.copy(), RATE, RATE, 30), out)


@pytest.mark.parametrize(
    "samples, expected",
    [
        (np.array([-32768, 0, 16384, 32767] * 1000, dtype=np.int16), [-1.0, 0.0, 0.5, 32767 / 32768]),
        (np.array([-(2**31), 0, 2**30, 0] * 1000, dtype=np.int32), [-1.0, 0.0, 0.5, 0.0]),
        (np.array([0, 128, 192, 255] * 1000, dtype=np.uint8), [-1.0, 0.0, 0.5, 127 / 128]),
        (np.array([-1.0, 0.0, 0.5, 0.25] * 1000, dtype=np.float64), [-1.0, 0.0, 0.5, 0.25]),
    ],
    ids=["int16", "int32", "uint8", "float64"],
)
def test_integer_samples_are_scaled_to_unit_range(samples, expected):
    out = prepare_waveform(samples, RATE, RATE, 30)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out[:4].numpy(), expected, atol=1e-6)


def test_partly_non_finite_samples_are_zeroed():
    samples = tone(0.5)
    samples[::7] = np.nan
    samples[3] = np.inf
    out = prepare_waveform(samples, RATE, RATE, 30)
    assert torch.isfinite(out).all()
    assert out[0] == 0 and out[3] == 0 and out[1] == samples[1]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_non_finite_is_refused(bad):
    with pytest.raises(ValueError, match="audio contains only NaN/inf"):
        prepare_waveform(np.full((RATE, 2), bad, dtype=np.float32), RATE, RATE, 30)


@pytest.mark.parametrize("rate", [1, 7999, 384001, 10**9])
def test_unsupported_sample_rates(rate):
    with pytest.raises(ValueError, match="sample_rate .* outside the supported 8000-384000 Hz"):
        prepare_waveform(tone(0.5), rate, RATE, 30)


@pytest.mark.parametrize("rate", [8000, 44100, 384000])
def test_resampling_keeps_duration_and_pitch(rate):
    out = prepare_waveform(tone(0.5, rate, hz=1000.0), rate, RATE, 30)
    assert out.shape == (RATE // 2,)
    spectrum = torch.fft.rfft(out).abs()
    assert int(spectrum.argmax()) == 500  # 1 kHz in a 0.5 s clip: bin 500


def test_odd_sample_rate_is_resampled_cheaply(monkeypatch):
    # 8001 and 16000 share no factor: the exact polyphase filter would be 8001 x 16000 floats.
    # The rate is rounded to 8000 Hz instead (a 0.0125 % pitch change).
    from effviz.data import audio

    calls = []
    real_resample = audio.audio_functional.resample

    def spy(waveform, orig_freq, new_freq):
        calls.append((orig_freq, new_freq))
        return real_resample(waveform, orig_freq, new_freq)

    monkeypatch.setattr(audio.audio_functional, "resample", spy)
    out = prepare_waveform(tone(1.0, 8001), 8001, RATE, 30)
    assert calls == [(1, 2)]
    assert out.shape[0] == pytest.approx(RATE, abs=5)
    prepare_waveform(tone(1.0, 44100), 44100, RATE, 30)
    assert calls[-1] == (441, 160)  # common rates are resampled exactly


def test_three_hours_is_refused_from_the_length_alone():
    # Zero-stride views of 3 hours: nothing is allocated unless the code converts them.
    hours = 3 * 3600 * 48000
    mono = np.broadcast_to(np.zeros(1, dtype=np.int16), (hours,))
    stereo = np.broadcast_to(np.zeros((1, 2), dtype=np.int16), (hours, 2))
    tracemalloc.start()
    try:
        for samples in (mono, stereo, stereo.T):
            with pytest.raises(ValueError, match=r"10800.0 s long; the limit is 30 s"):
                prepare_waveform(samples, 48000, RATE, max_seconds=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10e6


def test_short_clip_is_zero_padded_to_one_patch():
    samples = tone(0.05)
    out = prepare_waveform(samples, RATE, RATE, 30)
    assert out.shape == (MIN_SAMPLES,)
    np.testing.assert_array_equal(out[: samples.shape[0]].numpy(), samples)
    assert (out[samples.shape[0] :] == 0).all()


@pytest.mark.parametrize(
    "samples, message",
    [
        (np.zeros(0, dtype=np.float32), "no samples"),
        (np.zeros((0, 2), dtype=np.float32), "no samples"),
        (np.zeros((2, 0), dtype=np.float32), "no samples"),
        (np.zeros((2, 3, 100), dtype=np.float32), "1-D"),
        (np.zeros((1000, 100), dtype=np.float32), "100 channels"),
        (np.ones(1000, dtype=bool), "dtype bool"),
    ],
    ids=["empty", "empty-stereo", "empty-channels-first", "3-D", "100-channels", "bool"],
)
def test_unusable_arrays(samples, message):
    with pytest.raises(ValueError, match=message):
        prepare_waveform(samples, RATE, RATE, 30)


# --- fbank -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, frames", [(0.1, 16), (1.0, 112), (10.0, 1008)])
def test_fbank_shapes(seconds, frames):
    # 0.1 s is padded to 16 frames; 1 s gives 98 frames -> 112; 10 s gives 998 -> 1008.
    x = audio_to_tensor(tone(seconds, 8000), 8000, CFG)
    assert x.shape == (1, frames, CFG.mel_bins) and x.dtype == torch.float32
    assert torch.isfinite(x).all()


def test_fbank_matches_kaldi_with_ast_settings_and_normalisation():
    cfg = AudioPreprocess(mel_bins=64, fbank_mean=-4.27, fbank_std=4.57, frame_multiple=16)
    waveform = torch.from_numpy(tone(1.0) + 0.1)  # a DC offset, removed as AST does
    features = fbank(waveform, cfg)
    raw = kaldi.fbank(
        (waveform - waveform.mean()).unsqueeze(0),
        htk_compat=True,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=64,
        dither=0.0,
        frame_shift=10,
        sample_frequency=RATE,
    )
    assert raw.shape == (98, 64) and features.shape == (112, 64)
    torch.testing.assert_close(features[:98], (raw + 4.27) / (2 * 4.57))
    # Padding frames hold the clip's smallest value.
    assert (features[98:] == features[:98].min()).all()


def test_fbank_of_a_tone_peaks_in_its_mel_band():
    features = fbank(prepare_waveform(tone(1.0, hz=1000.0), RATE, RATE, 30), CFG)
    # HTK mel scale from 20 Hz to Nyquist, 128 triangular bands: band i peaks at mel centre i + 1.
    mel = lambda hz: 1127 * math.log(1 + hz / 700)  # noqa: E731
    centres = np.linspace(mel(20), mel(RATE / 2), CFG.mel_bins + 2)[1:-1]
    expected_band = int(np.abs(centres - mel(1000)).argmin())
    assert abs(int(features[:98].mean(0).argmax()) - expected_band) <= 1


def test_fbank_needs_one_window():
    with pytest.raises(ValueError, match="fewer than one 25 ms window"):
        fbank(torch.zeros(399), CFG)
    with pytest.raises(ValueError, match="1-D"):
        fbank(torch.zeros(2, 4000), CFG)


# --- framing speech as training clips were framed --------------------------------------------------


def test_frame_speech_centres_the_spoken_part_whatever_silence_surrounds_it():
    word = tone(0.4, RATE, hz=300.0)
    alone = frame_speech(torch.from_numpy(word), RATE, seconds=1.0)
    assert alone.shape[0] == RATE and alone.abs().max() == pytest.approx(float(np.abs(word).max()))
    for before, after in ((RATE, 2 * RATE), (7, 12345), (0, RATE // 3)):
        take = np.concatenate([np.zeros(before), word, np.zeros(after)]).astype(np.float32)
        torch.testing.assert_close(frame_speech(torch.from_numpy(take), RATE, seconds=1.0), alone, atol=0, rtol=0)


def test_frame_speech_keeps_the_loudest_window_of_a_long_take():
    quiet, loud = 0.05 * tone(2.0, RATE, hz=300.0), tone(0.6, RATE, hz=500.0)
    take = torch.from_numpy(np.concatenate([quiet, loud, quiet]).astype(np.float32))
    framed = frame_speech(take, RATE, seconds=1.0)
    assert framed.shape[0] == RATE  # one training clip's length
    # The loud part lies inside the window: its energy is all there.
    assert float(framed.pow(2).sum()) >= float((loud.astype(np.float64) ** 2).sum())


def test_frame_speech_leaves_silence_alone():
    silence = torch.zeros(RATE)
    assert torch.equal(frame_speech(silence, RATE, seconds=1.0), silence)


def test_wideband_input_is_brought_to_the_training_band():
    """An 8 kHz-trained model reads 8 kHz, 16 kHz and 48 kHz recordings of one sound alike."""
    pre = AudioPreprocess(band_hz=4000.0, min_seconds=1.0, speech_only=True, frame_multiple=8)
    full_band = AudioPreprocess(min_seconds=1.0, speech_only=True, frame_multiple=8)
    voice = {rate: tone(0.5, rate, hz=600.0) for rate in (8000, 16000, 48000)}
    # Wideband recordings also hold energy above 4 kHz, which 8 kHz training recordings cannot.
    hiss = {rate: voice[rate] + tone(0.5, rate, hz=6000.0, amplitude=0.2) for rate in (16000, 48000)}
    reference = audio_to_tensor(voice[8000], 8000, pre)[0]
    voice_bins, above_4khz = slice(0, 64), slice(100, None)  # below ~2 kHz; above ~5 kHz at 16 kHz, 128 bins
    for rate, clip in hiss.items():
        banded, unbanded = audio_to_tensor(clip, rate, pre)[0], audio_to_tensor(clip, rate, full_band)[0]
        assert (banded - reference)[:, voice_bins].abs().mean() < 0.05
        assert (banded - reference)[:, above_4khz].abs().mean() < 0.05  # as empty as training's
        assert (unbanded - reference)[:, above_4khz].abs().mean() > 0.5


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 8000])
def test_a_stream_resampled_chunk_by_chunk_gives_the_samples_of_the_whole(rate):
    from effviz.data.audio import StreamResampler, _resample

    wave = torch.from_numpy(np.random.default_rng(rate).normal(0, 0.1, 2 * rate).astype(np.float32))
    whole = _resample(wave, rate, 8000)
    resampler, pieces, start = StreamResampler(rate, 8000), [], 0
    for size in [1, 700, 33, 9000, 441, 12000, 5, 30000]:
        pieces.append(resampler.push(wave[start:start + size]))
        start += size
    pieces.append(resampler.push(wave[start:]))
    streamed = torch.cat(pieces)
    # All but the last block and filter width (at most ~11 ms), which wait for input that never comes.
    assert whole.shape[0] - streamed.shape[0] <= (resampler.new * (resampler.orig + resampler.width)) // resampler.orig + resampler.new
    torch.testing.assert_close(streamed, whole[: streamed.shape[0]], rtol=0, atol=1e-6)


def test_to_mono_converts_a_chunk_as_prepare_waveform_does_without_padding():
    from effviz.data.audio import to_mono

    stereo = np.array([[16384, 0], [-32768, 32767], [0, 0]], dtype=np.int16)
    assert to_mono(stereo, 48000).tolist() == pytest.approx([0.25, -0.5 + 32767 / 65536, 0.0])
    with pytest.raises(ValueError, match="outside the supported"):
        to_mono(stereo, 1000)
