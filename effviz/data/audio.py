"""Audio input: decode a sound file, bring any waveform to the model's rate, and turn it into the
log-mel filterbank (fbank) features that AST-style audio models read.

Decoding uses ``soundfile`` (libsndfile): torchaudio's own loaders need torchcodec, which effviz
does not install. torchaudio is used for resampling and for Kaldi-compatible fbank features.
"""
from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as audio_functional
from torchaudio.functional.functional import _get_sinc_resample_kernel  # the kernel resample() uses; torchaudio is pinned

from ..models.releases import AudioPreprocess

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 32
DEFAULT_MAX_SECONDS = 30.0
MAX_FLOAT_SAMPLE = 2.0**31  # int32 full scale; see _to_float
# Kaldi fbank framing used by AST and effviz: 25 ms windows every 10 ms.
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
# The audio patch of every effviz model spans 16 frames: a clip must yield at least that many.
MIN_FRAMES = 16
# torchaudio's resampler builds a (new, old) polyphase filter from the rates divided by their
# gcd; for a rate like 8001 Hz against 16000 Hz that is 8001 x 16000 floats. Above this many
# entries the source rate is rounded to a multiple of RATE_ROUNDING_HZ first.
MAX_RESAMPLE_FILTER = 1_000_000
RATE_ROUNDING_HZ = 100


