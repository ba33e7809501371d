"""Example inputs that the app offers to click: photos, drawn digits and spoken digits.

None of them comes from a data set. Photos are scikit-image's bundled test pictures (public domain
or CC0, shipped inside the ``scikit-image`` wheel, so no download); digits are drawn here with PIL
as a user would on the sketchpad; spoken digits are synthesized with espeak-ng and committed under
``assets/examples/`` (regenerate with ``python -m effviz.ui.examples``, which needs the
``espeak-ng`` program).
"""
from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageDraw

from ..data.audio import prepare_waveform, read_audio
from ..models.registry import bundled_path

ASSETS_DIR = bundled_path("assets") / "examples"
PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SAMPLE_RATE = 16_000
SPOKEN_NUMBER = "415 555 0123"  # the Live digits tab's example: a phone number
NUMBER_PAUSES_S = (0.15, 0.5)  # after a digit, after a group
# Trimming keeps the word plus this much silence either side; quieter than this (relative to the
# clip's peak) counts as silence.
SILENCE_MARGIN_S = 0.05
SILENCE_LEVEL = 0.02

# Pen strokes of drawn digits as polylines in a unit box (x right, y down), the way one draws a
# digit on a sketchpad: a few quick lines, not a font.
DIGIT_STROKES: dict[str, list[list[tuple[float, float]]]] = {
    "0": [[(0.5, 0.1), (0.25, 0.25), (0.2, 0.5), (0.25, 0.75), (0.5, 0.9), (0.75, 0.75), (0.8, 0.5),
           (0.75, 0.25), (0.5, 0.1)]],
    "1": [[(0.35, 0.25), (0.55, 0.1), (0.55, 0.9)]],
    "2": [[(0.25, 0.3), (0.35, 0.15), (0.55, 0.1), (0.72, 0.2), (0.72, 0.4), (0.25, 0.88), (0.8, 0.88)]],
    "3": [[(0.25, 0.15), (0.7, 0.15), (0.45, 0.45), (0.7, 0.55), (0.72, 0.75), (0.5, 0.9), (0.25, 0.82)]],
    "4": [[(0.6, 0.9), (0.6, 0.1), (0.2, 0.65), (0.8, 0.65)]],
    "7": [[(0.22, 0.12), (0.78, 0.12), (0.42, 0.9)], [(0.35, 0.5), (0.68, 0.5)]],
}


@dataclass(frozen=True)
class Examples:
    """Paths of the example files, grouped by the tab that offers them."""

    photos: list[str]
    digits: dict[str, str]  # digit -> drawing (PNG, black ink on white)
    spoken: dict[str, str]  # digit -> speech (16 kHz mono WAV)
    spoken_number: str | None  # SPOKEN_NUMBER said digit by digit (16 kHz mono WAV); None without the digits


def prepare_examples(out_dir: str | Path | None = None) -> Examples:
    """Write the generated examples to ``out_dir`` (a fresh temporary folder by default) and
    collect the committed spoken digits. Photos are left out when scikit-image is missing."""
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="effviz-examples-"))
    out.mkdir(parents=True, exist_ok=True)
    digits = {}
    for digit in DIGIT_STROKES:
        path = out / f"drawn_{digit}.png"
        draw_digit(digit).save(path)
        digits[digit] = str(path)
    spoken = {
        str(i): str(ASSETS_DIR / f"spoken_{word}.wav")
        for i, word in enumerate(DIGIT_WORDS)
        if (ASSETS_DIR / f"spoken_{word}.wav").is_file()
    }
    number = None
    if len(spoken) == len(DIGIT_WORDS):
        number = str(out / "spoken_number.wav")
        soundfile.write(number, say_number(SPOKEN_NUMBER, spoken), SAMPLE_RATE, subtype="PCM_16")
    return Examples(photos=save_photos(out), digits=digits, spoken=spoken, spoken_number=number)


def say_number(number: str, spoken: dict[str, str]) -> np.ndarray:
    """``number`` said digit by digit from the spoken digits' files, a short pause after each digit
    and a longer one between groups ("415 555 0123"), at ``SAMPLE_RATE``."""
    pieces = [np.zeros(round(NUMBER_PAUSES_S[1] * SAMPLE_RATE), dtype=np.float32)]
    for group in number.split():
        for digit in group:
            samples, rate = read_audio(spoken[digit])
            pieces += [prepare_waveform(samples, rate, SAMPLE_RATE, max_seconds=5.0).numpy(),
                       np.zeros(round(NUMBER_PAUSES_S[0] * SAMPLE_RATE), dtype=np.float32)]
        pieces.append(np.zeros(round(NUMBER_PAUSES_S[1] * SAMPLE_RATE), dtype=np.float32))
    return np.concatenate(pieces)


def save_photos(out_dir: Path) -> list[str]:
    """scikit-image's test photos as PNG files in ``out_dir``; none without scikit-image."""
    try:
        from skimage import data as skimage_data
    except ImportError:
        return []
    paths = []
    for name in PHOTO_NAMES:
        path = out_dir / f"{name}.png"
        Image.fromarray(getattr(skimage_data, name)()).save(path)
        paths.append(str(path))
    return paths


def draw_digit(digit: str, size: int = 280, width: int = 22) -> Image.Image:
    """A digit drawn with a round pen, black on white, like a sketchpad drawing."""
    if digit not in DIGIT_STROKES:
        raise ValueError(f"no drawing for {digit!r}; drawn digits: {', '.join(DIGIT_STROKES)}")
    img = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(img)
    for stroke in DIGIT_STROKES[digit]:
        points = [(x * size, y * size) for x, y in stroke]
        pen.line(points, fill="black", width=width, joint="curve")
        for x, y in (points[0], points[-1]):  # round pen tips
            pen.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill="black")
    return img


def synthesize_spoken_digits(out_dir: Path = ASSETS_DIR) -> list[Path]:
    """Speak "zero" .. "nine" with espeak-ng into 16 kHz mono 16-bit WAV files, silence trimmed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with tempfile.TemporaryDirectory() as tmp:
        for word in DIGIT_WORDS:
            raw = Path(tmp) / f"{word}.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(raw), word], check=True)
            samples, rate = read_audio(raw)
            waveform = prepare_waveform(samples, rate, SAMPLE_RATE, max_seconds=5.0).numpy()
            path = out_dir / f"spoken_{word}.wav"
            soundfile.write(path, _trim_silence(waveform), SAMPLE_RATE, subtype="PCM_16")
            paths.append(path)
    return paths


def _trim_silence(waveform: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(waveform) > SILENCE_LEVEL * np.abs(waveform).max())
    margin = round(SILENCE_MARGIN_S * SAMPLE_RATE)
    return waveform[max(loud[0] - margin, 0) : loud[-1] + margin + 1]


if __name__ == "__main__":
    for written in synthesize_spoken_digits():
        print(written)
