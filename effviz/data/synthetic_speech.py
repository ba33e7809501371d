"""Words in synthetic voices from Debian's speech synthesisers, for the speech recipe.

Four or five real FSDD speakers are few for a speaker-independent model: it learns their voices
as much as the words. espeak-ng (many accents and voice variants), flite (five voices) and
festival (three English voices) add dozens of synthetic "speakers" of the ten digit words, and of
words that are not digits, the "no digit" class's speech.

The voices are split once and for all: ``TRAIN_VOICES`` speak in training; ``TEST_VOICES`` (the
espeak-ng voice variants ``default``, ``f2``, ``f3``, ``f4`` and ``m5``, none of which any training
voice uses) only in evaluation; ``CALIBRATION_VOICES`` (ten more variants) only to calibrate the
"no digit" answer. The same holds for words: ``TRAIN_WORDS``, ``TEST_WORDS`` and
``CALIBRATION_WORDS`` share none. Every clip is cut to its spoken part and brought to FSDD's 8 kHz, the band every speech model
reads (see ``AudioPreprocess.band_hz``): a synthetic voice then differs from a recorded one by its
voice, not by its bandwidth.

Synthesis takes about a minute for the whole corpus; the clips are cached in
``$EFFVIZ_CACHE/data`` (default ``~/.cache/effviz/data``), keyed by the voices and words.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import prepare_waveform, read_audio, speech_span
from .datasets import _cache_dir, _write_cache

RATE = 8000  # FSDD's rate: synthetic clips take the band of the recordings
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Words that are not digits. Homophones of a digit ("won", "to", "for", "ate", "oh") are left out:
# a listener cannot tell them apart from the digit either.
TRAIN_WORDS = (
    "apple", "river", "yellow", "morning", "table", "window", "happy", "garden", "music", "orange", "paper",
    "silver", "winter", "doctor", "pencil", "rabbit", "button", "coffee", "dragon", "forest", "hello",
    "yes", "no", "stop", "go", "left", "right", "up", "down", "on", "off", "house", "bird", "cat", "dog",
    "bed", "tree", "wow", "sheila", "marvin", "learn", "follow", "visual", "backward", "forward", "zebra",
    "ocean", "bottle", "candle", "basket", "mountain", "pillow", "cherry", "lemon", "tiger", "guitar",
    "kitchen", "planet", "rocket", "summer", "thunder", "velvet", "wagon", "monkey", "purple", "shadow",
    "castle", "island", "market", "camera", "jacket", "bridge", "cloud", "horse", "mouse", "train", "sugar",
    "water", "number", "digit", "hundred", "dozen", "again", "please", "thanks", "maybe", "never", "always",
    "quiet", "loud", "blue", "green", "black", "white", "chair", "floor", "light", "night", "sleep",
    "dream", "about", "after", "animal", "answer", "baby", "back", "ball", "bank", "beach", "bear",
    "beautiful", "because", "before", "begin", "bell", "big", "boat", "body", "book", "bottom", "box",
    "boy", "bread", "break", "brother", "brown", "build", "busy", "buy", "cake", "call", "car", "card",
    "care", "carry", "catch", "chicken", "child", "city", "clean", "clock", "close", "cold", "colour",
    "come", "cook", "corner", "count", "country", "cow", "cup", "cut", "dance", "dark", "daughter", "day",
    "dear", "deep", "desk", "dinner", "dirty", "dish", "door", "draw", "drink", "drive", "duck", "early",
    "earth", "easy", "eat", "egg", "end", "evening", "every", "eye", "face", "fall", "family", "farm",
    "father", "feel", "field", "fill", "fire", "first", "fish", "flower", "fly", "food", "foot", "friend",
    "frog", "front", "full", "funny", "game", "girl", "give", "glass", "gold", "good", "grass", "great",
    "ground", "grow", "hair", "half", "hand", "hard", "hat", "head", "hear", "heart", "heavy", "help",
    "here", "high", "hill", "hold", "home", "hope", "hot", "hour", "hungry", "ice", "idea", "inside",
    "iron", "job", "juice", "jump", "keep", "key", "kind", "king", "kiss", "know", "lady", "lake", "land",
    "large", "last", "late", "laugh", "leaf", "leg", "letter", "lift", "like", "line", "lion", "listen",
    "little", "long", "look", "love", "low", "lunch", "make", "man", "many", "map", "milk", "minute",
    "mirror", "money", "moon", "mother", "move", "name", "near", "neck", "new", "news", "nose", "note",
    "nothing", "now", "open", "other", "outside", "page", "paint", "pair", "park", "party", "pass", "pay",
    "people", "picture", "piece", "pig", "place", "plant", "play", "pocket", "point", "poor", "potato",
    "pull", "push", "queen", "question", "race", "radio", "rain", "read", "red", "rice", "rich", "ring",
    "road", "rock", "room", "rope", "round", "run", "salt", "sand", "school", "sea", "seat", "second",
    "see", "send", "ship", "shoe", "shop", "short", "shout", "show", "side", "sing", "sister", "sit",
    "size", "skin", "sky", "small", "smell", "smile", "snow", "soap", "soft", "song", "soon", "sound",
    "soup", "speak", "spoon", "spring", "square", "stand", "star", "station", "stone", "story", "street",
    "strong", "student", "study", "sun", "swim", "talk", "tall", "taxi", "tea", "teacher", "thank", "thick",
    "thin", "think", "today", "tooth", "top", "touch", "town", "toy", "travel", "turn", "under", "uncle",
    "very", "village", "visit", "voice", "walk", "wall", "want", "warm", "wash", "watch", "weather", "week",
    "wet", "wheel", "when", "where", "why", "wide", "wind", "wing", "woman", "wood", "word", "work",
    "world", "write", "year", "young",
)
TEST_WORDS = (
    "banana", "turtle", "lantern", "meadow", "puzzle", "carpet", "ticket", "violin", "harbor", "engine",
    "pepper", "saddle", "marble", "falcon", "walnut", "copper", "blanket", "honey", "spider", "bad", "fast",
    "slow", "start", "finish", "bring", "umpire", "north", "south", "east", "west", "simple", "cabbage",
    "pirate", "whistle", "orchestra", "blossom", "feather", "helmet", "ladder", "magnet", "needle",
    "oyster", "parrot", "quilt", "ribbon", "scissors", "tomato", "umbrella", "vessel", "waffle", "yogurt",
    "anchor", "biscuit", "compass", "dolphin", "elbow", "fountain", "giraffe", "hammer",
)
ESPEAK_ACCENTS = ("en", "en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-029",
                  "en-gb-x-gbcwmd", "en-us-nyc")
# espeak-ng voice variants (voice quality: formants, pitch range, breathiness) drawn for training.
# The test voices' variants (default, f2, f3, f4, m5) are not among them.
ESPEAK_TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m6", "m7", "m8", "f1", "f5", "klatt", "klatt2", "klatt3",
                         "klatt4", "Andy", "Annie", "belinda", "benjamin", "david", "ed", "edward", "john",
                         "linda", "max", "steph", "travis", "victor", "quincy", "rob", "paul", "grandma",
                         "grandpa", "croak")


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker. ``name`` is ``accent`` or ``accent+variant`` for espeak-ng, the voice
    for flite (``-voice``) and festival (its ``voice_...`` function without the prefix)."""

    engine: str  # "espeak-ng" | "flite" | "festival"
    name: str
    pitch: int = 50  # espeak-ng only: 0-99
    speed: int = 175  # espeak-ng only: words per minute

    @property
    def label(self) -> str:
        return f"{self.engine}:{self.name}" + (f":p{self.pitch}:s{self.speed}" if self.engine == "espeak-ng" else "")


