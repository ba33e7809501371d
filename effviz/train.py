"""Train a bundled model: ``python -m effviz.train MODEL_ID --data PATH``.

One recipe per modality, shared by every model of that modality (same epochs, optimiser,
schedule, augmentation and input size), so the models differ only in their token mixer:

- image (CIFAR-10 zip): 45,000 train / 5,000 held-out images, random crop (pad 4) + flip.
- audio (FSDD zip + Debian's speech synthesisers): the five FSDD speakers (four in a
  cross-validation fold, ``--test-speaker``), the ten digits and 411 other words in synthetic
  voices, and non-word sounds; an eleventh class, "no digit", for the words and sounds. Speed,
  gain, room, microphone/telephone and noise corruption of the waveform, VTLP and SpecAugment of
  the features (``effviz.data.speech_augment``); the models take each clip's mel bins less their
  mean over its speech (``ModelConfig.audio_cmn``), in training and at inference alike.
- audio-visual (MNIST npz + FSDD zip): digits paired by label and re-paired every epoch,
  modality dropout (image only / audio only / both) so either modality may be missing, and heavy
  noise on one modality now and then so that fusion learns to trust the cleaner one.

Checkpoints go to ``runs/<model-id>/last.pt`` after every epoch (``--resume`` continues);
the finished model goes to ``weights/<model-id>/`` with its card.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from tqdm import tqdm

from .convert.loading import file_sha256
from .data import synthetic_speech
from .data.audio import fbank, fit_length
from .data.datasets import load_cifar10, load_fsdd, load_mnist
from .data.speech_augment import SpeechAugment, add_noise, no_digit_sound, room_impulse_responses
from .models import EffvizModel, ModelConfig
from .models.releases import Preprocess
from .models.mixers.moe import MoeMlp
from .models.registry import BUNDLED_RECIPES, WEIGHTS_DIR, task_of, weight_folders
from .wording import counted

log = logging.getLogger("effviz.train")
RUNS_DIR = WEIGHTS_DIR.parent / "runs"
FSDD_RATE = 8000


@dataclass
class Recipe:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float
    seed: int = 0
    # The epochs split into this many equal cosine cycles, each with its warmup (SGDR-style warm
    # restarts; AdamW's moments carry over).
    cycles: int = 1
    # Learning rate multiplier for parameters a warm start leaves fresh (see WARM_START).
    fresh_lr_scale: float = 1.0


RECIPES = {
    "image": Recipe(epochs=20, batch_size=128, lr=2e-3, weight_decay=0.05, warmup_epochs=1, label_smoothing=0.1),
    "audio": Recipe(epochs=32, batch_size=64, lr=2e-3, weight_decay=0.05, warmup_epochs=1, label_smoothing=0.1,
                    cycles=2),
    "audio-visual": Recipe(epochs=20, batch_size=64, lr=5e-4, weight_decay=0.05, warmup_epochs=1, label_smoothing=0.1,
                           fresh_lr_scale=4.0),
}
# Speech: two 16-epoch cosine cycles. The restart lifts every mixer's cross-validated mean by more
# than a seed moves it; 32 epochs as one cycle (attention) or 16 as two (RWKV) do less
# (docs/speech-ablations.json).
# Audio-visual models start from the bundled speech model with the same mixer: same blocks, audio
# tokenizer and digit head, so only the image tokenizer and the modality embeddings start fresh.
# Speech is the slow modality to learn on a CPU (30 epochs alone); images then come in a few.
# The fresh parameters learn at ``fresh_lr_scale`` x the recipe's rate: at the rate that keeps
# the speech weights intact (4 epochs at 5e-4), the image tokenizer stayed below 92%.
WARM_START = {"av-mamba-digits": "aum-fsdd", "av-transformer-digits": "ast-fsdd"}
# What bounds each recipe's accuracy, written into every card it produces.
RECIPE_LIMITS = {
    "image": "Compute. Each model trains for 20 epochs on one CPU core (a Vim epoch takes ~8 min there, a "
             "DeiT epoch ~3), so the recipe uses 4x4 tokens of 8x8 pixels after a small conv stem, which "
             "caps what any mixer can learn. The attention and retention models have no local token mixer "
             "(Vim has its causal conv, VRWKV its Q-shift) and learn more slowly: after 20 epochs ViR and "
             "DeiT stand at 72% and 70%, Vim and VRWKV at 79% and 80% (at 8 epochs: 63% against 70-72%). "
             "A GPU run with 8x8 tokens and more epochs is the way up.",
    "audio": "Real voices. Five FSDD speakers (four in a cross-validation fold) are few for a speaker-"
             "independent model; 56 synthetic voices widen them, but espeak-ng, flite and festival voices "
             "are more alike than people are, and the \"no digit\" words are synthetic only. The corrupted "
             "copies of each clip are computed once (32 per clip) to fit the CPU budget of one thread, after "
             "which every model still underfits its corrupted training clips (see train_acc): "
             "the \"no digit\" answer then also catches digits in voices unlike the training ones, and its "
             "calibration trades the one against the other.",
    "audio-visual": "The balance between the inputs, under a CPU budget. The model starts from the speech model of "
                    "the same mixer and trains 20 epochs on a 2-core CPU, its fresh image tokenizer (two 3x3 convs, "
                    "then 7x7 patches) at 4x the learning rate; 40% of the batches show only the image, 25% only "
                    "the speech, and each input is heavily corrupted in 40% of the training pairs. With a quarter "
                    "of the batches each and one stem conv, the image alone stayed at 94% (Mamba) and 91% "
                    "(attention), underfitting even the clean training digits (97% and 93%); this mix and stem "
                    "take it to 97% and 96%. The speech alone is the thin margin: the held-out speaker's accuracy "
                    "swings by a few points from epoch to epoch (see the history), and batches given to one input "
                    "are taken from the other (Mamba, speech alone: 88% with the old mix, 84% with 20% speech-only "
                    "batches, 85% with 25%). In the Mamba model the class token sits at the boundary between "
                    "the modalities in every mode, so each one reaches it by the same scan direction alone and "
                    "fused: with it in the middle of the image when the image came alone, the fused prediction "
                    "under noise fell below the image alone (76.8% vs 88.0%).",
}
HEAVY_NOISE_SHARE = 0.4  # audio-visual pairs whose image (and, independently, speech) is heavily corrupted
VAL_SPEAKER = "theo"  # FSDD speaker the audio-visual models hold out: their speech validation is speaker-independent
NO_DIGIT = "no digit"  # the speech models' answer for silence, noise, music and words that are not digits
SPEECH_BANK_VARIANTS = 32  # corrupted copies of each speech clip (FsddTask)
NO_DIGIT_TEST_SEED = 10_000  # the non-word test sounds: a generator no training run seeds
NO_DIGIT_CALIBRATION_SEED = 20_000  # and the calibration's


# ---------------------------------------------------------------- data


class CifarTask:
    """CIFAR-10: uint8 images kept in memory, augmented per batch in torch."""

    def __init__(self, cfg: ModelConfig, data: dict[str, str], seed: int):
        images, labels, classes = load_cifar10(data["cifar10"])
        if list(classes) != list(cfg.labels):
            raise ValueError(f"CIFAR classes {classes} do not match the model's labels {cfg.labels}")
        order = np.random.default_rng(seed).permutation(len(images))
        val, train = order[:5000], order[5000:]
        to_tensor = lambda idx: torch.from_numpy(images[idx]).permute(0, 3, 1, 2).contiguous()  # noqa: E731
        self.train_x, self.train_y = to_tensor(train), torch.from_numpy(labels[train])
        self.val_x, self.val_y = to_tensor(val), torch.from_numpy(labels[val])
        self.mean = torch.tensor(cfg.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.image_std).view(1, 3, 1, 1)
        self.data_note = f"CIFAR-10 train zip: {len(train)} train / {len(val)} held-out images (seed {seed})"

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - self.mean) / self.std

    def train_batches(self, batch_size: int, gen: torch.Generator):
        order = torch.randperm(len(self.train_y), generator=gen)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            x = F.pad(self.train_x[idx], (4, 4, 4, 4))
            dy, dx = torch.randint(0, 9, (2,), generator=gen).tolist()  # one crop offset per batch: cheap
            x = x[:, :, dy:dy + 32, dx:dx + 32]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            yield {"image": self._normalise(x)}, self.train_y[idx]

    def val_sets(self):
        yield "val", [({"image": self._normalise(self.val_x[i:i + 500])}, self.val_y[i:i + 500])
                      for i in range(0, len(self.val_y), 500)]


def fsdd_waves(path: str, rate: int) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    clips = load_fsdd(path)
    waves = [torchaudio.functional.resample(torch.from_numpy(c.waveform), c.sample_rate, rate) for c in clips]
    return waves, torch.tensor([c.digit for c in clips]), [c.speaker for c in clips]


class FsddTask:
    """Spoken digits and "no digit": the FSDD speakers but ``test_speaker`` (all five when None),
    the ten digits in 56 synthetic training voices and 411 other words in two of them each, and sounds that are
    not words (``no_digit_sound``, a twentieth as many; an epoch draws as many non-digits as one
    digit has), all corrupted by ``SpeechAugment``.
    Evaluation, never used to pick anything: the test speaker's clips (when there is one), the
    digits in ten synthetic voices no training clip uses, words no training clip says (in those
    voices), and 200 fresh non-word sounds.

    The waveform half of the augmentation costs more than a small model's training step on a CPU,
    so it runs once: ``SPEECH_BANK_VARIANTS`` corrupted copies of every clip (and as many sets of
    non-word sounds), cached on disk and shared by every model and fold (see ``speech_bank``);
    each epoch draws one copy of each clip, then VTLP and SpecAugment afresh."""

    def __init__(self, cfg: ModelConfig, data: dict[str, str], seed: int, test_speaker: str | None = None):
        waves, labels, speakers = fsdd_waves(data["fsdd"], cfg.sample_rate)
        if test_speaker is not None and test_speaker not in speakers:
            raise ValueError(f"test speaker {test_speaker!r} is not in {data['fsdd']} ({', '.join(sorted(set(speakers)))})")
        self.no_digit = cfg.labels.index(NO_DIGIT) if NO_DIGIT in cfg.labels else None
        self.rate = cfg.sample_rate
        voices = self._synthetic(synthetic_speech.training_utterances())
        self.train = [(w, y) for w, y, s in zip(waves, labels, speakers) if s != test_speaker] + voices
        self.val = [(w, y) for w, y, s in zip(waves, labels, speakers) if s == test_speaker]
        self.augment = SpeechAugment(Preprocess.from_config(cfg).audio, cfg.min_audio_seconds,
                                     room_impulse_responses(cfg.sample_rate))
        # Rows of the bank: every FSDD clip, every synthetic clip, then the non-word sounds.
        self.bank_clips = list(zip(waves, labels)) + voices
        self.bank_sounds = len(self.bank_clips) // 20 if self.no_digit is not None else 0
        self.bank_key = _bank_key(cfg, data["fsdd"], len(waves), [u.voice + u.word for u in synthetic_speech.training_utterances()],
                                  self.bank_sounds, seed)
        rows = torch.tensor([i for i, s in enumerate(speakers) if s != test_speaker]
                            + list(range(len(waves), len(self.bank_clips) + self.bank_sounds)))
        is_digit = self.bank_labels()[rows] != (self.no_digit if self.no_digit is not None else -1)
        # Each epoch shows every digit clip and a fresh draw of non-digits as many as one digit has
        # (an eleventh class of the same size): with all 1,000 of them (28% of an epoch), the retention
        # model stayed at the majority answer for 12 epochs.
        self.digit_rows, self.no_digit_rows = rows[is_digit], rows[~is_digit]
        self.no_digit_per_epoch = min(len(self.no_digit_rows), len(self.digit_rows) // 10)
        self.seed = seed
        self._bank: list[torch.Tensor] | None = None
        fsdd_speakers = sorted(set(speakers) - {test_speaker})
        self.data_note = (f"FSDD: {len(self.train) - len(voices)} clips of {len(fsdd_speakers)} speakers "
                          f"({', '.join(fsdd_speakers)})"
                          + (f", all {len(self.val)} clips of speaker '{test_speaker}' held out" if test_speaker else "")
                          + f"; {len(voices)} synthetic clips (digits and other words, "
                          f"{len(synthetic_speech.TRAIN_VOICES)} voices); {self.bank_sounds} non-word sounds an epoch")
        self._val_sets: list | None = None

    def _synthetic(self, utterances: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
        items = []
        for u in utterances:
            label = u.digit if u.digit is not None else self.no_digit
            if label is not None:
                wave = torchaudio.functional.resample(u.waveform, synthetic_speech.RATE, self.rate)
                items.append((wave, torch.tensor(label)))
        return items

    def bank_labels(self) -> torch.Tensor:
        return torch.tensor([int(y) for _, y in self.bank_clips] + [self.no_digit] * self.bank_sounds)

    def bank_variant(self, variant: int) -> torch.Tensor:
        """Corrupted features of every bank row, ``(rows, frames, mel)`` float16: read from the
        cache, or computed (~half a minute) and cached."""
        path = _cache_root() / "speech-bank" / self.bank_key / f"{variant}.pt"
        if path.is_file():
            os.utime(path.parent)  # recently used: evict_stale_banks keeps it
            return torch.load(path, weights_only=True)
        gen = torch.Generator().manual_seed(self.seed * 1000 + variant)
        length = self.augment.length
        rows = [self.augment.corrupt(w, gen) for w, _ in self.bank_clips]
        rows += [self.augment.corrupt(no_digit_sound(length, self.rate, gen), gen) for _ in range(self.bank_sounds)]
        bank = torch.stack(rows).half()
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)  # another process may make it at the same time
            evict_stale_banks(path.parent.parent, keep=path.parent)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        torch.save(bank, partial)
        os.replace(partial, path)
        return bank

    def train_batches(self, batch_size: int, gen: torch.Generator):
        if self._bank is None:
            self._bank = [self.bank_variant(v) for v in range(SPEECH_BANK_VARIANTS)]
            self._labels = self.bank_labels()
        drawn = self.no_digit_rows[torch.randperm(len(self.no_digit_rows), generator=gen)[: self.no_digit_per_epoch]]
        rows = torch.cat([self.digit_rows, drawn])
        order = rows[torch.randperm(len(rows), generator=gen)]
        variants = torch.randint(SPEECH_BANK_VARIANTS, (len(order),), generator=gen)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows, picks = order[start:start + batch_size], variants[start:start + batch_size]
            x = torch.stack([self.augment.perturb(self._bank[v][r].float(), gen) for r, v in zip(rows.tolist(), picks.tolist())])
            yield {"audio": x}, self._labels[rows]

    def val_sets(self):
        if self._val_sets is None:  # clean features: the same every epoch
            sets = []
            if self.val:
                sets.append(("speaker", self.val))
            test = synthetic_speech.test_utterances()
            sets.append(("synthetic_voices", self._synthetic([u for u in test if u.digit is not None])))
            if self.no_digit is not None:
                sets.append(("no_digit_words", self._synthetic([u for u in test if u.digit is None])))
                gen = torch.Generator().manual_seed(NO_DIGIT_TEST_SEED)
                sounds = [no_digit_sound(self.augment.length, self.rate, gen) for _ in range(200)]
                sets.append(("no_digit_sounds", [(w, torch.tensor(self.no_digit)) for w in sounds]))
            self._val_sets = [(name, [({"audio": torch.stack([self.augment.features(w, None) for w, _ in clips])},
                                       torch.stack([y for _, y in clips]))]) for name, clips in sets]
        yield from self._val_sets


def _calibration_sets(task: FsddTask) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Clean features of the calibration voices' digits with their labels, and of non-digits (the
    calibration words and fresh non-word sounds): no training or evaluation clip among them."""
    utterances = synthetic_speech.calibration_utterances()
    digits = task._synthetic([u for u in utterances if u.digit is not None])
    words = task._synthetic([u for u in utterances if u.digit is None])
    gen = torch.Generator().manual_seed(NO_DIGIT_CALIBRATION_SEED)
    sounds = [no_digit_sound(task.augment.length, task.rate, gen) for _ in range(200)]
    features = lambda waves: torch.stack([task.augment.features(w, None) for w in waves])  # noqa: E731
    return ((features([w for w, _ in digits]), torch.stack([y for _, y in digits])),
            features([w for w, _ in words] + sounds))


