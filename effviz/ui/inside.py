"""Inside the models tab: each model's token-mixing matrices on the visitor's own picture or
sound, where its evidence for the predicted class comes from (relevance over the picture, or over
time), and how far each layer reaches (mass by token distance). The numbers come from
``effviz.inspect``; this module draws them.

(Named ``inside`` rather than ``inspect``: a submodule ``effviz.ui.inspect`` would replace the
standard library's ``inspect`` that ``effviz.ui`` imports under that name.)
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .. import api
from ..data.audio import FRAME_SHIFT_MS, read_audio
from ..data.image import open_image
from ..inspect import Inspection, inspect_model, to_json
from . import ERROR_TITLE, PREDICT_CONCURRENCY, PREDICT_CONCURRENCY_LIMIT, gpu, limits_line, reports_bad_input, upload_source
from .examples import Examples

MAPS = {"gradient rollout": "gradient_map", "rollout": "rollout_map"}
INTRO = (
    "Every token mixer here is, exactly, a matrix that mixes the tokens' values: softmax attention, "
    "retention's decayed q·k, Vision-RWKV's Bi-WKV softmax, and Mamba's selective scan unrolled "
    "(forward and backward branch). Pick a picture or a sound and some models: the **relevance** "
    "shows where the evidence for the predicted class comes from (rollout through the layers, "
    "plain or weighted by gradients), the **matrices** show one layer and head (or channel) at a "
    "time, and the **receptive field** shows how much of a layer's mixing stays within each token "
    "distance. Each matrix reproduces its layer's output to a relative 1e-6 in float64 (tested)."
)


def model_choices() -> list[str]:
    """Bundled models that take a picture or a sound alone."""
    return api.list_models("image") + api.list_models("audio")


def model_input(model_id: str, image_source: Any, audio: tuple[np.ndarray, int] | None) -> dict[str, Any]:
    """The model's preprocessed input from the decoded picture or sound, whichever it takes."""
    cfg = api.load_model(model_id).config
    if "image" in cfg.modalities and image_source is not None:
        return api.model_inputs(model_id, image=image_source)
    if "audio" in cfg.modalities and audio is not None:
        return api.model_inputs(model_id, audio=audio[0], sample_rate=audio[1])
    wanted = "a picture" if "image" in cfg.modalities else "a sound"
    raise ValueError(f"{model_id} needs {wanted}")


@gpu
@reports_bad_input
def inspect_models(image_payload: Any, audio_payload: Any, models: Sequence[str],
                   progress: gr.Progress = gr.Progress()) -> tuple[str, dict[str, Any]]:
    """Inspect each of ``models`` on the picture or the sound given: (status Markdown, state with
    the inspections and each model's framed input)."""
    image_source, audio_source = upload_source(image_payload), upload_source(audio_payload)
    if image_source is None and audio_source is None:
        raise gr.Error("No input yet: upload a picture or a sound, or click an example.", title=ERROR_TITLE)
    if not models:
        raise gr.Error("Pick at least one model.", title=ERROR_TITLE)
    image = open_image(image_source, max_pixels=api.MAX_IMAGE_PIXELS) if image_source is not None else None
    audio = read_audio(audio_source, max_seconds=api.MAX_AUDIO_SECONDS) if audio_source is not None else None
    results: dict[str, Inspection] = {}
    inputs: dict[str, dict[str, Any]] = {}
    skipped = []
    for i, model_id in enumerate(models):
        progress(i / len(models), desc=f"{model_id}: building every layer's matrices")
        try:
            inputs[model_id] = model_input(model_id, image, audio)
        except ValueError as err:
            skipped.append(f"{model_id}: {err}")
            continue
        results[model_id] = inspect_model(api.load_model(model_id), **inputs[model_id])
    progress(1.0, desc="drawing")
    if not results:
        raise gr.Error("; ".join(skipped), title=ERROR_TITLE)
    lines = [f"**{m}** ({r.layers[0].kind}, {len(r.layers)} layers, {len(r.readout)} tokens): "
             f"predicts *{r.label}*" for m, r in results.items()]
    lines += [f"skipped {note}" for note in skipped]
    return "\n\n".join(lines), {"results": results, "inputs": inputs}


def _framed_picture(model_id: str, image: Any) -> np.ndarray:
    """The picture as the model saw it (framed and resized), (H, W, 3) uint8."""
    cfg = api.load_model(model_id).config
    x = image[0].float()
    mean = np.array(cfg.image_mean[: x.shape[0]])[:, None, None]
    std = np.array(cfg.image_std[: x.shape[0]])[:, None, None]
    pixels = (x.numpy() * std + mean).clip(0, 1).transpose(1, 2, 0)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return (pixels * 255).round().astype(np.uint8)


