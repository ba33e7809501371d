"""Connected-digit utterances ("four one five, nine two ...") built from isolated spoken digits:
what the streaming transcribers learn from and are measured on.

An utterance strings 1-15 digit clips (each cut to its spoken part) with random pauses between
them and silence around them. For training it is then corrupted as a visitor's microphone and
room would: per digit, speed (x0.9-1.1) and level (+-6 dB); over the whole utterance, a room
(reverberation), a microphone EQ or a telephone band, and on 40% of them coloured noise at 5-40
dB SNR. Test utterances stay clean, so their error rate measures the speaker, not the corruption.

Because the utterances are built here, where each digit ends is known to the sample: training
uses it as an alignment (see ``effviz.train_transcriber``).
"""
from __future__ import annotations

import torch
import torchaudio.functional as audio_functional

from .audio import speech_span
from .speech_augment import add_noise, chance, equalise, random_eq, reverberate, telephone_band, uniform

MAX_DIGITS = 15
PAUSE_SECONDS = (0.0, 0.5)  # between two digits
EDGE_SECONDS = (0.1, 0.8)  # silence before the first digit and after the last


def spoken_part(wave: torch.Tensor, rate: int) -> torch.Tensor:
    """The clip cut to its spoken part (``speech_span``); a clip with no sound stays whole."""
    span = speech_span(wave, rate)
    return wave if span is None else wave[span[0]:span[1]]


def connected_utterance(clips: list[tuple[torch.Tensor, int]], rate: int, gen: torch.Generator,
                        rirs: list[torch.Tensor] | None = None, max_digits: int = MAX_DIGITS
                        ) -> tuple[torch.Tensor, list[int], list[int]]:
    """A random string of 1-``max_digits`` of ``clips`` (spoken-part waveforms at ``rate``, with
    their digit), paused and framed in silence; corrupted when ``rirs`` is given (training), clean
    otherwise. Returns the waveform, its digits and the sample where each digit's clip ends."""
    count = int(torch.randint(1, max_digits + 1, (), generator=gen))
    picks = torch.randint(len(clips), (count,), generator=gen).tolist()
    corrupt = rirs is not None
    pieces, digits, ends = [_silence(rate, *EDGE_SECONDS, gen)], [], []
    for n, pick in enumerate(picks):
        wave, digit = clips[pick]
        if corrupt:
            if chance(gen, 0.5):
                factor = uniform(gen, 0.9, 1.1)
                wave = audio_functional.resample(wave, int(rate * factor) // 100, rate // 100)
            wave = wave * 10 ** (uniform(gen, -6, 6) / 20)
        if n:
            pieces.append(_silence(rate, *PAUSE_SECONDS, gen))
        pieces.append(wave)
        digits.append(digit)
        ends.append(sum(p.shape[0] for p in pieces))
    pieces.append(_silence(rate, *EDGE_SECONDS, gen))
    utterance = torch.cat(pieces)
    if corrupt:
        utterance = _corrupt(utterance, rate, gen, rirs)
    return utterance.clamp(-1, 1), digits, ends


def _silence(rate: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return torch.zeros(round(uniform(gen, low, high) * rate))


def _corrupt(wave: torch.Tensor, rate: int, gen: torch.Generator, rirs: list[torch.Tensor]) -> torch.Tensor:
    if chance(gen, 0.3):
        wave = reverberate(wave, rirs[int(torch.randint(len(rirs), (), generator=gen))])
    if chance(gen, 0.15):
        wave = equalise(wave, rate, telephone_band(wave.shape[0], rate))
    elif chance(gen, 0.5):
        wave = equalise(wave, rate, random_eq(wave.shape[0], rate, gen))
    # Noise on fewer than half: the others keep the recordings' own floor, as a clean recording of
    # a new speaker does, so the models do not learn to expect added noise under every voice.
    if chance(gen, 0.4):
        wave = add_noise(wave, uniform(gen, 5, 40), gen, colour=float(torch.randint(3, (), generator=gen)))
    return wave * 10 ** (uniform(gen, -10, 6) / 20)


def edit_distance(reference: list, hypothesis: list) -> int:
    """Levenshtein distance: the fewest substitutions, insertions and deletions between two sequences."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        diagonal, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ref != hyp))
    return row[-1]


def digit_error_rate(pairs: list[tuple[list, list]]) -> float:
    """Edit distance summed over (reference, hypothesis) pairs, over the reference digits."""
    total = sum(len(ref) for ref, _ in pairs)
    return sum(edit_distance(ref, hyp) for ref, hyp in pairs) / max(total, 1)