@torch.no_grad()
def calibrate_no_digit(model: EffvizModel, task: FsddTask, max_cost: float = 0.01) -> dict:
    """Shift the "no digit" logit (its bias in the head) so that, on voices and words that no
    training or test clip uses, the answer costs the digits at most ``max_cost`` of accuracy
    against the best digit alone, and within that, as many non-digits as possible are answered
    "no digit" (the smaller shift on a tie).

    A model trained with the extra class also says "no digit" for digits in voices unlike its
    training voices; the shift sets where it trades the one against the other, digits first.
    Returns the shift and the calibration set's accuracies before and after, and the best a digit
    alone reaches."""
    (digit_x, digit_y), other_x = _calibration_sets(task)
    model.eval()
    digit_logits, other_logits = model(audio=digit_x), model(audio=other_x)
    nd = task.no_digit
    digits_only = (digit_logits[:, :nd].argmax(-1) == digit_y).float().mean().item()

    def rates(shift: float) -> tuple[float, float]:
        bump = torch.zeros(digit_logits.shape[1])
        bump[nd] = shift
        digits = ((digit_logits + bump).argmax(-1) == digit_y).float().mean().item()
        return digits, ((other_logits + bump).argmax(-1) == nd).float().mean().item()

    shifts = [round(0.1 * i, 1) for i in range(-100, 101)]
    feasible = [b for b in shifts if rates(b)[0] >= digits_only - max_cost - 1e-6]
    shift = max(feasible, key=lambda b: (rates(b)[1], -abs(b)))
    before, after = rates(0.0), rates(shift)
    model.head.bias[nd] += shift
    return {"shift": shift, "max_cost": max_cost, "digits_only": digits_only,
            "before": {"digits": before[0], "no_digit": before[1]}, "after": {"digits": after[0], "no_digit": after[1]},
            "clips": {"digits": len(digit_y), "non_digits": len(other_x)}}


