"""Audio tab: one sound, the chosen audio models' top 5 (the bundled spoken-digit models, and
official AudioSet releases fetched from the Hub on first use), the sound's log-mel spectrogram
(fbank), and beneath it the features the first model actually reads."""
from __future__ import annotations

from typing import Any, Sequence

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .. import api
from ..wording import counted
from ..data.audio import FRAME_SHIFT_MS, fbank, prepare_waveform, read_audio
from ..models.releases import AudioPreprocess
from . import (
    ERROR_TITLE,
    MAX_SHOWN_MODELS,
    MEASUREMENT_NOTE,
    NO_MODEL_MESSAGE,
    PREDICT_CONCURRENCY,
    PREDICT_CONCURRENCY_LIMIT,
    RESULT_COLUMNS,
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

# Every effviz audio model reads 128-bin Kaldi fbank at 16 kHz (AST's framing). fbank() divides
# by 2 * fbank_std after removing fbank_mean: mean 0 and std 0.5 leave the raw log-mel energies.
SPECTROGRAM_CONFIG = AudioPreprocess(fbank_mean=0.0, fbank_std=0.5)


def spectrogram_figure(samples: np.ndarray, sample_rate: int, model_id: str | None = None) -> go.Figure:
    """Log-mel filterbank of a clip as a heatmap: time in seconds across, mel bin up; with
    ``model_id`` (an audio model already loaded), beneath it the features that model reads."""
    waveform = prepare_waveform(samples, sample_rate, SPECTROGRAM_CONFIG.sample_rate, api.MAX_AUDIO_SECONDS)
    features = fbank(waveform, SPECTROGRAM_CONFIG).numpy()
    seconds = np.arange(features.shape[0]) * FRAME_SHIFT_MS / 1000
    title = f"your sound: log-mel spectrogram ({SPECTROGRAM_CONFIG.mel_bins} bins at 16 kHz, 25 ms windows every 10 ms)"
    read = model_view(model_id, samples, sample_rate) if model_id else None
    fig = make_subplots(rows=2 if read else 1, cols=1, vertical_spacing=0.16,
                        subplot_titles=[title, read[1]] if read else [title])
    fig.add_trace(go.Heatmap(z=features.T, x=seconds, colorscale="Viridis",
                             colorbar=dict(title="log energy", len=0.45 if read else 1, y=0.8 if read else 0.5)),
                  row=1, col=1)
    if read:
        z = read[0]
        fig.add_trace(go.Heatmap(z=z, x=np.arange(z.shape[1]) * FRAME_SHIFT_MS / 1000, colorscale="Viridis",
                                 colorbar=dict(title="model units", len=0.45, y=0.2)), row=2, col=1)
    for row, axis in ((1, "time (s)"), (2, "time in the model's window (s)"))[: 2 if read else 1]:
        fig.update_xaxes(title_text=axis, row=row, col=1)
        fig.update_yaxes(title_text="mel bin", row=row, col=1)
    fig.update_layout(height=560 if read else 320, margin=dict(t=50, b=40))
    fig.update_annotations(font_size=12)
    return fig


def model_view(model_id: str, samples: np.ndarray, sample_rate: int) -> tuple[np.ndarray, str] | None:
    """(mel bins, frames) features ``model_id`` reads for this sound, as its tokenizer receives
    them (framed, band-limited and normalised as its Preprocess says, then mean-normalised when
    its recipe does), and a line saying so; None when the model cannot take it."""
    try:
        frames = api.model_inputs(model_id, audio=samples, sample_rate=sample_rate)["audio"]
    except (ValueError, FileNotFoundError):
        return None
    model, pre = api.load_model(model_id), api.model_preprocess(model_id).audio
    cfg = model.config
    frames = model.audio_features(frames)
    steps = [f"{frames.shape[1] * FRAME_SHIFT_MS / 1000:.2f} s at {pre.sample_rate / 1000:g} kHz"]
    if pre.band_hz:
        steps.append(f"band-limited to {pre.band_hz / 1000:g} kHz")
    if cfg.audio_floor_db:
        steps.append(f"floored {cfg.audio_floor_db:g} dB under the loudest bin")
    if cfg.audio_cmn:
        steps.append("each bin's mean over the speech removed")
    return frames[0].T.numpy(), f"what {model_id} reads: {', '.join(steps)}"


@gpu
@reports_bad_input
def classify_audio(
    payload: Any, measure_memory: bool, models: Sequence[str]
) -> tuple[str, go.Figure, pd.DataFrame, list[dict[str, float] | None]]:
    """Every model in ``models`` on one sound file: (status, spectrogram, table, top-5 per model)."""
    source = upload_source(payload)
    if source is None:
        raise gr.Error("No audio yet: upload a sound file or record one first.", title=ERROR_TITLE)
    samples, sample_rate = read_audio(source, max_seconds=api.MAX_AUDIO_SECONDS)
    check_model_count(models)
    if not models:
        return NO_MODEL_MESSAGE, spectrogram_figure(samples, sample_rate), result_table([]), []
    results = [timed_predict(model_id, audio=samples, sample_rate=sample_rate) for model_id in models]
    raise_if_all_failed(results)
    figure = spectrogram_figure(samples, sample_rate, next(r.model_id for r in results if r.error is None))
    if measure_memory:
        measure_peaks(results, audio=(samples, sample_rate))
    status = status_line(f"{samples.shape[0] / sample_rate:.2f} s at {sample_rate} Hz, {counted(len(models), 'model')}.", results)
    return status, figure, result_table(results), [r.probabilities for r in results]


def build(examples: Examples) -> None:
    """The Audio tab's components and events (inside the caller's ``gr.Blocks``)."""
    defaults = default_models("audio")
    gr.Markdown(
        "Upload or record a sound: the chosen audio models classify it. The bundled models "
        "recognise spoken digits (zero to nine) or answer \"no digit\", trained on 1 s clips recorded "
        "at 8 kHz: the spoken part of your take is found and centred in 1 s, at the band they were "
        "trained on, then turned into a log-mel spectrogram, each mel bin less its mean over the "
        "speech, cut into full-height strips of 8 frames, one token every 40 ms (the lower plot shows "
        "what the first model reads). The official AudioSet models (AST, AuM) score 527 sound labels "
        "independently (each probability on its own, they need not sum to 1). "
        + official_models_note()
    )
    gr.Markdown(limits_line())
    with gr.Row():
        with gr.Column(scale=1):
            audio = gr.Audio(type="filepath", sources=["upload", "microphone"], label="sound")
            with gr.Row():
                chosen = gr.Dropdown(model_choices("audio"), value=defaults, multiselect=True, scale=5,
                                     label=f"models (at most {MAX_SHOWN_MODELS})", elem_id="audio-models")
                refresh = gr.Button("↻", scale=0, min_width=40, elem_id="audio-refresh")
            measure = gr.Checkbox(False, label="also measure peak memory (separate process, a few seconds)")
            button = gr.Button("Classify", variant="primary")
            if examples.spoken:
                gr.Examples(list(examples.spoken.values()), inputs=[audio], label="spoken digits (espeak-ng)")
        with gr.Column(scale=2):
            status = gr.Markdown(NO_MODEL_MESSAGE if not defaults else "")
            spectrogram = gr.Plot(label="spectrogram")
            with gr.Row():
                labels = [gr.Label(num_top_classes=TOP_K, label=defaults[i] if i < len(defaults) else "",
                                   visible=i < len(defaults), min_width=200)
                          for i in range(MAX_SHOWN_MODELS)]
            table = gr.Dataframe(headers=RESULT_COLUMNS, label="per model", interactive=False)
            gr.Markdown(MEASUREMENT_NOTE)

    def refresh_choices():
        return gr.update(choices=model_choices("audio"))

    def on_classify(audio: Any, measure_memory: bool, models: list[str] | None, progress=gr.Progress(track_tqdm=True)):
        models = list(models or [])
        announce_downloads(models, progress)
        status_text, figure, table_value, probabilities = classify_audio(audio, measure_memory, models)
        return status_text, figure, table_value, *slot_values(models, probabilities)

    button.click(
        on_classify, [audio, measure, chosen], [status, spectrogram, table, *labels], api_name="classify_audio",
        concurrency_id=PREDICT_CONCURRENCY, concurrency_limit=PREDICT_CONCURRENCY_LIMIT,
    ).then(refresh_choices, None, chosen, api_visibility="private")  # a release fetched just now is "ready"
    chosen.change(slot_looks, chosen, labels, api_visibility="private")
    refresh.click(refresh_choices, None, chosen, api_name="audio_models")
