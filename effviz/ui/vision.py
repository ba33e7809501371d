"""Vision tab: one picture, the chosen image models' top 5 side by side (the bundled CIFAR-10
models, and official ImageNet-1k releases fetched from the Hub on first use), with each model's
latency and memory for that input."""
from __future__ import annotations

from typing import Any, Sequence

import gradio as gr
import pandas as pd

from .. import api
from ..wording import counted
from ..data.image import open_image
from . import (
    MAX_SHOWN_MODELS,
    MEASUREMENT_NOTE,
    NO_MODEL_MESSAGE,
    PREDICT_CONCURRENCY,
    PREDICT_CONCURRENCY_LIMIT,
    RESULT_COLUMNS,
    ERROR_TITLE,
    TOP_K,
    announce_downloads,
    check_model_count,
    default_models,
    gpu,
    slot_looks,
    slot_values,
    limits_line,
    model_choices,
    official_models_note,
    measure_peaks,
    raise_if_all_failed,
    reports_bad_input,
    result_table,
    status_line,
    timed_predict,
    upload_source,
)
from .examples import Examples


@gpu
@reports_bad_input
def classify_image(
    payload: Any, measure_memory: bool, models: Sequence[str]
) -> tuple[str, pd.DataFrame, list[dict[str, float] | None]]:
    """Every model in ``models`` on one uploaded picture: (status Markdown, table, top-5
    probabilities per model). The picture is decoded once, here, so a bad file gets our message."""
    source = upload_source(payload)
    if source is None:
        raise gr.Error("No image yet: upload, paste or capture one first.", title=ERROR_TITLE)
    image = open_image(source, max_pixels=api.MAX_IMAGE_PIXELS)
    check_model_count(models)
    if not models:
        return NO_MODEL_MESSAGE, result_table([]), []
    results = [timed_predict(model_id, image=image) for model_id in models]
    raise_if_all_failed(results)
    if measure_memory:
        measure_peaks(results, image=image)
    status = status_line(f"{image.width}x{image.height} picture, {counted(len(models), 'model')}.", results)
    return status, result_table(results), [r.probabilities for r in results]


def build(examples: Examples) -> None:
    """The Vision tab's components and events (inside the caller's ``gr.Blocks``)."""
    defaults = default_models("image")
    gr.Markdown(
        "Upload, paste or capture a picture: the chosen image models classify it, side by side. "
        "The bundled models (trained here on 32 px CIFAR-10 photos: airplane, car, bird, cat, deer, "
        "dog, frog, horse, ship, truck) differ only in their token mixer (Mamba, RWKV, RetNet or "
        "attention); the official ones know ImageNet's 1,000 classes. "
        + official_models_note()
    )
    gr.Markdown(limits_line())
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(type="filepath", sources=["upload", "clipboard", "webcam"], label="picture", elem_id="vision-image")
            with gr.Row():
                chosen = gr.Dropdown(model_choices("image"), value=defaults, multiselect=True, scale=5,
                                     label=f"models (at most {MAX_SHOWN_MODELS})", elem_id="vision-models")
                refresh = gr.Button("↻", scale=0, min_width=40, elem_id="vision-refresh")
            measure = gr.Checkbox(False, label="also measure peak memory (separate process, a few seconds)")
            button = gr.Button("Classify", variant="primary", elem_id="vision-classify")
            if examples.photos:
                gr.Examples(examples.photos, inputs=[image], label="photos from scikit-image")
        with gr.Column(scale=2):
            status = gr.Markdown(NO_MODEL_MESSAGE if not defaults else "")
            with gr.Row():
                labels = [gr.Label(num_top_classes=TOP_K, label=defaults[i] if i < len(defaults) else "",
                                   visible=i < len(defaults), min_width=200, elem_classes="vision-label")
                          for i in range(MAX_SHOWN_MODELS)]
            table = gr.Dataframe(headers=RESULT_COLUMNS, label="per model", interactive=False, elem_id="vision-table")
            gr.Markdown(MEASUREMENT_NOTE)

    def refresh_choices():
        return gr.update(choices=model_choices("image"))

    def on_classify(image: Any, measure_memory: bool, models: list[str] | None, progress=gr.Progress(track_tqdm=True)):
        models = list(models or [])
        announce_downloads(models, progress)
        status_text, table_value, probabilities = classify_image(image, measure_memory, models)
        return status_text, table_value, *slot_values(models, probabilities)

    # preprocess=False: Gradio would open the picture with PIL before our code and answer a
    # damaged file with a generic error; classify_image decodes it and says what is wrong.
    button.click(
        on_classify, [image, measure, chosen], [status, table, *labels], api_name="classify_image",
        preprocess=False, concurrency_id=PREDICT_CONCURRENCY, concurrency_limit=PREDICT_CONCURRENCY_LIMIT,
    ).then(refresh_choices, None, chosen, api_visibility="private")  # a release fetched just now is "ready"
    chosen.change(slot_looks, chosen, labels, api_visibility="private")
    refresh.click(refresh_choices, None, chosen, api_name="image_models")