def calibrate_saved(folder: Path, data: dict[str, str]) -> dict:
    """Calibrate a trained speech model in ``folder`` (its card says which FSDD speaker it held out)
    and re-measure its card's accuracies; the folder is rewritten (weights, sha256, card)."""
    card = json.loads((folder / "card.json").read_text())
    model = EffvizModel.from_pretrained(str(folder), strict=True)
    task = FsddTask(model.config, data, card["recipe"]["seed"], card.get("test_speaker"))
    if "no_digit_calibration" in card:  # calibrated before: start again from the trained weights
        with torch.no_grad():
            model.head.bias[task.no_digit] -= card["no_digit_calibration"]["shift"]
    card["uncalibrated_metrics"] = card.get("uncalibrated_metrics") or dict(card["metrics"])
    card["no_digit_calibration"] = calibrate_no_digit(model, task)
    train_metrics = {k: v for k, v in card["metrics"].items() if k.startswith("train")}
    card["metrics"] = {**train_metrics, **scores(model, task)}
    save_bundled(model, card, folder)
    return card


def _cache_root() -> Path:
    return Path(os.environ.get("EFFVIZ_CACHE") or Path.home() / ".cache" / "effviz")


# A bank of corrupted training features (a speech bank is ~3.5 GB, a connected-digits one ~0.2 GB)
# is keyed by everything its contents depend on, so every recipe, seed and fold that a developer
# tries makes a new one: without eviction they fill a disk.
BANK_CACHE_BYTES = int(float(os.environ.get("EFFVIZ_BANK_CACHE_GB", "16")) * 2**30)
BANK_IN_USE_SECONDS = 3600  # a bank touched this recently may be in use by another process


