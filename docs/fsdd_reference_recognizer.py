"""How hard is each FSDD speaker for a recognizer that has heard many voices? CMU PocketSphinx's
US English acoustic model (trained on many speakers; it comes with ``pip install pocketsphinx``)
with a grammar of the ten digit words, over each speaker's 500 clips: accuracy and confusions.

A reference for the leave-one-speaker-out table of the speech recipe, not a competitor: that
acoustic model expects 16 kHz wideband speech and FSDD is 8 kHz (upsampled here, so its top
bands are empty), which handicaps its absolute accuracy. What it shows is which speakers are
hard for a model that was not trained on the other four, and which of their digits it mishears.
``--folds`` adds the confusions of effviz speech models trained with a speaker held out
(``python -m effviz.train MODEL --test-speaker S --out DIR``) on that speaker, side by side.

    pip install pocketsphinx
    python docs/fsdd_reference_recognizer.py --data ../shared/data --json docs/fsdd-reference-recognizer.json \
        [--folds runs/cv/audio-rwkv-fsdd/nicolas ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torchaudio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, effviz not installed

from effviz.data.datasets import load_fsdd  # noqa: E402
from effviz.data.synthetic_speech import DIGIT_WORDS  # noqa: E402

RATE = 16000  # the acoustic model's
PAD_SECONDS = 0.2  # silence each side: FSDD's clips are cut tight, the decoder expects some


def recognise(decoder, wave: np.ndarray) -> int | None:
    """The digit the decoder hears in ``wave`` (float, RATE), None when it hears none."""
    pad = np.zeros(int(PAD_SECONDS * RATE), np.float32)
    wave = np.concatenate([pad, wave / max(np.abs(wave).max(), 1e-6) * 0.5, pad])  # peak at -6 dBFS
    decoder.start_utt()
    decoder.process_raw((wave * 32767).astype(np.int16).tobytes(), full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    word = hyp.hypstr.strip() if hyp is not None else ""
    return DIGIT_WORDS.index(word) if word in DIGIT_WORDS else None


def fold_confusions(folder: str, data: str) -> tuple[str, np.ndarray]:
    """The held-out speaker of the fold model in ``folder`` and its (digit, answer) counts on that
    speaker's clips, read as training evaluates them (column 10: "no digit")."""
    from effviz.models import EffvizModel
    from effviz.train import FsddTask, data_files

    card = json.loads((Path(folder) / "card.json").read_text())
    model = EffvizModel.from_pretrained(folder, strict=True).eval()
    task = FsddTask(model.config, data_files(data), card["recipe"]["seed"], card["test_speaker"])
    (batch, labels), = dict(task.val_sets())["speaker"]
    with torch.no_grad():
        answers = model(**batch).argmax(-1)
    counts = np.zeros((10, 11), int)
    np.add.at(counts, (labels.numpy(), answers.numpy()), 1)
    return card["test_speaker"], counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder with fsdd-5speakers.zip")
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--folds", nargs="*", default=[], help="effviz fold models (folders) to set beside it")
    args = parser.parse_args()
    from pocketsphinx import Decoder  # a reference tool's dependency, not effviz's

    with tempfile.TemporaryDirectory() as folder:
        grammar = Path(folder) / "digits.gram"
        grammar.write_text("#JSGF V1.0;\ngrammar digits;\npublic <digit> = " + " | ".join(DIGIT_WORDS) + " ;\n")
        decoder = Decoder(jsgf=str(grammar), samprate=RATE, loglevel="FATAL")
    right: dict[str, list[bool]] = defaultdict(list)
    confusions: dict[str, np.ndarray] = defaultdict(lambda: np.zeros((10, 11), int))  # column 10: none
    for clip in load_fsdd(str(Path(args.data) / "fsdd-5speakers.zip")):
        wave = torchaudio.functional.resample(torch.from_numpy(clip.waveform), clip.sample_rate, RATE).numpy()
        heard = recognise(decoder, wave)
        right[clip.speaker].append(heard == clip.digit)
        confusions[clip.speaker][clip.digit, 10 if heard is None else heard] += 1
    result = {"recognizer": "pocketsphinx en-us, JSGF grammar of the ten digit words",
              "speakers": {s: {"accuracy": round(float(np.mean(v)), 4), "clips": len(v),
                               "confusions": confusions[s].tolist()} for s, v in sorted(right.items())}}
    for folder in args.folds:
        speaker, counts = fold_confusions(folder, args.data)
        result["speakers"][speaker].setdefault("effviz_folds", {})[Path(folder).as_posix()] = {
            "accuracy": round(float(np.trace(counts) / counts.sum()), 4), "confusions": counts.tolist()}
    for speaker, r in result["speakers"].items():
        worst = np.argsort(np.diag(np.array(r["confusions"])[:, :10]))[:2]
        print(f"{speaker:10s} {100 * r['accuracy']:5.1f}%  hardest digits: {', '.join(DIGIT_WORDS[d] for d in worst)}")
        for folder, fold in r.get("effviz_folds", {}).items():
            worst = np.argsort(np.diag(np.array(fold["confusions"])[:, :10]))[:2]
            print(f"{'':10s} {100 * fold['accuracy']:5.1f}%  hardest digits: {', '.join(DIGIT_WORDS[d] for d in worst)}  ({folder})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
