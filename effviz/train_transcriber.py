"""Train a streaming digit transcriber: one recipe for the four causal models (Mamba, RWKV, RetNet,
transformer), CTC over connected-digit utterances (``effviz.data.connected_digits``).

    python -m effviz.train_transcriber mamba-digits-stream --data ../shared/data [--test-speaker theo] [--seed 0]

Training utterances string together the digits of the FSDD speakers other than the test speaker
and of the synthetic training voices (``synthetic_speech.TRAIN_VOICES``), corrupted (room,
microphone, noise, speed). Waveform corruption and the fbank cost more than a training step of
these models on a CPU, so ``BANK_UTTERANCES`` utterances are made once per seed and cached on disk,
shared by every model; each epoch draws SpecAugment afresh. Measured on: 300 clean strings of the
test speaker's digits (the card's "test", never used to choose anything) and 300 strings of
digits in the ten synthetic test voices (``synthetic_speech.TEST_VOICES``).

The head has CTC's outputs (blank and the digits) and is decoded as CTC is (greedy: repeats
merged, blanks dropped), but it is trained on the alignment the utterances are built with: a
cross-entropy per token against each digit's label on the tokens from the first that has heard all
of it (``ALIGNED_TOKENS``), blank on the others. CTC's loss (``Recipe.ctc_weight``) from scratch
left these small models at the all-blank plateau for the whole CPU budget; the alignment gives
every token a target from the first step.

The card reports the digit error rate (edit distance over reference digits) and the saved model
is the last epoch's (no selection on any measured set).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio

from .convert.loading import file_sha256
from .data import synthetic_speech
from .data.connected_digits import connected_utterance, digit_error_rate, spoken_part
from .data.speech_augment import room_impulse_responses, spec_augment
from .models.backbone import speech_frames
from .models.config import ModelConfig
from .models.registry import TRANSCRIBER_RECIPES
from .models.transcriber import Transcriber
from .streaming import TRANSCRIBERS_DIR, causal_fbank, frame_geometry, transcribe_waveform
from .train import RUNS_DIR, _cache_root, data_files, evict_stale_banks, fsdd_waves

TEST_SPEAKER = "theo"
BANK_UTTERANCES = 4000
TEST_UTTERANCES = 300
TEST_SEED = 30_000
# Tokens that carry a digit's label in the alignment: the first that has heard all of it and the
# next ones (120 ms). The next digit takes longer than that to be heard, so the label never runs
# into it, and greedy decoding merges the repeats into one digit.
ALIGNED_TOKENS = 3  # the test strings' generator: no training run seeds it


@dataclass(frozen=True)
class Recipe:
    epochs: int = 8
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.2
    alignment_weight: float = 1.0
    ctc_weight: float = 0.0


RECIPE = Recipe()


class ConnectedDigitsTask:
    """The training bank and the two test sets of one fold (``test_speaker`` held out)."""

    def __init__(self, model: Transcriber, fsdd: str, test_speaker: str, seed: int = 0,
                 bank_utterances: int = BANK_UTTERANCES):
        self.cfg = cfg = model.config
        rate = cfg.sample_rate
        waves, labels, speakers = fsdd_waves(fsdd, rate)
        if test_speaker not in speakers:
            raise ValueError(f"test speaker {test_speaker!r} is not in {fsdd} ({', '.join(sorted(set(speakers)))})")
        fsdd_clips = [(spoken_part(w, rate), int(y)) for w, y, s in zip(waves, labels, speakers) if s != test_speaker]
        synthetic = [(spoken_part(self._resampled(u.waveform), rate), u.digit)
                     for u in synthetic_speech.synthesize_pairs(
                         [(w, v) for v in synthetic_speech.TRAIN_VOICES for w in synthetic_speech.DIGIT_WORDS])]
        self.train_clips = fsdd_clips + synthetic
        self.test_clips = [(spoken_part(w, rate), int(y)) for w, y, s in zip(waves, labels, speakers) if s == test_speaker]
        test_voices = [u for u in synthetic_speech.test_utterances() if u.digit is not None]
        self.voice_clips = [(spoken_part(self._resampled(u.waveform), rate), u.digit) for u in test_voices]
        self.seed, self.bank_utterances = seed, bank_utterances
        # What the features depend on.
        framing = [cfg.sample_rate, cfg.mel_bins, cfg.fbank_wave_scale, cfg.fbank_mean, cfg.fbank_std]
        voices = [v.label for v in synthetic_speech.TRAIN_VOICES]
        key = hashlib.sha256(json.dumps([framing, file_sha256(Path(fsdd)), test_speaker, voices, seed, bank_utterances,
                                         len(self.train_clips), _source_hash()]).encode()).hexdigest()[:16]
        self.bank_path = _cache_root() / "connected-digits" / f"{key}.pt"
        self.data_note = (f"connected strings of 1-15 digits from {len(fsdd_clips)} FSDD clips of the speakers but "
                          f"'{test_speaker}' and {len(synthetic)} synthetic clips ({len(synthetic_speech.TRAIN_VOICES)} "
                          f"voices); {bank_utterances} corrupted utterances")
        self._bank: tuple[list[torch.Tensor], list[list[int]]] | None = None

    def _resampled(self, wave: torch.Tensor) -> torch.Tensor:
        return torchaudio.functional.resample(wave, synthetic_speech.RATE, self.cfg.sample_rate)

    def bank(self) -> tuple[list[torch.Tensor], list[list[int]], list[list[int]]]:
        """(features (frames, mel) float16, digits, the sample where each digit ends) of every
        training utterance: cached on disk."""
        if self._bank is None:
            if self.bank_path.is_file():
                os.utime(self.bank_path)  # recently used: evict_stale_banks keeps it
                saved = torch.load(self.bank_path, weights_only=True)
                self._bank = saved["features"], saved["digits"], saved["ends"]
            else:
                gen = torch.Generator().manual_seed(self.seed)
                rirs = room_impulse_responses(self.cfg.sample_rate)
                features, digits, ends = [], [], []
                for _ in range(self.bank_utterances):
                    wave, labels, label_ends = connected_utterance(self.train_clips, self.cfg.sample_rate, gen, rirs)
                    features.append(causal_fbank(wave, self.cfg).half())
                    digits.append(labels)
                    ends.append(label_ends)
                self.bank_path.parent.mkdir(parents=True, exist_ok=True)
                evict_stale_banks(self.bank_path.parent, keep=self.bank_path)
                partial = self.bank_path.with_name(f"{self.bank_path.name}.{os.getpid()}.partial")
                torch.save({"features": features, "digits": digits, "ends": ends}, partial)
                os.replace(partial, self.bank_path)
                self._bank = features, digits, ends
        return self._bank

    def speech_prior(self) -> tuple[torch.Tensor, float]:
        """The running mean normalisation's prior: the per-bin mean of the training utterances'
        speech frames (``backbone.speech_frames`` of each) and the median of their
        loudest frame's energy."""
        total, count, peaks = torch.zeros(self.cfg.mel_bins, dtype=torch.float64), 0, []
        for features in self.bank()[0]:
            features = features.float()
            speech = speech_frames(features, self.cfg.fbank_std)
            total += features[speech].double().sum(0)
            count += int(speech.sum())
            peaks.append(float(features.mean(-1).max()))
        return (total / count).float(), float(torch.tensor(peaks).median())

    def batches(self, batch_size: int, gen: torch.Generator):
        """Shuffled batches: (features (batch, frames, mel) zero-padded at the end, their frame
        counts, targets (batch, digits) as class ids, their lengths, and the aligned targets
        (batch, tokens), -100 on padding)."""
        features, digits, ends = self.bank()
        order = torch.randperm(len(features), generator=gen).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows = order[start:start + batch_size]
            # SpecAugment's masks scaled to 40 bins (it masks up to 12 of 128 for the classifiers).
            x = [spec_augment(features[r].float(), gen, self.cfg.mel_bins, freq_width=4) for r in rows]
            lengths = torch.tensor([f.shape[0] for f in x])
            padded = torch.zeros(len(x), int(lengths.max()), self.cfg.mel_bins)
            for i, f in enumerate(x):
                padded[i, : f.shape[0]] = f
            targets = [torch.tensor(digits[r]) + 1 for r in rows]  # class 0 is the blank
            per_token = self.cfg.audio_patch_stride
            aligned = torch.full((len(rows), int(lengths.max()) // per_token), -100, dtype=torch.long)
            for i, r in enumerate(rows):
                tokens = int(lengths[i]) // per_token
                aligned[i, :tokens] = aligned_targets(self.cfg, digits[r], ends[r], tokens)
            yield padded, lengths, torch.nn.utils.rnn.pad_sequence(targets, batch_first=True), \
                torch.tensor([len(t) for t in targets]), aligned

    def test_sets(self) -> dict[str, list[tuple[torch.Tensor, list[int]]]]:
        """Clean connected strings: of the test speaker's digits, and of the synthetic test voices'."""
        sets = {}
        for name, clips in (("speaker", self.test_clips), ("synthetic_voices", self.voice_clips)):
            gen = torch.Generator().manual_seed(TEST_SEED)
            sets[name] = [connected_utterance(clips, self.cfg.sample_rate, gen)[:2] for _ in range(TEST_UTTERANCES)]
        return sets


def aligned_targets(cfg: ModelConfig, digits: list[int], ends: list[int], tokens: int) -> torch.Tensor:
    """(tokens,) class ids: each digit's (digit + 1) on the ``ALIGNED_TOKENS`` tokens from the
    first whose frames reach the end of its clip (``ends``, in samples), 0 (blank) elsewhere."""
    window, shift = frame_geometry(cfg.sample_rate)
    per_token = cfg.audio_patch_stride
    targets = torch.zeros(tokens, dtype=torch.long)
    for digit, end in zip(digits, ends):
        # token t's last frame ends at sample ((t + 1) * per_token - 1) * shift + window
        token = min(max(0, math.ceil(((end - window) / shift + 1) / per_token) - 1), tokens - 1)
        targets[token:token + ALIGNED_TOKENS] = digit + 1
    return targets


def _source_hash() -> str:
    """The bank is remade when the code that builds it changes."""
    from .data import connected_digits, speech_augment

    return hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (connected_digits, speech_augment))).hexdigest()[:12]