def _disk_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def evict_stale_banks(folder: Path, keep: Path, budget: int = BANK_CACHE_BYTES) -> list[Path]:
    """Delete the least recently used banks (files or folders) in ``folder``, by modification time,
    which reading a bank refreshes: the most recent are kept while they fit in ``budget`` bytes
    beside ``keep`` (the bank being written), every older one is deleted, except any touched in the
    last ``BANK_IN_USE_SECONDS``. Returns the deleted paths."""
    now, total, deleted = time.time(), _disk_size(keep) if keep.exists() else 0, []
    entries = sorted((p for p in folder.iterdir() if p != keep), key=lambda p: p.stat().st_mtime, reverse=True)
    for entry in entries:  # newest first: once the total is over budget, it stays over
        total += _disk_size(entry)
        if total > budget and now - entry.stat().st_mtime > BANK_IN_USE_SECONDS:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            deleted.append(entry)
    if deleted:
        log.info("deleted %d stale bank(s) in %s (EFFVIZ_BANK_CACHE_GB)", len(deleted), folder)
    return deleted


def _bank_key(cfg: ModelConfig, fsdd: str, clips: int, voices: list[str], sounds: int, seed: int) -> str:
    """What the bank's contents depend on: the data (its bytes, not its path or modification time,
    so that a fresh copy of the same data finds its bank again), the features, the augmentation's
    code."""
    source = (Path(__file__).parent / "data" / "speech_augment.py").read_bytes()
    described = json.dumps([file_sha256(Path(fsdd)), clips, voices, sounds, seed,
                            asdict(Preprocess.from_config(cfg).audio), cfg.min_audio_seconds,
                            hashlib.sha256(source).hexdigest()])
    return hashlib.sha256(described.encode()).hexdigest()[:16]


class DigitsAVTask:
    """MNIST digits + FSDD speech paired by label; modality dropout for robustness to missing input."""

    def __init__(self, cfg: ModelConfig, data: dict[str, str], seed: int, test_speaker: str):
        images, labels = load_mnist(data["mnist"])
        order = np.random.default_rng(seed).permutation(len(images))
        val, train = order[:1000], order[1000:]
        self.mean, self.std = cfg.image_mean[0], cfg.image_std[0]
        self.train_img = self._normalise(torch.from_numpy(images[train]))
        self.train_img_y = torch.from_numpy(labels[train])
        self.val_img = self._normalise(torch.from_numpy(images[val]))
        self.val_img_y = torch.from_numpy(labels[val])
        self.speech = FsddTask(cfg, data, seed, test_speaker=test_speaker)
        self.data_note = (f"MNIST (8k npz): {len(train)} train / {len(val)} held-out images; "
                          + self.speech.data_note)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return ((images.float() / 255 - self.mean) / self.std).unsqueeze(1)

    def _pair(self, img_y: torch.Tensor, clips: list, gen: torch.Generator | None) -> list[int]:
        """For each image label, a random clip index with the same digit."""
        by_digit = {d: [i for i, (_, y) in enumerate(clips) if int(y) == d] for d in range(10)}
        pick = (lambda n: int(torch.randint(0, n, (), generator=gen))) if gen is not None else (lambda n: 0)
        counters = {d: 0 for d in range(10)}
        out = []
        for y in img_y.tolist():
            pool = by_digit[y]
            if gen is None:  # deterministic validation pairing: walk through the speaker's clips
                out.append(pool[counters[y] % len(pool)])
                counters[y] += 1
            else:
                out.append(pool[pick(len(pool))])
        return out

    def train_batches(self, batch_size: int, gen: torch.Generator):
        order = torch.randperm(len(self.train_img_y), generator=gen)
        clips = self.speech.train
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            y = self.train_img_y[idx]
            # Fusion must learn to lean on the cleaner input, so each modality is heavily corrupted
            # in 40% of the pairs, independently (images: noise of std 1-3 in normalised units;
            # speech: -5 to 5 dB SNR), so 16% of pairs have both corrupted, as the noisy validation
            # set has; 20% of the images get mild noise. (At 25% each the Mamba model's fused
            # prediction under noise fell further below its image alone than at 40%.)
            image = self.train_img[idx]
            r = torch.rand(len(idx), 1, 1, 1, generator=gen)
            heavy = HEAVY_NOISE_SHARE
            std = torch.where(r < heavy, 1 + 2 * torch.rand(r.shape, generator=gen),
                              torch.where(r < heavy + 0.2, torch.rand(r.shape, generator=gen), torch.zeros(r.shape)))
            image = image + std * torch.randn(image.shape, generator=gen)
            snrs = [float(torch.empty(()).uniform_(-5, 5, generator=gen)) if torch.rand((), generator=gen) < heavy
                    else None for _ in range(len(idx))]
            augment = self.speech.augment
            audio = torch.stack([augment.features(clips[j][0], gen, snr)
                                 for j, snr in zip(self._pair(y, clips, gen), snrs)])
            # Modality dropout: 40% of batches see only the image, 25% only the audio, 35% both. The
            # speech side starts trained (WARM_START) and the image side fresh, so the image gets the
            # most batches of its own; RECIPE_LIMITS gives what other splits reached.
            r = torch.rand((), generator=gen).item()
            inputs = {"image": image, "audio": audio}
            if r < 0.4:
                inputs = {"image": image}
            elif r < 0.65:
                inputs = {"audio": audio}
            yield inputs, y

    def val_sets(self):
        clips = self.speech.val
        audio_idx = self._pair(self.val_img_y, clips, None)
        aug = self.speech.augment
        clean_audio = torch.stack([aug.features(clips[j][0], None) for j in audio_idx])
        gen = torch.Generator().manual_seed(1234)
        noisy_audio = torch.stack([
            fbank(add_noise(fit_length(clips[j][0][: aug.length], aug.length), 0.0, gen), aug.pre) for j in audio_idx
        ])
        noisy_image = self.val_img + torch.randn(self.val_img.shape, generator=gen) * 2.0
        y = self.val_img_y
        yield "both", [({"image": self.val_img, "audio": clean_audio}, y)]
        yield "image_only", [({"image": self.val_img}, y)]
        yield "audio_only", [({"audio": clean_audio}, y)]
        yield "noisy_both", [({"image": noisy_image, "audio": noisy_audio}, y)]
        yield "noisy_image_only", [({"image": noisy_image}, y)]
        yield "noisy_audio_only", [({"audio": noisy_audio}, y)]


