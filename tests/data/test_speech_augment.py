"""The speech recipe's corruptions do what their names say, measured on the signals they make."""
from __future__ import annotations

import math

import pytest
import torch

from effviz.data import speech_augment as aug
from effviz.data.audio import speech_span
from effviz.models.releases import AudioPreprocess

RATE = 16000


def tone(freq: float, seconds: float = 1.0, amplitude: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(seconds * RATE)) / RATE
    return amplitude * torch.sin(2 * math.pi * freq * t)


def band_power(wave: torch.Tensor, low: float, high: float) -> float:
    spectrum = torch.fft.rfft(wave).abs().pow(2)
    f = torch.fft.rfftfreq(wave.shape[0], 1 / RATE)
    return float(spectrum[(f >= low) & (f < high)].sum())


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 30.0])
@pytest.mark.parametrize("colour", [0.0, 1.0, 2.0])
def test_noise_lands_at_the_asked_snr_over_the_voiced_part(snr_db, colour):
    word = torch.cat([tone(440, 0.5), torch.zeros(RATE // 2)])  # the silent half does not dilute the SNR
    noisy = aug.add_noise(word, snr_db, torch.Generator().manual_seed(0), colour=colour)
    measured = 10 * math.log10(word[: RATE // 2].pow(2).mean() / (noisy - word).pow(2).mean())
    assert measured == pytest.approx(snr_db, abs=0.2)  # the tone's zero crossings do not count as voiced


def test_noise_colours_tilt_the_spectrum():
    gen = torch.Generator().manual_seed(0)
    ratios = []
    for colour in (0.0, 1.0, 2.0):
        noise = aug.coloured_noise(RATE, colour, gen)
        ratios.append(band_power(noise, 100, 1000) / band_power(noise, 4000, 8000))
    assert ratios[0] < 0.5 < 1 < ratios[1] < ratios[2]  # white: 900 Hz vs 4 kHz of band; pink, brown: lows


def test_telephone_band_keeps_speech_frequencies_and_cuts_the_rest():
    gain = aug.telephone_band(RATE, RATE)
    f = torch.fft.rfftfreq(RATE, 1 / RATE)
    assert torch.allclose(gain[(f >= 300) & (f <= 3400)], torch.ones(1))
    assert torch.allclose(gain[(f < 150) | (f > 6800)], torch.tensor(10 ** (-30 / 20)))
    wave = tone(1000) + tone(6000)
    out = aug.equalise(wave, RATE, gain)
    assert band_power(out, 900, 1100) == pytest.approx(band_power(wave, 900, 1100), rel=1e-3)
    assert band_power(out, 5900, 6100) < 1e-2 * band_power(wave, 5900, 6100)


def test_random_eq_stays_within_six_db():
    gain = aug.random_eq(RATE, RATE, torch.Generator().manual_seed(3))
    db = 20 * torch.log10(gain)
    assert db.abs().max() <= 6.0 and db.std() > 0.5


def test_reverberation_keeps_length_and_peak_and_adds_a_tail():
    click = torch.zeros(RATE)
    click[100] = 0.5
    rir = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.25])
    wet = aug.reverberate(click, rir)
    assert wet.shape == click.shape and float(wet.abs().max()) == pytest.approx(0.5)
    assert float(wet[103]) == pytest.approx(0.25) and float(wet[104]) == pytest.approx(0.125)


def test_room_impulse_responses_are_deterministic_rooms():
    first = aug.room_impulse_responses(RATE, count=3, seed=1)
    again = aug.room_impulse_responses(RATE, count=3, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    for rir in first:
        assert float(rir.abs().max()) == pytest.approx(1.0) and rir.shape[0] > RATE // 100  # a tail of echoes


def test_vtlp_moves_a_formant_by_its_factor_inside_the_band():
    features = torch.zeros(10, 128)
    features[:, 40] = 1.0
    warped = aug.warp_vocal_tract(features, 1.1, band_bins=96)
    assert int(warped[0].argmax()) == 44  # bin 44 reads from 44 / 1.1 = 40
    assert torch.equal(warped[:, 96:], features[:, 96:])
    assert torch.equal(aug.warp_vocal_tract(features, 1.0, band_bins=96), features)


def test_spec_augment_masks_at_most_its_widths_inside_the_band():
    features = torch.randn(104, 128)
    out = aug.spec_augment(features, torch.Generator().manual_seed(0), band_bins=96, freq_width=12, time_width=10)
    changed_bins = (out != features).any(0).nonzero().flatten()
    changed_frames = (out != features).all(1).sum()
    assert changed_bins.numel() <= 2 * 12 + 104 and int(changed_frames) <= 2 * 10
    assert torch.equal(out[:, 96:][~(out != features).any(1)], features[:, 96:][~(out != features).any(1)])


def test_no_digit_sounds_are_framed_one_second_clips_of_every_kind():
    gen = torch.Generator().manual_seed(0)
    sounds = [aug.no_digit_sound(RATE, RATE, gen) for _ in range(60)]
    assert all(s.shape == (RATE,) and s.abs().max() <= 1 for s in sounds)
    silent = [s for s in sounds if s.abs().max() == 0]
    assert 3 <= len(silent) <= 25  # one kind in five is digital silence
    levels = [20 * math.log10(float(s.abs().max())) for s in sounds if s.abs().max() > 0]
    assert min(levels) < -40 and max(levels) > -15
    for s in sounds:  # framed as inference frames: the sound's span is centred
        span = speech_span(s, RATE)
        if span is not None:
            assert abs((span[0] + span[1]) / 2 - RATE / 2) < RATE * 0.05


def test_clean_features_are_inference_features_and_training_features_vary():
    pre = AudioPreprocess(sample_rate=RATE, band_hz=4000.0, min_seconds=1.0, speech_only=True, frame_multiple=8)
    augment = aug.SpeechAugment(pre, 1.0, rirs=[torch.tensor([1.0, 0.0, 0.3])])
    assert augment.band_bins == 96
    word = tone(500, 0.4)
    clean = augment.features(word, None)
    assert torch.equal(clean, augment.features(word, None))
    gen = torch.Generator().manual_seed(0)
    noisy = [augment.features(word, gen) for _ in range(4)]
    assert all(n.shape == clean.shape for n in noisy)
    assert all(not torch.equal(a, b) for a, b in zip(noisy, noisy[1:]))