def error_rates(model: Transcriber, sets: dict[str, list[tuple[torch.Tensor, list[int]]]]) -> dict[str, float]:
    """Digit error rate of greedy CTC transcripts on every set."""
    model.eval()
    rates = {}
    for name, utterances in sets.items():
        pairs = [(digits, [int(d.label) for d in transcribe_waveform(model, wave)]) for wave, digits in utterances]
        rates[name] = digit_error_rate(pairs)
    return rates


def transcriber_loss(model: Transcriber, audio: torch.Tensor, frames: torch.Tensor, targets: torch.Tensor,
                     target_lengths: torch.Tensor, aligned: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """``alignment_weight`` x the cross-entropy of every real token against ``aligned``, plus
    ``ctc_weight`` x CTC."""
    log_probs = model(audio).float().log_softmax(-1)  # the model is causal: padding at the end changes no real token
    loss = recipe.alignment_weight * F.nll_loss(log_probs.flatten(0, 1), aligned.flatten(), ignore_index=-100)
    if recipe.ctc_weight:
        tokens = frames // model.frames_per_token
        loss = loss + recipe.ctc_weight * F.ctc_loss(log_probs.transpose(0, 1), targets, tokens, target_lengths,
                                                     blank=0, zero_infinity=True)
    return loss


def train_transcriber(model_id: str, fsdd: str, test_speaker: str = TEST_SPEAKER, epochs: int | None = None,
                      out_dir: Path | None = None, seed: int = 0, recipe: Recipe = RECIPE,
                      bank_utterances: int = BANK_UTTERANCES, resume: bool = False) -> dict:
    """Train ``model_id`` (a ``TRANSCRIBER_RECIPES`` entry) without ``test_speaker``; save it with its card
    under ``out_dir`` (default ``weights/transcribers/<id>``). Checkpoints every epoch in
    ``runs/<id>-without-<speaker>/last.pt``; ``resume`` continues from there."""
    if model_id not in TRANSCRIBER_RECIPES:
        raise ValueError(f"unknown transcriber recipe {model_id!r}; known: {', '.join(TRANSCRIBER_RECIPES)}")
    epochs = epochs or recipe.epochs
    torch.manual_seed(seed)
    model = Transcriber(TRANSCRIBER_RECIPES[model_id]())
    task = ConnectedDigitsTask(model, fsdd, test_speaker, seed, bank_utterances)
    if model.config.audio_cmn:
        prior_mean, prior_peak = task.speech_prior()
        model.speech_prior_mean.copy_(prior_mean)
        model.speech_prior_peak.fill_(prior_peak)
    steps_per_epoch = len(task.bank()[0]) // recipe.batch_size
    total, warmup = epochs * steps_per_epoch, max(1, int(recipe.warmup_epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    run_dir = RUNS_DIR / f"{model_id}-without-{test_speaker}"
    checkpoint = run_dir / "last.pt"
    history, start_epoch, seconds = [], 0, 0.0
    if resume and checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        history, start_epoch, seconds = saved["history"], saved["epoch"], saved["seconds"]
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(start_epoch):  # the same batches as an uninterrupted run
        for _ in task.batches(recipe.batch_size, gen):
            pass
    for epoch in range(start_epoch, epochs):
        began, losses = time.perf_counter(), []
        model.train()
        for i, (audio, frames, targets, target_lengths, aligned) in enumerate(task.batches(recipe.batch_size, gen)):
            step = epoch * steps_per_epoch + i
            lr = recipe.lr * min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / total)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = transcriber_loss(model, audio, frames, targets, target_lengths, aligned, recipe)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
        seconds += time.perf_counter() - began
        history.append({"epoch": epoch + 1, "train_loss": round(sum(losses) / len(losses), 4),
                        "seconds": round(seconds, 1)})
        print(json.dumps(history[-1]), flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
                    "epoch": epoch + 1, "seconds": seconds}, checkpoint)
    rates = error_rates(model, task.test_sets())
    card = {
        "model": model_id, "kind": "streaming digit transcriber (CTC)", "mixer": model.config.mixer,
        "params": sum(p.numel() for p in model.parameters()), "test_speaker": test_speaker,
        "metrics": {f"der_{name}": round(rate, 4) for name, rate in rates.items()},
        "data": task.data_note, "recipe": asdict(recipe) | {"epochs": epochs}, "history": history,
        "train_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
        "speech_mean": model.config.audio_cmn,
    }
    save_transcriber(model, card, out_dir or TRANSCRIBERS_DIR / model_id)
    return card


def save_transcriber(model: Transcriber, card: dict, out_dir: Path) -> None:
    """config.json + model.safetensors, card.json with the weights' sha256 (checked at load), README.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    card["sha256"] = hashlib.sha256((out_dir / "model.safetensors").read_bytes()).hexdigest()
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out_dir / "README.md").write_text(render_card(card))


# Both sets were looked at (on 60 utterances each) while the loss was chosen (alignment
# cross-entropy, SpecAugment scaled to 40 bins): validation numbers, not held-out ones.
METRIC_NOTES = {
    "der_speaker": "connected digits of the FSDD speaker left out of training (validation)",
    "der_synthetic_voices": "connected digits in 10 espeak-ng voices no training clip uses (validation)",
}


def render_card(card: dict) -> str:
    rows = "\n".join(f"| {METRIC_NOTES.get(k, k)} | {100 * v:.1f}% |" for k, v in card["metrics"].items())
    return f"""# {card['model']}

A {card['kind']} with the {card['mixer']} mixer, {card['params']:,} parameters, trained by
`python -m effviz.train_transcriber {card['model']}` ({card['train_seconds']:.0f} s, {card['threads']} thread(s)).
It reads 8 kHz audio as 40-bin fbank frames{" less the running mean of the stream's speech so far" if card.get("speech_mean") else ""};
every 40 ms a token reads the last 320 ms of them, and streams with the state of the chunks
before (see `effviz.streaming`). Its head has CTC's outputs (blank and the digits) and is
decoded as CTC is; it was trained by cross-entropy on the alignment the utterances are built with{" plus CTC" if card["recipe"].get("ctc_weight") else ""}, {card["recipe"]["epochs"]} epochs of batches of {card["recipe"]["batch_size"]}.

Data: {card['data']}.

| digit error rate (edit distance / reference digits), greedy CTC | |
|---|---|
{rows}

The saved weights are the last epoch's; no checkpoint was selected on these sets, but both were
looked at while the recipe's loss was chosen, so they are validation numbers.

sha256 of model.safetensors: `{card['sha256']}`
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m effviz.train_transcriber", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(TRANSCRIBER_RECIPES))
    parser.add_argument("--data", required=True, help="folder with the FSDD zip (see ../shared/data/README)")
    parser.add_argument("--test-speaker", default=TEST_SPEAKER)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int, default=0, help="the bank's, the initialisation's and the batches' (default 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out", type=Path, help="folder to save to (default weights/transcribers/<model>)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    card = train_transcriber(args.model, data_files(args.data)["fsdd"], args.test_speaker, args.epochs, args.out,
                             seed=args.seed, resume=args.resume)
    print(json.dumps(card["metrics"], indent=2))


if __name__ == "__main__":
    main()