TASKS = {"image": CifarTask, "audio": FsddTask, "audio-visual": DigitsAVTask}


# ---------------------------------------------------------------- training


@torch.no_grad()
def evaluate(model: EffvizModel, batches, among: int | None = None) -> float:
    """Top-1 accuracy; with ``among``, the answer is the best of the first ``among`` classes only
    (the digits, leaving out "no digit")."""
    model.eval()
    correct = total = 0
    for inputs, y in batches:
        logits = model(**inputs)
        correct += (logits[:, :among].argmax(-1) == y).sum().item()
        total += len(y)
    return correct / total


def scores(model: EffvizModel, task) -> dict[str, float]:
    """Accuracy on each of the task's evaluation sets; for a digit set of a model that may answer
    "no digit", also ``<set>_digits_only``: the accuracy were that answer not allowed, so the
    difference is what the extra class costs on digits."""
    out = {}
    no_digit = getattr(task, "no_digit", None)
    for name, batches in task.val_sets():
        out[name] = evaluate(model, batches)
        if no_digit is not None and not name.startswith("no_digit"):
            out[f"{name}_digits_only"] = evaluate(model, batches, among=no_digit)
    return out


def count_flops(model: EffvizModel, inputs: dict[str, torch.Tensor]) -> int:
    """Forward FLOPs for one example, counted by torch (matmuls and convs; scans are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    one = {k: v[:1] for k, v in inputs.items()}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(**one)
    return counter.get_total_flops()


def architecture_notes(model: EffvizModel) -> dict:
    """What a card says beyond the main mixer: a hybrid's mixers block by block ("7 mamba + 2
    attention"), and for experts the parameters one token passes through (the router and ``top_k``
    experts per block) beside the total. Empty for a plain model."""
    cfg, notes = model.config, {}
    if cfg.mixer_schedule:
        runs = [[cfg.mixer_schedule[0], 0]]
        for mixer in cfg.mixer_schedule:
            if mixer != runs[-1][0]:
                runs.append([mixer, 0])
            runs[-1][1] += 1
        notes["mixers"] = " + ".join(f"{count} {mixer}" for mixer, count in runs) + " blocks"
    experts = [m for m in model.modules() if isinstance(m, MoeMlp)]
    if experts:
        idle = sum((len(m.experts) - m.top_k) * sum(p.numel() for p in m.experts[0].parameters()) for m in experts)
        notes["active_params"] = sum(p.numel() for p in model.parameters()) - idle
        notes["mixers"] = f"{cfg.mixer} blocks with {cfg.moe_top_k} of {cfg.moe_experts} MLP experts"
    return notes


def train(model_id: str, data: dict[str, str], epochs: int | None = None, resume: bool = False,
          out_dir: Path | None = None, limit_batches: int | None = None, test_speaker: str | None = None,
          seed: int | None = None, warm_from: Path | None = None, cycles: int | None = None) -> dict:
    """Train ``model_id`` by its modality's recipe (``epochs``, ``cycles`` and ``seed`` override the recipe's);
    returns its card. ``test_speaker`` (speech and audio-visual models; the latter default to
    ``VAL_SPEAKER``) leaves that FSDD speaker out of training and reports accuracy on it: one fold
    of the leave-one-speaker-out cross-validation (``docs/speech_cv.py``), where an audio-visual
    model starts from its speech model's fold of the same speaker (``warm_from``). The seed draws
    the split, the speech bank's corruptions, the initialisation and the batches."""
    if model_id not in BUNDLED_RECIPES:
        raise ValueError(f"unknown bundled model {model_id!r}; choose from {', '.join(BUNDLED_RECIPES)}")
    cfg = BUNDLED_RECIPES[model_id]()
    task_name = task_of(cfg)
    default = RECIPES[task_name]
    recipe = replace(default, epochs=default.epochs if epochs is None else epochs,
                     cycles=default.cycles if cycles is None else cycles,
                     seed=default.seed if seed is None else seed)
    if not 1 <= recipe.cycles <= recipe.epochs:
        raise ValueError(f"{recipe.cycles} learning-rate cycles do not fit in {recipe.epochs} epochs")
    torch.manual_seed(recipe.seed)
    random.seed(recipe.seed)
    task = _task(task_name, cfg, data, recipe.seed, test_speaker)
    model = EffvizModel(cfg)
    source = warm_start(model, model_id, warm_from)  # a resumed run then overwrites it with its checkpoint
    fresh = set(source["fresh"]) if source else set()
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        decays = param.dim() >= 2 and "pos_embed" not in name
        groups.setdefault((decays, name in fresh), []).append(param)
    opt = torch.optim.AdamW([
        {"params": params, "weight_decay": recipe.weight_decay if decays else 0.0,
         "lr_scale": recipe.fresh_lr_scale if is_fresh else 1.0}
        for (decays, is_fresh), params in sorted(groups.items())
    ], lr=recipe.lr)
    gen = torch.Generator().manual_seed(recipe.seed)
    run_dir = RUNS_DIR / ((f"{model_id}-without-{test_speaker}" if test_speaker else model_id)
                          + (f"-seed{recipe.seed}" if recipe.seed != default.seed else ""))
    run_dir.mkdir(parents=True, exist_ok=True)
    start_epoch, elapsed, history = 0, 0.0, []
    # The checkpoint carries its schedule (all but the epochs, which a resume may extend), so that
    # --resume never continues another recipe's run as if it were this one.
    schedule = json.dumps({k: v for k, v in asdict(recipe).items() if k != "epochs"}, sort_keys=True)
    if resume and (run_dir / "last.pt").exists():
        state = torch.load(run_dir / "last.pt", weights_only=True)
        if state.get("recipe", schedule) != schedule:
            raise ValueError(f"{run_dir / 'last.pt'} was trained by another recipe ({state['recipe']}); "
                             "move it away or train without --resume")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        start_epoch, elapsed, history = state["epoch"], state["elapsed"], json.loads(state["history"])
        log.info("resumed %s at epoch %d", model_id, start_epoch)

    steps_per_epoch = sum(1 for _ in range(0, _train_size(task) - recipe.batch_size + 1, recipe.batch_size))
    if limit_batches:
        steps_per_epoch = min(steps_per_epoch, limit_batches)

    for epoch in range(start_epoch, recipe.epochs):
        model.train()
        began = time.perf_counter()
        bar = tqdm(task.train_batches(recipe.batch_size, gen), total=steps_per_epoch,
                   desc=f"{model_id} epoch {epoch + 1}/{recipe.epochs}", mininterval=5)
        seen = correct = 0
        loss_sum = 0.0
        for i, (inputs, y) in enumerate(bar):
            if limit_batches and i >= limit_batches:
                break
            for group in opt.param_groups:
                group["lr"] = learning_rate(recipe, epoch * steps_per_epoch + i, steps_per_epoch) * group["lr_scale"]
            logits = model(**inputs)
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            (loss + model.auxiliary_loss()).backward()  # the MoE balance losses; 0 without experts
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            seen += len(y)
            correct += (logits.argmax(-1) == y).sum().item()
            loss_sum += loss.item() * len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        elapsed += time.perf_counter() - began
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
                        "train_acc": correct / max(seen, 1), **scores(model, task), "seconds": round(elapsed)})
        log.info("%s epoch %d: %s", model_id, epoch + 1, history[-1])
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                    "epoch": epoch + 1, "elapsed": elapsed, "history": json.dumps(history), "recipe": schedule},
                   run_dir / "last.pt")

    metrics = {k: v for k, v in history[-1].items() if k not in ("epoch", "seconds")}
    calibration, uncalibrated = None, metrics
    if getattr(task, "no_digit", None) is not None:
        calibration = calibrate_no_digit(model, task)
        metrics = {**{k: v for k, v in metrics.items() if k.startswith("train")}, **scores(model, task)}
    example = next(iter(task.val_sets()))[1][0][0]
    card = {
        "model_id": model_id,
        "task": task_name,
        "mixer": cfg.mixer,
        "params": sum(p.numel() for p in model.parameters()),
        **architecture_notes(model),
        "forward_flops": count_flops(model, example),
        "train_seconds": round(elapsed),
        "threads": torch.get_num_threads(),
        "recipe": asdict(recipe),
        "data": task.data_note,
        "test_speaker": test_speaker,
        "initialised_from": source and {"model": source["model"], "sha256": source["sha256"]},
        "metrics": metrics,
        **({"uncalibrated_metrics": uncalibrated, "no_digit_calibration": calibration} if calibration else {}),
        "history": history,
        "weights": "trained by effviz.train on this project's machines",
    }
    save_bundled(model, card, out_dir or WEIGHTS_DIR / model_id)
    return card


