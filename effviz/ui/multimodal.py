"""Multimodal tab: draw a digit and/or say one. Each audio-visual model reads both as one token
sequence (image patches, then spectrogram patches); it is asked with both, with the drawing
only and with the sound only, so the table shows what each modality contributes."""
from __future__ import annotations

from typing import Any, Sequence

import gradio as gr
import pandas as pd
from PIL import Image

from .. import api
from ..wording import counted
from ..data.audio import read_audio
from ..data.image import open_image
from . import (
    ERROR_TITLE,
    NO_MODEL_MESSAGE,
    PREDICT_CONCURRENCY,
    PREDICT_CONCURRENCY_LIMIT,
    TOP_K,
    gpu,
    limits_line,
    raise_if_all_failed,
    reports_bad_input,
    sketch_source,
    timed_predict,
    upload_source,
)
from .examples import Examples

VIEW_COLUMNS = ["model", "input", "top-1", "probability", "2nd", "latency ms"]
CANVAS_SIZE = (400, 400)
# A drawing whose darkest and lightest pixels differ by less than this is a blank canvas.
BLANK_CONTRAST = 32
NOTHING_GIVEN = "Nothing to recognise: draw a digit, and/or record or upload a spoken digit."


def is_blank(image: Image.Image) -> bool:
    darkest, lightest = image.convert("L").getextrema()
    return lightest - darkest < BLANK_CONTRAST


@gpu
@reports_bad_input
def classify_av(
    sketch: Any, sound: Any, models: Sequence[str]
) -> tuple[str, pd.DataFrame, list[dict[str, float] | None]]:
    """Every audio-visual model on a drawing and/or a sound: (status, per-view table, fused top-5
    per model). "Fused" is the answer from everything given."""
    image_source, audio_source = sketch_source(sketch), upload_source(sound)
    image = open_image(image_source, max_pixels=api.MAX_IMAGE_PIXELS) if image_source is not None else None
    if image is not None and is_blank(image):
        image = None
    audio = read_audio(audio_source, max_seconds=api.MAX_AUDIO_SECONDS) if audio_source is not None else None
    if image is None and audio is None:
        raise gr.Error(NOTHING_GIVEN, title=ERROR_TITLE)
    if not models:
        return NO_MODEL_MESSAGE, pd.DataFrame(columns=VIEW_COLUMNS), []

    views: dict[str, dict[str, Any]] = {}
    audio_input = {} if audio is None else {"audio": audio[0], "sample_rate": audio[1]}
    if image is not None and audio is not None:
        views["drawing + sound"] = {"image": image, **audio_input}
    if image is not None:
        views["drawing only"] = {"image": image}
    if audio is not None:
        views["sound only"] = audio_input

    by_model = {model_id: {view: timed_predict(model_id, **x) for view, x in views.items()} for model_id in models}
    raise_if_all_failed([result for results in by_model.values() for result in results.values()])
    rows, fused = [], []
    for model_id, results in by_model.items():
        fused.append(next(iter(results.values())).probabilities)  # the first view has every input given
        for view, result in results.items():
            if result.error is not None:
                rows.append([model_id, view, f"error: {result.error}", None, None, None])
                continue
            ranked = list(result.probabilities.items())
            second = f"{ranked[1][0]} ({ranked[1][1]:.2f})" if len(ranked) > 1 else ""
            rows.append([model_id, view, ranked[0][0], round(ranked[0][1], 4), second, round(result.latency_ms, 2)])
    given = " and ".join(name for name, x in (("a drawing", image), ("a sound", audio)) if x is not None)
    return f"Given {given}; {counted(len(models), 'model')}.", pd.DataFrame(rows, columns=VIEW_COLUMNS), fused


def build(examples: Examples) -> None:
    """The Multimodal tab's components and events (inside the caller's ``gr.Blocks``)."""
    models = api.list_models("audio-visual")
    gr.Markdown(
        "Draw a digit and/or say one. One model reads both as a single sequence (drawing patches "
        "followed by spectrogram patches, each tagged with its modality), and either may be "
        "missing. The table asks each model three ways, so you can see what each modality adds; "
        "try a drawing and a spoken digit that disagree."
    )
    gr.Markdown(limits_line())
    white = Image.new("RGB", CANVAS_SIZE, "white")
    with gr.Row():
        with gr.Column(scale=1):
            sketch = gr.Sketchpad(
                value={"background": white, "layers": [], "composite": None},
                type="filepath", canvas_size=CANVAS_SIZE, label="draw a digit",
                brush=gr.Brush(default_size=24, colors=["#000000"], default_color="#000000", color_mode="fixed"),
            )
            sound = gr.Audio(type="filepath", sources=["microphone", "upload"], label="say a digit")
            button = gr.Button("Recognise", variant="primary")
        with gr.Column(scale=1):
            status = gr.Markdown(NO_MODEL_MESSAGE if not models else "")
            with gr.Row():
                labels = [gr.Label(num_top_classes=TOP_K, label=f"{model_id} (fused)", min_width=200) for model_id in models]
            table = gr.Dataframe(headers=VIEW_COLUMNS, label="per model and input", interactive=False)
    pairs = _example_pairs(examples)
    if pairs:
        gr.Examples(pairs, inputs=[sketch, sound], label="drawn and spoken digits (ours)")

    def on_classify(sketch: Any, sound: Any):
        status_text, table_value, fused = classify_av(sketch, sound, models)
        return status_text, table_value, *(fused or [None] * len(models))

    # preprocess=False for the same reason as the Vision tab: we decode the drawing ourselves.
    button.click(
        on_classify, [sketch, sound], [status, table, *labels], api_name="classify_av", preprocess=False,
        concurrency_id=PREDICT_CONCURRENCY, concurrency_limit=PREDICT_CONCURRENCY_LIMIT,
    )


def _example_pairs(examples: Examples) -> list[list[str | None]]:
    """Matching drawing and speech, a disagreeing pair, and each modality alone."""
    wanted = [("7", "7"), ("3", "8"), ("2", None), (None, "4")]
    pairs = []
    for drawn, spoken in wanted:
        drawing = examples.digits.get(drawn) if drawn else None
        speech = examples.spoken.get(spoken) if spoken else None
        if (drawn is None or drawing) and (spoken is None or speech):
            pairs.append([drawing, speech])
    return pairs