def _espeak_train_voices(count: int, seed: int = 0) -> list[Voice]:
    rng = random.Random(seed)
    voices: set[Voice] = set()
    while len(voices) < count:
        voices.add(Voice("espeak-ng", f"{rng.choice(ESPEAK_ACCENTS)}+{rng.choice(ESPEAK_TRAIN_VARIANTS)}",
                         rng.randint(30, 70), rng.randint(130, 190)))
    return sorted(voices, key=lambda v: v.label)


TRAIN_VOICES: tuple[Voice, ...] = (
    *(Voice("flite", name) for name in ("kal", "kal16", "awb", "rms", "slt")),
    *(Voice("festival", name) for name in ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")),
    *_espeak_train_voices(48),
)
# The plain en-us voice also speaks the app's example clips (effviz.ui.examples): never trained on.
TEST_VOICES: tuple[Voice, ...] = tuple(Voice("espeak-ng", name) for name in (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-us+f3", "en-gb+f4",
    "en-us+m5", "en-gb-x-gbcwmd+f2"))


# Calibration of the "no digit" answer (effviz.train.calibrate_no_digit): voice variants and words
# that neither training nor test uses.
CALIBRATION_VOICES: tuple[Voice, ...] = tuple(Voice("espeak-ng", f"{accent}+{variant}") for accent, variant in zip(
    ("en", "en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-029", "en-gb-x-gbcwmd",
     "en-us-nyc", "en-us"),
    ("Alex", "Diogo", "Gene", "Hugo", "iven", "kaukovalta", "marcelo", "michel", "norbert", "zac")))
CALIBRATION_WORDS = (
    "acorn", "bicycle", "button hole", "cactus", "dinosaur", "envelope", "flamingo", "gravel", "hedgehog",
    "igloo", "jigsaw", "kettle", "lobster", "mitten", "noodle", "octopus", "pebble", "raccoon", "sandal",
    "teapot", "unicorn", "volcano", "walrus", "xylophone", "yacht", "zipper", "almond", "bamboo", "cobweb",
    "daisy", "eagle", "fiddle", "goblin", "hiccup", "insect", "jelly", "koala", "lettuce", "muffin", "nutmeg",
)


@dataclass
class Utterance:
    waveform: torch.Tensor  # float32 at RATE, cut to its spoken part
    word: str
    voice: str

    @property
    def digit(self) -> int | None:
        return DIGIT_WORDS.index(self.word) if self.word in DIGIT_WORDS else None


def missing_engines(voices: tuple[Voice, ...] | list[Voice]) -> list[str]:
    """The synthesisers ``voices`` need that this machine lacks (Debian packages of the same name;
    festival's voices are the ``festvox-kallpc16k``, ``festvox-kdlpc16k``, ``festvox-us-slt-hts``)."""
    programs = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival"}
    return sorted({v.engine for v in voices if shutil.which(programs[v.engine]) is None})


def synthesize(words: list[str] | tuple[str, ...], voices: list[Voice] | tuple[Voice, ...]) -> list[Utterance]:
    """Every word in every voice (cached; see the module docstring). Raises ``RuntimeError`` when a
    synthesiser is missing."""
    pairs = [(word, voice) for voice in voices for word in words]
    return synthesize_pairs(pairs)


def synthesize_pairs(pairs: list[tuple[str, Voice]]) -> list[Utterance]:
    """``(word, voice)`` pairs spoken, in order (cached)."""
    key = hashlib.sha256(json.dumps([(w, asdict(v)) for w, v in pairs]).encode()).hexdigest()[:16]
    cache = _cache_dir() / f"tts-{key}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as arrays:
            flat, offsets = arrays["samples"], arrays["offsets"]
        return [Utterance(torch.from_numpy(flat[offsets[i]:offsets[i + 1]].copy()), w, v.label)
                for i, (w, v) in enumerate(pairs)]
    missing = missing_engines([v for _, v in pairs])
    if missing:
        raise RuntimeError(f"synthetic speech needs {', '.join(missing)} (Debian: apt install {' '.join(missing)})")
    waves: dict[int, torch.Tensor] = {}
    festival = [i for i, (_, v) in enumerate(pairs) if v.engine == "festival"]
    others = [i for i, (_, v) in enumerate(pairs) if v.engine != "festival"]
    with ThreadPoolExecutor(max_workers=4) as pool:  # one process per word: keep both cores busy
        for i, wave in zip(others, pool.map(lambda i: _speak(*pairs[i]), others)):
            waves[i] = wave
    for voice in sorted({pairs[i][1] for i in festival}, key=lambda v: v.name):
        todo = [i for i in festival if pairs[i][1] == voice]
        waves.update(zip(todo, _festival(voice, [pairs[i][0] for i in todo])))
    clips = [_cut(waves[i]) for i in range(len(pairs))]
    offsets = np.cumsum([0] + [len(c) for c in clips])
    _write_cache(cache, samples=np.concatenate([c.numpy() for c in clips]), offsets=offsets)
    return [Utterance(c, w, v.label) for c, (w, v) in zip(clips, pairs)]


def _speak(word: str, voice: Voice) -> torch.Tensor:
    if voice.engine == "espeak-ng":
        command = ["espeak-ng", "-v", voice.name, "-p", str(voice.pitch), "-s", str(voice.speed), "--stdout", word]
        return _decode(subprocess.run(command, check=True, capture_output=True).stdout)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "word.wav"
        subprocess.run(["flite", "-voice", voice.name, "-t", word, "-o", str(out)], check=True, capture_output=True)
        return _decode(out.read_bytes())


def _festival(voice: Voice, words: list[str]) -> list[torch.Tensor]:
    """All ``words`` in one festival process (it takes ~0.5 s to start)."""
    with tempfile.TemporaryDirectory() as folder:
        lines = [f"(voice_{voice.name})"]
        for i, word in enumerate(words):
            lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{word}")) "{folder}/{i}.wav" \'riff)')
        script = Path(folder) / "words.scm"
        script.write_text("\n".join(lines) + "\n")
        subprocess.run(["festival", "-b", str(script)], check=True, capture_output=True)
        return [_decode((Path(folder) / f"{i}.wav").read_bytes()) for i in range(len(words))]


def _decode(data: bytes) -> torch.Tensor:
    samples, rate = read_audio(data)
    return prepare_waveform(samples, rate, RATE, max_seconds=10.0)


def _cut(wave: torch.Tensor) -> torch.Tensor:
    span = speech_span(wave, RATE)
    return wave if span is None else wave[span[0]:span[1]].contiguous()


def training_utterances(voices_per_word: int = 2, seed: int = 0) -> list[Utterance]:
    """The ten digits in every training voice, and every training word in ``voices_per_word``
    training voices drawn at random."""
    rng = random.Random(seed)
    pairs = [(word, voice) for voice in TRAIN_VOICES for word in DIGIT_WORDS]
    pairs += [(word, voice) for word in TRAIN_WORDS for voice in rng.sample(TRAIN_VOICES, voices_per_word)]
    return synthesize_pairs(pairs)


def test_utterances(voices_per_word: int = 4, seed: int = 0) -> list[Utterance]:
    """The ten digits in every test voice, and every test word in ``voices_per_word`` test voices."""
    rng = random.Random(seed)
    pairs = [(word, voice) for voice in TEST_VOICES for word in DIGIT_WORDS]
    pairs += [(word, voice) for word in TEST_WORDS for voice in rng.sample(TEST_VOICES, voices_per_word)]
    return synthesize_pairs(pairs)


def calibration_utterances(voices_per_word: int = 4, seed: int = 0) -> list[Utterance]:
    """The ten digits in every calibration voice, and every calibration word in ``voices_per_word``
    of them."""
    rng = random.Random(seed)
    pairs = [(word, voice) for voice in CALIBRATION_VOICES for word in DIGIT_WORDS]
    pairs += [(word, voice) for word in CALIBRATION_WORDS for voice in rng.sample(CALIBRATION_VOICES, voices_per_word)]
    return synthesize_pairs(pairs)