def learning_rate(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """The rate at optimiser step ``step``: the epochs split into ``recipe.cycles`` equal cycles,
    each a linear warmup of ``recipe.warmup_epochs`` then a cosine decay to zero."""
    cycle_steps = steps_per_epoch * recipe.epochs / recipe.cycles
    cycle = min(int(step // cycle_steps), recipe.cycles - 1)
    start, end = round(cycle * cycle_steps), round((cycle + 1) * cycle_steps)
    step -= start
    warmup = int(recipe.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, end - start - warmup)))


def evaluate_saved(model_id: str, data: dict[str, str]) -> dict[str, dict[str, float]]:
    """Re-measure a trained model's card numbers from its saved weights: the same validation
    sets (same split seed) as training used. Returns ``{metric: {"card": ..., "measured": ...}}``
    for every metric the card reports except the training ones."""
    from .api import build_pretrained, model_card

    card = model_card(model_id)
    if card.get("task") not in RECIPES or "recipe" not in card:
        raise ValueError(f"{model_id} was not trained by effviz.train: it has no recipe to re-measure")
    model, _ = build_pretrained(model_id)
    task = _task(card["task"], model.config, data, card["recipe"]["seed"], card.get("test_speaker"))
    measured = scores(model, task)
    reported = {k: v for k, v in card.get("metrics", {}).items() if not k.startswith("train")}
    return {name: {"card": reported.get(name), "measured": value} for name, value in measured.items()}


def warm_start(model: EffvizModel, model_id: str, folder: Path | None = None) -> dict | None:
    """Load the weights of ``WARM_START[model_id]`` into every matching parameter: the bundled ones
    (weights/), or those saved in ``folder`` (a cross-validation fold of that speech model, whose
    card must name it). Refuses a source with a parameter the model lacks or shapes that differ:
    the architectures must agree everywhere but in what the multimodal model adds. Returns the
    source's id, the sha256 of its weights and the names of the parameters left fresh; None without
    a source."""
    source = WARM_START.get(model_id)
    if source is None:
        if folder is not None:
            raise ValueError(f"{model_id} is trained from scratch; it takes no warm start")
        return None
    if folder is None:
        from .api import load_model

        state = load_model(source).state_dict()
        folder = weight_folders()[source]
    else:
        card = json.loads((folder / "card.json").read_text()) if (folder / "card.json").is_file() else {}
        if card.get("model_id") != source:
            raise ValueError(f"{model_id} starts from {source}; {folder} holds {card.get('model_id') or 'no card'}")
        state = EffvizModel.from_pretrained(str(folder)).state_dict()
    own = model.state_dict()
    foreign = [k for k in state if k not in own or own[k].shape != state[k].shape]
    if foreign:
        raise ValueError(f"cannot start {model_id} from {source}: no matching parameter for {foreign}")
    missing = model.load_state_dict(state, strict=False).missing_keys
    log.info("%s starts from %s (%s); new parameters: %s", model_id, source, folder, ", ".join(missing))
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    return {"model": source, "sha256": sha, "fresh": missing}


def _task(task_name: str, cfg: ModelConfig, data: dict[str, str], seed: int, test_speaker: str | None):
    if task_name == "audio":
        return FsddTask(cfg, data, seed, test_speaker)
    if task_name == "audio-visual":
        return DigitsAVTask(cfg, data, seed, test_speaker or VAL_SPEAKER)
    if test_speaker is not None:
        raise ValueError(f"a test speaker applies to speech and audio-visual models only, not to {task_name} models")
    return TASKS[task_name](cfg, data, seed)


def _train_size(task) -> int:
    if isinstance(task, CifarTask):
        return len(task.train_y)
    if isinstance(task, FsddTask):
        return len(task.digit_rows) + task.no_digit_per_epoch
    return len(task.train_img_y)


def save_bundled(model: EffvizModel, card: dict, out_dir: Path) -> None:
    """config.json + model.safetensors (PyTorchModelHubMixin layout), card.json with the weights'
    sha256 (checked at load), and a human-readable README.md card."""
    model.save_pretrained(out_dir)
    card["sha256"] = hashlib.sha256((out_dir / "model.safetensors").read_bytes()).hexdigest()
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out_dir / "README.md").write_text(render_card(card))