def relevance_figure(state: dict[str, Any], kind: str) -> go.Figure:
    """Relevance of each model side by side: over the picture it saw (a row of overlays), and for
    sounds over time (one curve per model, in a row below)."""
    results, inputs = state["results"], state["inputs"]
    pictures = [m for m in results if "image" in inputs[m]]
    sounds = [m for m in results if "audio" in inputs[m]]
    cols = max(len(pictures), 1)
    specs = ([[{}] * cols] if pictures else []) + ([[{"colspan": cols}] + [None] * (cols - 1)] if sounds else [])
    titles = [f"{m}: {results[m].label}" for m in pictures] + (["speech models, over time"] if sounds else [])
    fig = make_subplots(rows=len(specs), cols=cols, specs=specs, subplot_titles=titles)
    for col, model_id in enumerate(pictures, start=1):
        picture = _framed_picture(model_id, inputs[model_id]["image"])
        relevance = getattr(results[model_id], MAPS[kind]).numpy()
        cell_h, cell_w = picture.shape[0] / relevance.shape[0], picture.shape[1] / relevance.shape[1]
        fig.add_trace(go.Image(z=picture, hoverinfo="skip"), row=1, col=col)
        fig.add_trace(go.Heatmap(
            z=relevance, x0=(cell_w - 1) / 2, dx=cell_w, y0=(cell_h - 1) / 2, dy=cell_h,
            colorscale="Inferno", opacity=0.55, showscale=col == 1, colorbar=dict(title="share"),
            hovertemplate="relevance %{z:.3f}<extra></extra>"), row=1, col=col)
    for model_id in sounds:
        result = results[model_id]
        cfg = api.load_model(model_id).config
        stride = cfg.audio_patch_stride or cfg.audio_patch_size
        relevance = getattr(result, MAPS[kind]).numpy().sum(axis=0)  # over mel bands, if several
        seconds = np.arange(relevance.shape[0]) * stride * FRAME_SHIFT_MS / 1000
        fig.add_trace(go.Scatter(x=seconds, y=relevance, mode="lines+markers", name=f"{model_id}: {result.label}"),
                      row=len(specs), col=1)
        fig.update_xaxes(title_text="time (s), start of each token", row=len(specs), col=1)
        fig.update_yaxes(title_text="share of relevance", row=len(specs), col=1)
    fig.update_layout(title=f"{kind} relevance of the predicted class (each map sums to 1)",
                      height=340 * len(specs), margin=dict(t=70, b=40))
    return fig


def matrix_figure(state: dict[str, Any], layer: int, head: int) -> go.Figure:
    """One layer's mixing matrix per model: head/channel ``head`` (1-based, clamped to the
    model's count), or 0 for the mean |M| over heads/channels."""
    results = state["results"]
    titles = []
    fig = make_subplots(rows=1, cols=len(results), subplot_titles=[" "] * len(results))
    for col, (model_id, result) in enumerate(results.items(), start=1):
        mixing = result.layers[min(layer, len(result.layers) - 1)]
        combined = mixing.combined()
        unit = "channel" if mixing.kind in ("rwkv", "mamba") else "head"
        if head == 0:
            conv = "<br>(conv included)" if mixing.kind == "mamba" else ""
            z, which = mixing.mean(), f"mean of {combined.shape[0]} {unit}s{conv}"
        else:
            z, which = combined[min(head, combined.shape[0]) - 1], f"{unit} {min(head, combined.shape[0])}"
        titles.append(f"{model_id}<br>{which}")
        fig.add_trace(go.Heatmap(z=z.numpy(), colorscale="RdBu_r" if head else "Viridis", zmid=0 if head else None,
                                 showscale=False, hovertemplate="row %{y} ← column %{x}: %{z:.4f}<extra></extra>"),
                      row=1, col=col)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    for annotation, title in zip(fig.layout.annotations, titles):
        annotation.text = title
    # The top margin holds the figure's title (below the component's label) above three-line
    # subplot titles (Vim's), apart.
    fig.update_layout(title=dict(text=f"layer {layer + 1}: token-mixing matrix, output token (row) ← input token "
                                 "(column)" + ("" if head else ", |M|"), y=1, yanchor="top", pad=dict(t=34)),
                      height=430, margin=dict(t=140, b=40))
    return fig


