"""Spoken digits in synthetic voices (espeak-ng), to widen the four real FSDD training speakers.

A speaker-independent model trained on four people learns their voices as much as the words.
espeak-ng speaks English with many accents and voice variants; drawing accent, variant, pitch and
speed at random gives hundreds of distinct (if robotic) "speakers" of the same ten words. Half of
the voices are passed through 8 kHz, the rate of the FSDD recordings, so that the synthetic set
covers both the band-limited real data and the full band a microphone gives.

The voice behind the UI's example clips (plain ``en-us`` at 140 words/min, see
``effviz.ui.examples``) is never drawn, so those examples stay unseen by the models.
"""
from __future__ import annotations

import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as audio_functional

from .audio import read_audio

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en-us", "en-gb", "en-029", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-us-nyc")
# Human-sounding variants of espeak-ng's voice set (its robot and effect voices are left out).
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
            "klatt3", "klatt4", "adam", "alicia", "andrea", "andy", "annie", "anika", "aunty", "belinda",
            "benjamin", "boris", "caleb", "david", "ed", "edward", "gene", "grandma", "grandpa", "iven",
            "john", "linda", "max", "michel", "norbert", "paul", "quincy", "rob", "robert", "shelby",
            "steph", "travis", "victor", "whisper", "zac")
FSDD_RATE = 8_000


@dataclass(frozen=True)
class Voice:
    accent: str
    variant: str
    pitch: int  # espeak-ng -p, 0..99 (50 is the voice's own)
    speed: int  # espeak-ng -s, words per minute
    band_limited: bool  # passed through 8 kHz like the FSDD recordings

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant} p{self.pitch} s{self.speed}{' 8k' if self.band_limited else ''}"


def draw_voices(count: int, seed: int) -> list[Voice]:
    """``count`` distinct random voices, the same for the same seed."""
    rng = random.Random(seed)
    voices: set[Voice] = set()
    while len(voices) < count:
        voices.add(Voice(rng.choice(ACCENTS), rng.choice(VARIANTS), rng.randint(20, 80), rng.randint(110, 210),
                         rng.random() < 0.5))
    return sorted(voices, key=lambda v: v.name)


def speak(word: str, voice: Voice, sample_rate: int) -> torch.Tensor:
    """One word in one voice: a mono float waveform at ``sample_rate``."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("synthetic speech needs the espeak-ng program (Debian/Ubuntu: apt install espeak-ng)")
    wav = subprocess.run(
        ["espeak-ng", "-v", f"{voice.accent}+{voice.variant}", "-p", str(voice.pitch), "-s", str(voice.speed),
         "--stdout", word],
        check=True, capture_output=True,
    ).stdout
    samples, rate = read_audio(wav)
    wave = torch.from_numpy(samples)
    if voice.band_limited:
        wave = audio_functional.resample(wave, rate, FSDD_RATE)
        rate = FSDD_RATE
    return audio_functional.resample(wave, rate, sample_rate)


def synthetic_digits(num_voices: int, sample_rate: int, seed: int = 0) -> list[tuple[torch.Tensor, int, str]]:
    """Every digit word in ``num_voices`` random voices: ``(waveform, digit, voice name)`` items,
    silence trimmed as FSDD's clips are."""
    jobs = [(digit, voice) for voice in draw_voices(num_voices, seed) for digit in range(10)]
    # espeak-ng is a separate process per word: a few threads keep both cores busy.
    with ThreadPoolExecutor(max_workers=4) as pool:
        waves = list(pool.map(lambda job: speak(DIGIT_WORDS[job[0]], job[1], sample_rate), jobs))
    return [(trim_silence(w), digit, voice.name) for w, (digit, voice) in zip(waves, jobs)]


def trim_silence(wave: torch.Tensor, level: float = 0.02, margin: int = 800) -> torch.Tensor:
    """Cut leading and trailing samples quieter than ``level`` x the peak, keeping ``margin``."""
    loud = np.flatnonzero(wave.abs().numpy() > level * float(wave.abs().max()))
    if len(loud) == 0:
        return wave
    return wave[max(int(loud[0]) - margin, 0): int(loud[-1]) + margin + 1]