# What each evaluation set of a card is. The synthetic-voice and no-digit sets were looked at while
# the speech recipe was designed (its non-word vocabulary was widened after no_digit_words came out
# at 48-75%): they are validation numbers. No FSDD test speaker was looked at before its fold ran.
METRIC_NOTES = {
    "speaker": "digits by the FSDD speaker left out of training (test)",
    "synthetic_voices": "digits in 10 espeak-ng voices no training clip uses (validation)",
    "no_digit_words": "words that are not digits, in those voices: answered \"no digit\" (validation)",
    "no_digit_sounds": "silence, noise, bursts, tones and chords (fresh draws): answered \"no digit\" (validation)",
    "val": "held-out split (validation)",
}


def _metric_line(name: str, value) -> str:
    base = name.removesuffix("_digits_only")
    note = METRIC_NOTES.get(base, "")
    if base != name:
        note = f"{note}, were \"no digit\" not an answer" if note else "were \"no digit\" not an answer"
    shown = f"{value:.4f}" if isinstance(value, float) else str(value)
    return f"| {name} | {shown} | {note} |"


def _cross_validation(cv: dict | None) -> str:
    if not cv:
        return ""
    folds = cv["folds"]
    rows = "\n".join(f"| {s} | {100 * f['speaker']:.1f}% | {100 * f['synthetic_voices']:.1f}% | "
                     f"{100 * f['no_digit_words']:.1f}% | {100 * f['no_digit_sounds']:.1f}% |" for s, f in folds.items())
    return f"""## Leave-one-speaker-out cross-validation

The same recipe trained {len(folds)} times, each time on all FSDD speakers but one and tested on that one
(nothing chosen on it): **mean {100 * cv['mean']:.1f}%, worst {100 * cv['worst']:.1f}%** ({cv['worst_speaker']}).
Were "no digit" not an answer, the mean would be {100 * cv['mean_speaker_digits_only']:.1f}%.
`{cv['command']}`

| test speaker | speaker's digits | synthetic voices | no digit: words | no digit: sounds |
|---|---|---|---|---|
{rows}

"""


def _av_cross_validation(cv: dict | None) -> str:
    """An audio-visual model's folds: each from its speech model's fold of the same left-out speaker."""
    if not cv:
        return ""
    rows = "\n".join(f"| {s} | " + " | ".join(f"{100 * f[k]:.1f}%" for k in ("audio_only", "image_only", "both",
                                                                          "noisy_audio_only", "noisy_both")) + " |"
                     for s, f in cv["folds"].items())
    return f"""## Leave-one-speaker-out cross-validation

The same recipe trained {len(cv['folds'])} times, each time from the speech model's fold that left one FSDD speaker out,
and tested on that speaker's digits paired with the same held-out images (nothing chosen on them): speech alone
**mean {100 * cv['mean']:.1f}%, worst {100 * cv['worst']:.1f}%** ({cv['worst_speaker']}); both inputs mean
{100 * cv['mean_both']:.1f}%, worst {100 * cv['worst_both']:.1f}%.
`{cv['command']}`

| test speaker | speech alone | image alone | both | noisy: speech alone | noisy: both |
|---|---|---|---|---|---|
{rows}

"""


def _siblings(card: dict) -> str:
    """A hybrid or experts model beside the plain models its recipe also trains, fold for fold."""
    siblings = card.get("siblings")
    if not siblings:
        return ""
    mine = card["cross_validation"]
    speakers = list(mine["folds"])
    rows = [(card["model_id"], card.get("mixers", card["mixer"]), card["params"], mine), *(
        (name, s["mixer"], s["params"], s["cross_validation"]) for name, s in siblings.items())]
    lines = "\n".join(f"| `{name}` | {mixer} | {params / 1e6:.2f} M | "
                      + " | ".join(f"{100 * cv['folds'][s]['speaker']:.1f}%" for s in speakers)
                      + f" | **{100 * cv['mean']:.1f}%** | {100 * cv['worst']:.1f}% |" for name, mixer, params, cv in rows)
    return f"""## Beside its siblings

The plain speech models' cross-validation folds (`docs/speech-cv.json`), trained by the same recipe on the
same folds: accuracy on each left-out speaker.

| model | token mixer | parameters | {' | '.join(speakers)} | mean | worst |
|---|---|---|{'---|' * len(speakers)}---|---|
{lines}

"""


