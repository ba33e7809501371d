"""Training-time corruption of spoken-word clips: what a visitor's microphone, room and voice do
to a word that four FSDD speakers never did.

On the waveform (one 1 s training clip at a time, all in torch):
- speed perturbation (tempo and pitch together, x0.9-1.1, as Kaldi's recipes perturb speed);
- gain (+-10 dB) and a random position in the window;
- room reverberation: a bank of impulse responses of shoebox rooms (pyroomacoustics' image
  source method, RT60 0.15-0.8 s, random sizes and positions);
- microphone EQ (a smooth random gain curve over frequency, +-6 dB) or a telephone band
  (300-3400 Hz);
- additive white, pink or brown noise at 0-30 dB SNR.
On the log-mel features:
- vocal-tract-length perturbation (VTLP): the mel axis warped by x0.9-1.1 inside the band the
  training recordings fill, so formants move as they do between speakers;
- SpecAugment: two frequency masks and two time masks.

And the "no digit" class's sounds that are not words (:func:`no_digit_sound`): silence, noise of
every colour and level, bursts, tones and chords.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torchaudio.functional as audio_functional

from ..models.releases import AudioPreprocess
from .audio import fbank, fit_length, frame_speech

RIR_COUNT = 48


def room_impulse_responses(sample_rate: int, count: int = RIR_COUNT, seed: int = 0) -> list[torch.Tensor]:
    """``count`` impulse responses of random shoebox rooms (3-10 x 3-8 x 2.4-4 m, RT60 0.15-0.8 s),
    source and microphone anywhere at least 0.5 m from the walls; each scaled so that its direct
    path has unit amplitude. Deterministic for a seed (pyroomacoustics' image source method
    without randomisation)."""
    import pyroomacoustics as pra  # a training dependency only

    rng = np.random.default_rng(seed)
    responses = []
    for _ in range(count):
        size = rng.uniform([3, 3, 2.4], [10, 8, 4])
        absorption, order = pra.inverse_sabine(rng.uniform(0.15, 0.8), size)
        room = pra.ShoeBox(size, fs=sample_rate, materials=pra.Material(absorption), max_order=min(order, 40))
        room.add_source(rng.uniform(0.5, size - 0.5))
        room.add_microphone(rng.uniform(0.5, size - 0.5))
        room.compute_rir()
        rir = torch.from_numpy(np.asarray(room.rir[0][0], dtype=np.float32))
        responses.append(rir / rir.abs().max())
    return responses


class SpeechAugment:
    """Fixed-length fbank features of a clip, corrupted at random during training (module
    docstring); ``gen=None`` gives the clean features evaluation and inference see."""

    def __init__(self, pre: AudioPreprocess, seconds: float, rirs: list[torch.Tensor]):
        self.pre = pre
        self.length = int(round(seconds * pre.sample_rate))
        self.rirs = rirs
        # The highest mel bin the training recordings fill (their band is pre.band_hz).
        mel_top = 1127 * math.log1p((pre.band_hz or pre.sample_rate / 2) / 700)
        self.band_bins = int(pre.mel_bins * mel_top / (1127 * math.log1p(pre.sample_rate / 2 / 700)))

    def features(self, wave: torch.Tensor, gen: torch.Generator | None, snr_db: float | None = None) -> torch.Tensor:
        """(samples,) at ``pre.sample_rate`` -> (frames, mel). With ``gen``, random corruption; with
        ``snr_db`` too, white noise at that SNR in place of the random noise."""
        if gen is None:
            return fbank(fit_length(wave[: self.length], self.length), self.pre)
        return self.perturb(self.corrupt(wave, gen, snr_db), gen)

    def corrupt(self, wave: torch.Tensor, gen: torch.Generator, snr_db: float | None = None) -> torch.Tensor:
        """The waveform half of the augmentation, then the features: the costly half (a few ms a clip)."""
        if chance(gen, 0.6):
            factor = uniform(gen, 0.9, 1.1)
            wave = audio_functional.resample(wave, int(self.pre.sample_rate * factor) // 100, self.pre.sample_rate // 100)
        wave = fit_length(wave[: self.length] * 10 ** uniform(gen, -0.5, 0.5), self.length, gen)
        if chance(gen, 0.3):
            wave = reverberate(wave, self.rirs[int(torch.randint(len(self.rirs), (), generator=gen))])
        if chance(gen, 0.15):
            wave = equalise(wave, self.pre.sample_rate, telephone_band(wave.shape[0], self.pre.sample_rate))
        elif chance(gen, 0.5):
            wave = equalise(wave, self.pre.sample_rate, random_eq(wave.shape[0], self.pre.sample_rate, gen))
        if snr_db is not None:
            wave = add_noise(wave, snr_db, gen)
        elif chance(gen, 0.5):
            wave = add_noise(wave, uniform(gen, 0, 30), gen, colour=float(torch.randint(3, (), generator=gen)))
        return fbank(wave, self.pre)

    def perturb(self, features: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The feature half: VTLP and SpecAugment (cheap)."""
        if chance(gen, 0.5):
            features = warp_vocal_tract(features, uniform(gen, 0.9, 1.1), self.band_bins)
        return spec_augment(features, gen, self.band_bins)


def chance(gen: torch.Generator, p: float) -> bool:
    """True with probability ``p``, drawn from ``gen``."""
    return bool(torch.rand((), generator=gen) < p)


def uniform(gen: torch.Generator, low: float, high: float) -> float:
    """A float drawn uniformly from [low, high) by ``gen``."""
    return low + (high - low) * float(torch.rand((), generator=gen))