def receptive_figure(state: dict[str, Any], layer: int) -> go.Figure:
    """Share of each model's layer-``layer`` mixing mass at each token distance."""
    fig = go.Figure()
    for model_id, result in state["results"].items():
        field = result.receptive_fields[min(layer, len(result.layers) - 1)].numpy()
        fig.add_trace(go.Scatter(y=field, mode="lines+markers", name=f"{model_id} ({result.layers[0].kind})"))
    fig.update_layout(title=f"receptive field of layer {layer + 1}: share of mean |M| at each token distance",
                      xaxis_title="token distance |i - j| (sequence order)", yaxis_title="share of mass",
                      height=340, margin=dict(t=60, b=40))
    return fig


def export_json(state: dict[str, Any], layer: int) -> str:
    """Every inspected model's numbers, with this layer's per-head matrices, in one JSON file."""
    exported = {m: to_json(r, min(layer, len(r.layers) - 1)) for m, r in state["results"].items()}
    path = Path(tempfile.mkdtemp(prefix="effviz-inside-")) / "inside.json"
    path.write_text(json.dumps(exported))
    return str(path)


def build(examples: Examples) -> None:
    """The Inside the models tab's components and events (inside the caller's ``gr.Blocks``)."""
    choices = model_choices()
    gr.Markdown(INTRO)
    gr.Markdown(limits_line() + " The matrices grow with the square of the token count, so long sounds are refused.")
    state = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="picture", elem_id="inside-image")
            audio = gr.Audio(type="filepath", sources=["upload"], label="or a sound", elem_id="inside-audio")
            models = gr.CheckboxGroup(choices, value=[m for m in choices if m.endswith("-cifar")],
                                      label="models", elem_id="inside-models")
            button = gr.Button("Look inside", variant="primary", elem_id="inside-run")
            if examples.photos:
                gr.Examples(examples.photos, inputs=[image], label="photos")
            if examples.spoken:
                gr.Examples(list(examples.spoken.values()), inputs=[audio], label="spoken digits")
        with gr.Column(scale=2):
            status = gr.Markdown()
            kind = gr.Radio(list(MAPS), value="gradient rollout", label="relevance")
            relevance = gr.Plot(label="relevance", elem_id="inside-relevance")
            with gr.Row():
                layer = gr.Slider(1, 24, value=1, step=1, label="layer")
                head = gr.Slider(0, 384, value=0, step=1, label="head / channel (0: mean |M|)")
            matrices = gr.Plot(label="mixing matrices", elem_id="inside-matrices")
            receptive = gr.Plot(label="receptive field", elem_id="inside-receptive")
            export = gr.File(label="export (JSON: maps, receptive fields, mean matrices, this layer's matrices)")
            gr.Markdown("PNG: use the camera icon of each plot (PNG export on the server needs kaleido, "
                        "which this app does not install).")

    def draw(current: dict[str, Any] | None, map_kind: str, layer_number: int, head_number: int):
        if current is None:
            return None, None, None, None
        index = int(layer_number) - 1
        return (relevance_figure(current, map_kind), matrix_figure(current, index, int(head_number)),
                receptive_figure(current, index), export_json(current, index))

    def run(image_payload, audio_payload, chosen, map_kind, layer_number, head_number, progress=gr.Progress()):
        text, current = inspect_models(image_payload, audio_payload, chosen, progress)
        results = current["results"].values()
        most_layers = max(len(r.layers) for r in results)
        most_heads = max(r.layers[0].combined().shape[0] for r in results)
        layer_number, head_number = min(int(layer_number), most_layers), min(int(head_number), most_heads)
        return (text, current, gr.update(maximum=most_layers, value=layer_number),
                gr.update(maximum=most_heads, value=head_number), *draw(current, map_kind, layer_number, head_number))

    outputs = [relevance, matrices, receptive, export]
    # preprocess=False: the picture is decoded by our code, which says what is wrong with a bad file.
    button.click(run, [image, audio, models, kind, layer, head], [status, state, layer, head, *outputs],
                 api_name="inspect", preprocess=False,
                 concurrency_id=PREDICT_CONCURRENCY, concurrency_limit=PREDICT_CONCURRENCY_LIMIT)
    kind.change(draw, [state, kind, layer, head], outputs, api_name=False)
    layer.release(draw, [state, kind, layer, head], outputs, api_name=False)
    head.release(draw, [state, kind, layer, head], outputs, api_name=False)