def _calibration(card: dict) -> str:
    c = card.get("no_digit_calibration")
    if not c:
        return ""
    return (f'"No digit" is calibrated: its logit is shifted by {c["shift"]:+.1f}, the shift that answers "no digit" '
            f'for the most non-digits while costing the digits at most {c["max_cost"]:.0%} against the best digit '
            f'alone, on {c["clips"]["digits"]} digits and {c["clips"]["non_digits"]} non-digits in ten espeak-ng voices '
            f'and 40 words that no training or test clip uses (digits {c["before"]["digits"]:.1%} → {c["after"]["digits"]:.1%}, non-digits '
            f'{c["before"]["no_digit"]:.1%} → {c["after"]["no_digit"]:.1%}; the best digit alone: '
            f'{c["digits_only"]:.1%}). Before it: ' + ", ".join(
                f"{k} {v:.1%}" for k, v in card["uncalibrated_metrics"].items() if not k.startswith("train")) + ".\n\n")


def render_card(card: dict) -> str:
    m = card["metrics"]
    metric_lines = "\n".join(_metric_line(k, v) for k, v in m.items())
    r = card["recipe"]
    source = card.get("initialised_from")
    warm = (f"\n| initialised from | `weights/{source['model']}` (sha256 `{source['sha256'][:12]}…`, trained by the same "
            f"script), then trained on the data above; fresh parameters at {r.get('fresh_lr_scale', 1.0)}x the learning rate |"
            if source else "")
    how = "trained" if source else "trained from scratch"
    cv_table = _av_cross_validation if card["task"] == "audio-visual" else _cross_validation
    cross_validation = cv_table(card.get("cross_validation"))
    return f"""# {card['model_id']}

Bundled effviz model ({card['task']}, **{card.get('mixers', card['mixer'] + ' token mixer')}**), {how} by
`python -m effviz.train {card['model_id']}`.

| | |
|---|---|
| parameters | {card['params']:,}{f" (one token passes through {card['active_params']:,})" if 'active_params' in card else ''} |
| forward FLOPs (one input at training size; matmuls+convs) | {card['forward_flops'] / 1e6:.1f} M |
| training time | {card['train_seconds'] / 60:.1f} min on {counted(card['threads'], 'CPU thread')} |
| data | {card['data']} |{warm}
| recipe | {r['epochs']} epochs, AdamW lr {r['lr']} wd {r['weight_decay']}, batch {r['batch_size']}, {_schedule(r)}, label smoothing {r['label_smoothing']}, seed {r['seed']} |

## Accuracy (last epoch)

| metric | value | on |
|---|---|---|
{metric_lines}

{_fusion_line(m) if card['task'] == 'audio-visual' else ''}{_calibration(card)}{cross_validation}{_siblings(card)}## What limits it

{RECIPE_LIMITS[card['task']]}

sha256 of model.safetensors: `{card['sha256']}`
"""


def _schedule(recipe: dict) -> str:
    cycles = recipe.get("cycles", 1)
    if cycles == 1:
        return f"warmup {recipe['warmup_epochs']} epochs + cosine"
    return (f"{cycles} cosine cycles of {recipe['epochs'] / cycles:g} epochs, each after a {recipe['warmup_epochs']}-epoch "
            "warmup")


def _fusion_line(metrics: dict) -> str:
    """Whether both modalities together beat the better single one, clean and under noise; empty
    for a card without those six accuracies."""
    names = [f"{p}{m}" for p in ("", "noisy_") for m in ("both", "image_only", "audio_only")]
    if not all(name in metrics for name in names):
        return ""
    parts = []
    for prefix, condition in (("", "clean"), ("noisy_", "noisy")):
        both = metrics[f"{prefix}both"]
        best = max(metrics[f"{prefix}image_only"], metrics[f"{prefix}audio_only"])
        verdict = "better than" if both > best else "not better than"
        parts.append(f"{condition}: both {both:.1%}, {verdict} the better single input ({best:.1%})")
    return "Fusion, " + "; ".join(parts) + ".\n\n"


def data_files(folder: str | Path) -> dict[str, str]:
    """The training data files in ``folder`` (this project's ``../shared/data`` layout)."""
    folder = Path(folder)
    return {"cifar10": str(folder / "cifar10-train.zip"), "fsdd": str(folder / "fsdd-5speakers.zip"),
            "mnist": str(folder / "mnist-8k.npz")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m effviz train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_id", choices=sorted(BUNDLED_RECIPES))
    parser.add_argument("--data", default="../shared/data", help="folder holding the data files")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (for quick runs)")
    parser.add_argument("--cycles", type=int, help="override the recipe's number of cosine learning-rate cycles")
    parser.add_argument("--limit-batches", type=int, help="stop each epoch after this many batches (smoke runs)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--resume", action="store_true", help="continue from runs/<id>/last.pt")
    parser.add_argument("--out", type=Path, help="output folder (default weights/<id>)")
    parser.add_argument("--test-speaker", help="speech and audio-visual models: leave this FSDD speaker out and "
                        f"test on it (audio-visual models leave out {VAL_SPEAKER!r} by default)")
    parser.add_argument("--warm-start", type=Path, metavar="DIR",
                        help="audio-visual models: start from the speech model saved in DIR (a cross-validation "
                             "fold) instead of the bundled one")
    parser.add_argument("--seed", type=int, help="override the recipe's seed (0): another split, bank, initialisation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = data_files(args.data)
    card = train(args.model_id, data, epochs=args.epochs, resume=args.resume, out_dir=args.out,
                 limit_batches=args.limit_batches, test_speaker=args.test_speaker, seed=args.seed,
                 warm_from=args.warm_start, cycles=args.cycles)
    print(json.dumps(card["metrics"], indent=2))


if __name__ == "__main__":
    main()
