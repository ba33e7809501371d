"""Leave-one-speaker-out cross-validation of the speech recipe over FSDD's five speakers.

Each fold trains a speech model on four speakers (plus the recipe's synthetic voices and
non-word sounds) and tests it on the fifth; nothing is chosen on the test speaker (the last
epoch is reported, the recipe is the same for every fold, the "no digit" calibration uses its
own synthetic voices). The folds' accuracies, their mean and worst, go to ``docs/speech-cv.json``.
The fold that leaves out ``theo`` is the bundled model (``weights/<id>/``, the speaker the
audio-visual models validate on), and its card gets the cross-validation table.

An audio-visual model's fold starts from its speech model's fold of the same speaker (so that
speaker's voice reaches neither) and is tested on that speaker's digits paired with the same
1,000 held-out MNIST images: its speech alone, image alone and both, clean and noisy. Its speech
model's folds are trained first.

    python docs/speech_cv.py --data ../shared/data --train   # train missing folds (2 at a time)
    python docs/speech_cv.py                                 # collect finished folds only
    python docs/speech_cv.py --models aum-hybrid-fsdd        # collect and bundle these models only

A hybrid or experts model's card also gets its plain siblings' folds, trained the same way.

A fold writes ``runs/cv/<model>/<speaker>/`` (the model, its card, its epoch history) and
resumes from ``runs/<model>-without-<speaker>/last.pt`` if interrupted.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from effviz.data.datasets import load_fsdd  # noqa: E402
from effviz.models import EffvizModel  # noqa: E402
from effviz.models.registry import BUNDLED_RECIPES, task_of, weight_folders  # noqa: E402
from effviz.train import (VAL_SPEAKER, WARM_START, architecture_notes, calibrate_saved, data_files,  # noqa: E402
                          render_card)

CV_DIR = REPO / "runs" / "cv"
SPEECH_MODELS = [m for m in BUNDLED_RECIPES if task_of(BUNDLED_RECIPES[m]()) == "audio"]
AV_MODELS = [m for m in BUNDLED_RECIPES if task_of(BUNDLED_RECIPES[m]()) == "audio-visual"]
# The plain models, one per token mixer; the others are hybrid or experts variants of them.
PLAIN = [m for m in SPEECH_MODELS
         if not BUNDLED_RECIPES[m]().mixer_schedule and BUNDLED_RECIPES[m]().channel_mixer != "moe"]
# Averaged over the folds beside the test speaker's accuracy.
ALSO = ("speaker_digits_only", "synthetic_voices", "no_digit_words", "no_digit_sounds")
# An audio-visual fold's accuracies; the first (speech alone) is the one its mean and worst are of.
AV_METRICS = ("audio_only", "both", "image_only", "noisy_audio_only", "noisy_both", "noisy_image_only")


def fold_card(model: str, speaker: str) -> dict | None:
    path = CV_DIR / model / speaker / "card.json"
    return json.loads(path.read_text()) if path.is_file() else None


def train_fold(model: str, speaker: str, data: str) -> None:
    command = [sys.executable, "-m", "effviz.train", model, "--data", data, "--threads", "1", "--resume",
               "--test-speaker", speaker, "--out", str(CV_DIR / model / speaker)]
    if model in WARM_START:
        command += ["--warm-start", str(CV_DIR / WARM_START[model] / speaker)]
    log = REPO / "runs" / "logs" / f"{model}-{speaker}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=True)


def summarise(model: str, speakers: list[str]) -> dict | None:
    cards = {s: fold_card(model, s) for s in speakers}
    if any(c is None for c in cards.values()):
        return None
    if model in AV_MODELS:
        folds = {s: {k: c["metrics"][k] for k in AV_METRICS} for s, c in cards.items()}
        speech = {s: f["audio_only"] for s, f in folds.items()}
        return {
            "mean": statistics.mean(speech.values()),
            "worst": min(speech.values()),
            "worst_speaker": min(speech, key=speech.get),
            **{f"mean_{k}": statistics.mean(f[k] for f in folds.values()) for k in AV_METRICS},
            "worst_both": min(f["both"] for f in folds.values()),
            "folds": folds,
            "initialised_from": {s: c["initialised_from"] for s, c in cards.items()},
            "recipe": cards[speakers[0]]["recipe"],
            "command": "python docs/speech_cv.py --data ../shared/data --train",
        }
    folds = {s: {**{k: c["metrics"][k] for k in ("speaker", *ALSO)},
                 "uncalibrated": {k: c["uncalibrated_metrics"][k] for k in ("speaker", *ALSO)},
                 "no_digit_shift": c["no_digit_calibration"]["shift"]} for s, c in cards.items()}
    accuracy = [f["speaker"] for f in folds.values()]
    return {
        "mean": statistics.mean(accuracy),
        "worst": min(accuracy),
        "worst_speaker": min(folds, key=lambda s: folds[s]["speaker"]),
        **{f"mean_{k}": statistics.mean(f[k] for f in folds.values()) for k in ALSO},
        "folds": folds,
        "recipe": cards[speakers[0]]["recipe"],
        "command": "python docs/speech_cv.py --data ../shared/data --train",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--train", action="store_true", help="train the folds that have no card yet")
    parser.add_argument("--jobs", type=int, default=2, help="folds trained at once (one CPU thread each)")
    parser.add_argument("--models", type=lambda text: text.split(","), default=SPEECH_MODELS + AV_MODELS,
                        help=f"comma-separated, of {', '.join(SPEECH_MODELS + AV_MODELS)} (default: all)")
    args = parser.parse_args()
    if unknown := set(args.models) - set(SPEECH_MODELS + AV_MODELS):
        parser.error(f"not speech or audio-visual models: {', '.join(sorted(unknown))}")
    speakers = sorted({clip.speaker for clip in load_fsdd(Path(args.data) / "fsdd-5speakers.zip")})
    if args.train:  # the speech folds (with those the audio-visual ones start from), then the audio-visual ones
        speech = dict.fromkeys([*(WARM_START[m] for m in args.models if m in AV_MODELS),
                                *(m for m in args.models if m in SPEECH_MODELS)])
        for models in (speech, [m for m in args.models if m in AV_MODELS]):
            todo = [(m, s) for s in speakers for m in models if fold_card(m, s) is None]
            with ThreadPoolExecutor(args.jobs) as pool:
                list(pool.map(lambda job: train_fold(*job, args.data), todo))
    # A speech fold whose "no digit" calibration used another rule is calibrated by this one.
    for m in (m for m in args.models if m in SPEECH_MODELS):
        for s in speakers:
            card = fold_card(m, s)
            if card is not None and "max_cost" not in card.get("no_digit_calibration", {}):
                calibrate_saved(CV_DIR / m / s, data_files(args.data))
    results = {m: summarise(m, speakers) for m in dict.fromkeys([*args.models, *PLAIN])}
    print("| model (speech alone, for the audio-visual ones) | " + " | ".join(speakers) + " | mean | worst |")
    print("|---|" + "---|" * (len(speakers) + 2))
    for m, r in results.items():
        if r is None:
            print(f"| `{m}` | folds missing |")
            continue
        accuracy = "audio_only" if m in AV_MODELS else "speaker"  # on the left-out speaker
        cells = " | ".join(f"{100 * r['folds'][s][accuracy]:.1f}%" for s in speakers)
        print(f"| `{m}` | {cells} | {100 * r['mean']:.1f}% | {100 * r['worst']:.1f}% |")
    done = {m: r for m, r in results.items() if r is not None}
    saved = REPO / "docs" / "speech-cv.json"
    everything = {**(json.loads(saved.read_text()) if saved.is_file() else {}), **done}
    ordered = {m: everything[m] for m in SPEECH_MODELS + AV_MODELS if m in everything}
    saved.write_text(json.dumps(ordered, indent=2) + "\n")
    folders = weight_folders()
    for m in args.models:  # the bundled model: the fold without VAL_SPEAKER, with the table
        if m not in done:
            continue
        bundled = folders.get(m, REPO / "weights" / m)
        bundled.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copyfile(CV_DIR / m / VAL_SPEAKER / name, bundled / name)
        card = fold_card(m, VAL_SPEAKER)
        card["cross_validation"] = {k: v for k, v in done[m].items() if k != "recipe"}
        card.update(architecture_notes(EffvizModel(BUNDLED_RECIPES[m]())))
        if m in SPEECH_MODELS and m not in PLAIN:
            card["siblings"] = {s: {"mixer": fold_card(s, VAL_SPEAKER)["mixer"], "params": fold_card(s, VAL_SPEAKER)["params"],
                                    "cross_validation": {k: v for k, v in done[s].items() if k != "recipe"}}
                                for s in PLAIN if s in done}
        (bundled / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        (bundled / "README.md").write_text(render_card(card))


if __name__ == "__main__":
    main()