def reverberate(wave: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """``wave`` heard in a room: convolved with ``rir``, cut to its length, at its peak level."""
    wet = audio_functional.fftconvolve(wave, rir)[: wave.shape[0]]
    return wet * (wave.abs().max() / wet.abs().max().clamp_min(1e-9))


def random_eq(num_samples: int, sample_rate: int, gen: torch.Generator) -> torch.Tensor:
    """A smooth random gain curve over the rfft bins (a microphone's colour): four cosines over
    the band, +-6 dB at most."""
    f = torch.linspace(0, 1, num_samples // 2 + 1)
    db = sum(uniform(gen, -1.5, 1.5) * torch.cos(math.pi * k * f + uniform(gen, 0, math.pi)) for k in range(1, 5))
    return 10 ** (db / 20)


def telephone_band(num_samples: int, sample_rate: int) -> torch.Tensor:
    """A telephone's 300-3400 Hz band: unit gain inside, -30 dB outside, half-octave slopes."""
    f = torch.fft.rfftfreq(num_samples, 1 / sample_rate).clamp_min(1.0)
    below = (torch.log2(f / 300) * 2).clamp(-1, 0)  # -1 one half-octave under 300 Hz
    above = (torch.log2(3400 / f) * 2).clamp(-1, 0)
    return 10 ** (30 * (below + above).clamp_min(-1) / 20)


def equalise(wave: torch.Tensor, sample_rate: int, gain: torch.Tensor) -> torch.Tensor:
    return torch.fft.irfft(torch.fft.rfft(wave) * gain, n=wave.shape[0])


def coloured_noise(num_samples: int, colour: float, gen: torch.Generator | None) -> torch.Tensor:
    """Unit-RMS noise whose power falls as 1/f**colour: 0 white, 1 pink, 2 brown."""
    spectrum = torch.fft.rfft(torch.randn(num_samples, generator=gen))
    f = torch.arange(spectrum.shape[0]).clamp_min(1).float()
    noise = torch.fft.irfft(spectrum / f ** (colour / 2), n=num_samples)
    return noise / noise.pow(2).mean().sqrt().clamp_min(1e-12)


def add_noise(wave: torch.Tensor, snr_db: float, gen: torch.Generator | None = None, colour: float = 0.0) -> torch.Tensor:
    """Noise at a signal-to-noise ratio measured over the voiced part of the clip."""
    power = wave.pow(2)
    signal = power[power > power.max() * 1e-3].mean() if power.max() > 0 else power.new_tensor(1e-6)
    return wave + coloured_noise(wave.shape[0], colour, gen) * torch.sqrt(signal / 10 ** (snr_db / 10))


def warp_vocal_tract(features: torch.Tensor, factor: float, band_bins: int) -> torch.Tensor:
    """VTLP on log-mel features: bins below ``band_bins`` read from ``bin / factor`` (linear
    interpolation, clamped to the band), so a factor above 1 moves formants up."""
    source = (torch.arange(band_bins, dtype=torch.float32) / factor).clamp(max=band_bins - 1)
    low = source.floor().long()
    high = (low + 1).clamp(max=band_bins - 1)
    weight = source - low
    warped = features.clone()
    warped[:, :band_bins] = features[:, low] * (1 - weight) + features[:, high] * weight
    return warped


def spec_augment(features: torch.Tensor, gen: torch.Generator, band_bins: int,
                 freq_width: int = 12, time_width: int = 10) -> torch.Tensor:
    """Two frequency masks (up to ``freq_width`` bins, inside the band) and two time masks (up to
    ``time_width`` frames), set to the clip's mean."""
    out = features.clone()
    fill = features.mean()
    frames = features.shape[0]
    for _ in range(2):
        width = int(torch.randint(freq_width + 1, (), generator=gen))
        start = int(torch.randint(max(band_bins - width, 1), (), generator=gen))
        out[:, start:start + width] = fill
        width = int(torch.randint(time_width + 1, (), generator=gen))
        start = int(torch.randint(max(frames - width, 1), (), generator=gen))
        out[start:start + width] = fill
    return out


def no_digit_sound(num_samples: int, sample_rate: int, gen: torch.Generator) -> torch.Tensor:
    """A clip with no word in it, framed as inference frames a clip (:func:`frame_speech`):
    digital silence, steady or bursty noise of any colour, or tones and chords, at -70 to -6 dBFS."""
    kind = int(torch.randint(5, (), generator=gen))
    if kind == 0:
        return torch.zeros(num_samples)
    level = 10 ** (uniform(gen, -70, -6) / 20)
    t = torch.arange(num_samples) / sample_rate
    if kind in (1, 2):  # steady (1) or bursts of (2) noise
        sound = coloured_noise(num_samples, uniform(gen, 0, 2), gen)
        if kind == 2:
            rate = uniform(gen, 0.5, 6)
            sound = sound * (torch.sin(2 * math.pi * rate * t + uniform(gen, 0, 6.3)) > uniform(gen, -0.5, 0.8))
    else:  # a tone (3) or a chord (4), with harmonics and a slow envelope
        sound = torch.zeros(num_samples)
        for _ in range(1 if kind == 3 else int(torch.randint(2, 5, (), generator=gen))):
            pitch = 55 * 2 ** uniform(gen, 0, 5)
            for harmonic in range(1, int(torch.randint(1, 6, (), generator=gen)) + 1):
                if pitch * harmonic < sample_rate / 2:
                    sound += torch.sin(2 * math.pi * pitch * harmonic * t + uniform(gen, 0, 6.3)) / harmonic
        sound = sound * torch.sin(math.pi * (t / t[-1]) ** uniform(gen, 0.3, 3)).clamp_min(0)
        sound = sound / sound.pow(2).mean().sqrt().clamp_min(1e-12)
    sound = (sound * level).clamp(-1, 1)
    return frame_speech(sound, sample_rate, num_samples / sample_rate)
