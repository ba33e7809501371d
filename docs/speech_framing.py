"""Top-1 of every bundled speech model with and without the speech framing of its Preprocess
record (band-limited to the training recordings' band, the spoken part found and centred), side
by side in one run, on clips no model was trained on:

- espeak-ng's ten digit words in ten English voices and variants (22.05 kHz), and
- the 500 clips of FSDD's held-out speaker ``theo`` (8 kHz).

    python docs/speech_framing.py --data ../shared/data --json docs/speech-framing.json

Needs Debian's espeak-ng. "before" is the plain framing: the clip resampled straight to 16 kHz
and centred whole in 1 s of silence.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, effviz not installed

import effviz  # noqa: E402
from effviz.api import model_inputs  # noqa: E402
from effviz.data.audio import audio_to_tensor  # noqa: E402

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-us+f3", "en-gb+f4",
          "en-us+m5", "en-gb-x-gbcwmd+f2"]


def espeak_clips() -> list[tuple[np.ndarray, int, int]]:
    clips = []
    for voice in VOICES:
        for digit, word in enumerate(WORDS):
            wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", word], capture_output=True, check=True).stdout
            samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
            clips.append((samples, rate, digit))
    return clips


def fsdd_speaker(path: Path, speaker: str) -> list[tuple[np.ndarray, int, int]]:
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if f"_{speaker}_" in n]
        return [(*soundfile.read(io.BytesIO(archive.read(n)), dtype="float32"), int(Path(n).name[0])) for n in names]


def accuracy(model_id: str, clips, framed: bool) -> float:
    model = effviz.load_model(model_id)
    pre = effviz.model_preprocess(model_id).audio
    if not framed:
        pre = dataclasses.replace(pre, band_hz=0.0, speech_only=False)
    correct = 0
    with torch.inference_mode():
        for samples, rate, digit in clips:
            x = audio_to_tensor(samples, rate, pre) if not framed else model_inputs(model_id, audio=samples, sample_rate=rate)["audio"]
            correct += int(model(audio=x).argmax(-1)) == digit
    return correct / len(clips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sets = {"espeak-ng (100 clips)": espeak_clips(),
            "FSDD theo (500 clips)": fsdd_speaker(Path(args.data) / "fsdd-5speakers.zip", "theo")}
    models = [m for m in effviz.list_models("audio") if m not in effviz.list_releases()]
    results = {m: {name: {"before": accuracy(m, clips, False), "after": accuracy(m, clips, True)}
                   for name, clips in sets.items()} for m in models}
    print("| model | " + " | ".join(f"{name}: before → after" for name in sets) + " |")
    print("|---|" + "---|" * len(sets))
    for m, r in results.items():
        print(f"| `{m}` | " + " | ".join(f"{100 * v['before']:.1f}% → {100 * v['after']:.1f}%" for v in r.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