def read_audio(data: bytes | str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a sound file (WAV, FLAC, OGG/Vorbis, and whatever else libsndfile reads here).

    Returns ``(samples, sample_rate)``: float32 in [-1, 1], shape ``(n,)`` for mono or
    ``(n, channels)``. With ``max_seconds``, a longer file is refused from its header, before
    its samples are decoded. Raises ``ValueError`` for an empty file, a file that is not audio in
    a readable format (the message lists the formats), a file with no samples, or one too long;
    ``FileNotFoundError`` for a missing path.
    """
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    if len(data) == 0:
        raise ValueError("cannot read the audio: the file is empty (0 bytes)")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            if max_seconds is not None:
                _check_duration(sound.frames, sound.samplerate, max_seconds)
            samples = sound.read(dtype="float32", always_2d=False)
            sample_rate = sound.samplerate
    except soundfile.SoundFileError as err:
        formats = ", ".join(sorted(soundfile.available_formats()))
        reason = getattr(err, "error_string", err)  # libsndfile's words, without the BytesIO repr
        container = _sniff_container(data)
        if container is not None:
            raise ValueError(
                f"cannot read the audio: this looks like {container}, and this machine's libsndfile "
                f"({soundfile.__libsndfile_version__}) has no decoder for it ({reason}). Convert it to "
                f"WAV, FLAC or OGG. Readable formats: {formats}"
            ) from err
        raise ValueError(
            f"cannot read the audio: not a sound file in a format this machine reads ({reason}). "
            f"Readable formats: {formats}"
        ) from err
    if samples.shape[0] == 0:
        raise ValueError("cannot read the audio: the file contains no samples")
    return samples, sample_rate


def _sniff_container(data: bytes) -> str | None:
    """Name the compressed format of ``data`` from its first bytes, for formats libsndfile may
    lack (MP3 needs libsndfile >= 1.1 built with mpg123; AAC and WebM it never reads)."""
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and data[1] & 0x06):
        return "an MP3 file"
    if data[4:8] == b"ftyp":
        return "an MP4/M4A (AAC) file"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "a WebM/Matroska file"
    return None


def prepare_waveform(audio: np.ndarray, sample_rate: int, target_rate: int, max_seconds: float) -> torch.Tensor:
    """A mono float32 waveform at ``target_rate``, shape ``(samples,)``, from any decoded audio.

    ``audio`` is 1-D (mono) or 2-D ``(samples, channels)``; ``(channels, samples)`` is recognised
    too when it has at most 8 rows and more columns than rows. Integer samples (int8/16/32,
    uint8) are scaled to [-1, 1]; channels are averaged. NaN/inf samples are set to 0, and a clip
    made only of them is refused. A clip shorter than one fbank patch (``MIN_FRAMES`` frames,
    about 0.175 s) is zero-padded at the end to that length, so every clip yields a model input.

    Raises ``ValueError`` for a sample rate outside [8000, 384000] Hz, a clip longer than
    ``max_seconds`` (checked from its length before any conversion: never silently cut), an
    empty clip, float samples beyond ``MAX_FLOAT_SAMPLE`` (±2**31), or an unusable shape or dtype.
    """
    sample_rate = _check_rate(sample_rate)
    audio = _by_channel(audio)
    _check_duration(audio.shape[0], sample_rate, max_seconds)
    waveform = _resample(_mix_down(audio), sample_rate, target_rate)

    window = round(target_rate * FRAME_LENGTH_MS / 1000)
    shift = round(target_rate * FRAME_SHIFT_MS / 1000)
    min_samples = window + (MIN_FRAMES - 1) * shift
    if waveform.shape[0] < min_samples:
        waveform = torch.nn.functional.pad(waveform, (0, min_samples - waveform.shape[0]))
    return waveform


def to_mono(audio: np.ndarray, sample_rate: int) -> torch.Tensor:
    """A mono float32 waveform at its own rate, checked and converted as :func:`prepare_waveform`
    does, but neither resampled nor padded: for the chunks of a stream (see :class:`StreamResampler`)."""
    _check_rate(sample_rate)
    return _mix_down(_by_channel(audio))


def _check_rate(sample_rate: int) -> int:
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ValueError(
            f"sample_rate {sample_rate} Hz is outside the supported {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
        )
    return int(sample_rate)  # 44100.0 from some decoders


def _by_channel(audio: np.ndarray) -> np.ndarray:
    """``audio`` as (samples, channels), its shape and channel count checked."""
    audio = np.asarray(audio)
    if audio.size == 0:
        raise ValueError("audio contains no samples")
    if audio.ndim == 1:
        audio = audio[:, None]
    elif audio.ndim == 2:
        rows, cols = audio.shape
        if rows <= 8 and cols > rows:
            # (channels, samples), as torchaudio and librosa lay audio out. A (samples, channels)
            # array has more rows than columns unless it holds at most 8 samples, which would be
            # padded to silence anyway.
            audio = audio.T
    else:
        raise ValueError(f"audio must be 1-D (samples,) or 2-D (samples, channels), got shape {audio.shape}")
    if audio.shape[1] > MAX_CHANNELS:
        raise ValueError(f"audio has {audio.shape[1]} channels (at most {MAX_CHANNELS} are accepted)")
    return audio


def _mix_down(audio: np.ndarray) -> torch.Tensor:
    """(samples, channels) of any supported dtype -> mono float32, NaN/inf set to 0."""
    samples = _to_float(audio)
    finite = np.isfinite(samples)
    if not finite.any():
        raise ValueError("audio contains only NaN/inf")
    if not finite.all():
        samples = np.where(finite, samples, 0.0).astype(np.float32)
    return torch.from_numpy(samples.mean(axis=1, dtype=np.float32))


def _check_duration(num_samples: int, sample_rate: int, max_seconds: float) -> None:
    seconds = num_samples / sample_rate
    if seconds > max_seconds:
        raise ValueError(f"the audio is {seconds:.1f} s long; the limit is {max_seconds:g} s (cut it shorter)")


def _to_float(audio: np.ndarray) -> np.ndarray:
    if audio.dtype.kind == "f":
        # Float audio lies in [-1, 1]. Integer-scaled floats (up to +-2**31) still work, but much
        # larger values overflow float32 in the channel average, the resampler and fbank's power
        # spectrum, and every probability would come out NaN.
        peak = float(np.max(np.abs(audio), where=np.isfinite(audio), initial=0.0))
        if peak > MAX_FLOAT_SAMPLE:
            raise ValueError(
                f"audio samples reach {peak:.3g}: float audio should lie in [-1, 1] "
                f"(at most {MAX_FLOAT_SAMPLE:.3g} is accepted)"
            )
        return audio.astype(np.float32)
    if audio.dtype.kind in "iu":
        full_scale = np.float32(2.0 ** (8 * audio.dtype.itemsize - 1))
        samples = audio.astype(np.float32)
        if audio.dtype.kind == "u":  # unsigned PCM (8-bit WAV): silence is mid-range, not 0
            samples -= full_scale
        return samples / full_scale
    raise ValueError(f"audio dtype {audio.dtype} is not supported (use float, int16/int32 or uint8)")


def _resample(waveform: torch.Tensor, sample_rate: int, target_rate: int) -> torch.Tensor:
    if sample_rate == target_rate:
        return waveform
    ratio = _resample_ratio(sample_rate, target_rate)
    return audio_functional.resample(waveform, ratio.numerator, ratio.denominator)


def _resample_ratio(sample_rate: int, target_rate: int) -> Fraction:
    """Input samples to output samples, reduced by the gcd as torchaudio does."""
    ratio = Fraction(sample_rate, target_rate)
    if ratio.numerator * ratio.denominator > MAX_RESAMPLE_FILTER:
        # A pitch change under 0.7 % (50 Hz at 8 kHz) instead of a filter of gigabytes.
        ratio = Fraction(round(sample_rate / RATE_ROUNDING_HZ) * RATE_ROUNDING_HZ, target_rate)
    return ratio


class StreamResampler:
    """:func:`_resample` of a stream: ``push`` the next samples, get the output samples now final.

    torchaudio's resampler is a polyphase sinc filter: output block ``b`` (``new`` samples) is one
    dot product per phase with the input samples ``[b*orig - width, b*orig + orig + width)``, the
    whole recording zero-padded by ``width`` at its start. This class keeps that padding and the
    input from the next block's window on, and computes a block once its window has arrived, with
    torchaudio's own kernel: the samples are those of resampling the whole recording at once. A
    stream that stops leaves its last ``orig + width`` input samples (about 10 ms at 44.1 kHz, 1 ms
    at 48 kHz, into 8 kHz) unresampled, where the whole recording's end would be zero-padded.
    """

    def __init__(self, sample_rate: int, target_rate: int):
        self.sample_rate, self.target_rate = sample_rate, target_rate
        ratio = _resample_ratio(sample_rate, target_rate)
        self.orig, self.new = ratio.numerator, ratio.denominator
        self.kernel, self.width = None, 0
        if self.orig != self.new:  # as resample(), which returns an input of equal rates unchanged
            self.kernel, self.width = _get_sinc_resample_kernel(self.orig, self.new, 1, dtype=torch.float32)
        self.pending = torch.zeros(self.width)  # from the next block's window start on

    def push(self, samples: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            return samples.float()
        self.pending = torch.cat([self.pending, samples.float()])
        span = self.orig + 2 * self.width
        blocks = (self.pending.shape[0] - span) // self.orig + 1
        if blocks <= 0:
            return torch.zeros(0)
        window = self.pending[: (blocks - 1) * self.orig + span]
        out = torch.nn.functional.conv1d(window[None, None], self.kernel, stride=self.orig)  # (1, new, blocks)
        self.pending = self.pending[blocks * self.orig:]
        return out[0].T.reshape(-1)


def fbank(waveform: torch.Tensor, pre: AudioPreprocess) -> torch.Tensor:
    """Normalised log-mel filterbank ``(frames, pre.mel_bins)`` of a mono waveform at
    ``pre.sample_rate``, computed as AST computes it.

    The clip's mean is removed, the samples are multiplied by ``pre.wave_scale``, Kaldi fbank
    features are taken (Hanning window, 25 ms every 10 ms, no dither, HTK-compatible), and
    normalised as ``(x - fbank_mean) / (2 * fbank_std)``.
    Then the frames are framed as ``pre.padding`` says:
    - "centre": padded at the end up to a multiple of ``pre.frame_multiple`` with the clip's
      smallest value, i.e. its quietest level, so that padding reads as silence rather than as
      the mid-level sound a 0 would be;
    - "end": zero frames appended *before* normalising, up to ``pre.max_frames`` (AST's code and
      HF's ASTFeatureExtractor).
    Either way, more than ``pre.max_frames`` frames (when set) are cut to that many.
    """
    if waveform.ndim != 1:
        raise ValueError(f"waveform must be 1-D (samples,), got shape {tuple(waveform.shape)}")
    window = round(pre.sample_rate * FRAME_LENGTH_MS / 1000)
    if waveform.shape[0] < window:
        raise ValueError(
            f"waveform has {waveform.shape[0]} samples, fewer than one {FRAME_LENGTH_MS:g} ms window "
            f"({window}); prepare_waveform pads short clips"
        )
    waveform = waveform.float()
    features = kaldi.fbank(
        ((waveform - waveform.mean()) * pre.wave_scale).unsqueeze(0),
        htk_compat=True,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=pre.mel_bins,
        dither=0.0,
        frame_length=FRAME_LENGTH_MS,
        frame_shift=FRAME_SHIFT_MS,
        sample_frequency=pre.sample_rate,
    )
    if pre.max_frames:
        features = features[: pre.max_frames]
    if pre.padding == "end":
        features = torch.nn.functional.pad(features, (0, 0, 0, pre.max_frames - features.shape[0]))
    features = (features - pre.fbank_mean) / (2 * pre.fbank_std)
    missing = -features.shape[0] % pre.frame_multiple
    if missing:
        padding = features.min().expand(missing, features.shape[1])
        features = torch.cat([features, padding])
    return features


def fit_length(waveform: torch.Tensor, num_samples: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad a clip shorter than ``num_samples`` to exactly that length, centred; with ``gen``,
    at a random offset instead (training's time-shift augmentation).

    A longer clip comes back unchanged: training cuts it to its fixed length first, inference
    keeps all of it (the position embedding resizes to any length).
    """
    room = num_samples - waveform.shape[0]
    if room < 0:
        return waveform
    # Drawn even when room is 0, so that training consumes the generator as it always has.
    offset = int(torch.randint(0, room + 1, (), generator=gen)) if gen is not None else room // 2
    return torch.nn.functional.pad(waveform, (offset, room - offset))


# Speech finding: the energy of every 25 ms stretch; one is voiced within SPEECH_RANGE_DB of the loudest.
SPEECH_RANGE_DB = 35.0


def speech_span(waveform: torch.Tensor, sample_rate: int) -> tuple[int, int] | None:
    """``(start, end)`` sample indices of the spoken part of a clip: from the first to the last 25 ms
    stretch within ``SPEECH_RANGE_DB`` of the loudest, found to the sample. None for a clip with no
    sound at all."""
    window = round(sample_rate * FRAME_LENGTH_MS / 1000)
    start, end, _ = _voiced(waveform, window)
    return None if start is None else (max(start - window, 0), min(end - window, waveform.shape[0]))


def _voiced(waveform: torch.Tensor, window: int) -> tuple[int | None, int | None, torch.Tensor]:
    """First and last voiced sample in the clip padded by ``window`` zeros each side, and the
    cumulative power of that padded clip."""
    # Stretches may reach past the clip's ends into silence, so that silence added around a take
    # finds the same spoken part.
    # No DC removal: a clip's mean moves with the silence around it (prepare_waveform's resampler
    # and fbank's per-frame offset removal deal with DC).
    extended = torch.nn.functional.pad(waveform.double(), (window, window))
    power = torch.cat([extended.new_zeros(1), extended.pow(2).cumsum(0)])
    energy = power[window:] - power[:-window]  # of the stretch starting at each sample of `extended`
    if float(energy.max()) <= 0:
        return None, None, power
    voiced = torch.nonzero(energy > energy.max() * 10 ** (-SPEECH_RANGE_DB / 10)).flatten()
    return int(voiced[0]), int(voiced[-1]) + window, power


def frame_speech(waveform: torch.Tensor, sample_rate: int, seconds: float) -> torch.Tensor:
    """A ``seconds`` window framed like a training clip: the clip's spoken part (:func:`speech_span`)
    centred in silence, as training centres its clips; when the spoken part is longer than
    ``seconds``, its ``seconds`` holding the most energy. Whatever surrounds the speech (silence,
    a quiet background) thus changes nothing. A clip with no sound at all comes back unchanged."""
    window, length = round(sample_rate * FRAME_LENGTH_MS / 1000), round(seconds * sample_rate)
    start, end, power = _voiced(waveform, window)  # in the padded clip's samples
    if start is None:
        return waveform
    if end - start <= length:
        first = start - (length - (end - start)) // 2
    else:  # the loudest window of the spoken part
        starts = torch.arange(start, end - length + 1)
        first = int(starts[(power[starts + length] - power[starts]).argmax()])
    # In the clip's samples: the window starts at `first`; of the clip it keeps the spoken part
    # only, in silence, as training clips are recordings cut to their speech and padded with zeros
    # (a near-silent background would read quite differently in the log-mel features).
    first, start, end = first - window, max(start - window, 0), min(end - window, waveform.shape[0])
    framed = waveform.new_zeros(length)
    keep_from, keep_to = max(start, first), min(end, first + length)
    framed[keep_from - first:keep_to - first] = waveform[keep_from:keep_to]
    return framed


def audio_to_tensor(
    audio: np.ndarray, sample_rate: int, pre: AudioPreprocess, max_seconds: float = DEFAULT_MAX_SECONDS
) -> torch.Tensor:
    """Model input ``(1, frames, pre.mel_bins)`` from decoded audio, framed as ``pre`` says:
    with ``pre.speech_only``, the spoken part found and framed in ``pre.min_seconds`` at the
    input's own rate (:func:`frame_speech`: so silence around a take changes no sample of what
    follows); then :func:`prepare_waveform` at ``pre.sample_rate`` (a wider input first at
    ``2 * pre.band_hz``, the rate of the training recordings: their band, and then the same
    resampling they had), centred in ``pre.min_seconds`` of silence when shorter (the clip
    length the model was trained on, framed as training frames its clips), then :func:`fbank`."""
    if pre.speech_only:
        waveform = frame_speech(prepare_waveform(audio, sample_rate, sample_rate, max_seconds), sample_rate, pre.min_seconds)
        audio = waveform.numpy()
    recorded_rate = int(2 * pre.band_hz)
    if pre.band_hz and sample_rate > recorded_rate:
        waveform = _resample(prepare_waveform(audio, sample_rate, recorded_rate, max_seconds), recorded_rate, pre.sample_rate)
    else:
        waveform = prepare_waveform(audio, sample_rate, pre.sample_rate, max_seconds)
    waveform = fit_length(waveform, int(round(pre.min_seconds * pre.sample_rate)))
    return fbank(waveform, pre).unsqueeze(0)
