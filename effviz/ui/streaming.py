"""Live digits tab: spoken digits transcribed as they are said by the chosen streaming transcribers
(causal Mamba, RWKV and RetNet, whose state keeps its size, and a causal transformer, whose
key-value cache grows with every token), from an uploaded recording streamed chunk by chunk or
from the microphone, beside each model's per-chunk compute time and held state against the
seconds streamed. The engine is ``effviz.streaming``'s: every model keeps its own
:class:`~effviz.streaming.DigitStream`, fed the same chunks in turn.

A visitor's live stream lives in their session's ``gr.State`` (one stream per chosen model) and
stops at ``MAX_LIVE_SECONDS``; nothing a visitor sends reaches another session or the disk.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import gradio as gr
import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .. import api, streaming
from ..data.audio import StreamResampler, prepare_waveform, read_audio, to_mono
from ..wording import counted
from . import (
    ERROR_TITLE,
    MAX_SHOWN_MODELS,
    PREDICT_CONCURRENCY,
    PREDICT_CONCURRENCY_LIMIT,
    check_model_count,
    reports_bad_input,
    upload_source,
)
from .examples import Examples

# An uploaded recording: a phone number takes seconds, a list of numbers minutes.
MAX_RECORDING_SECONDS = api.limit_from_env("EFFVIZ_MAX_RECORDING_SECONDS", 600.0)
# A microphone stream stops after this much audio (the browser's stream too, by Gradio's time_limit).
MAX_LIVE_SECONDS = api.limit_from_env("EFFVIZ_MAX_LIVE_SECONDS", 300.0)
LIVE_CHUNK_EVERY_S = 0.5  # how much audio the browser collects before sending it
MAX_LIVE_CHUNK_SECONDS = 10.0  # one chunk from an API client
# A session's streams are dropped this long after their last chunk (a tab left open holds nothing).
LIVE_STATE_TTL_S = 900
# Mic streams cost milliseconds per chunk; their own group keeps them from waiting behind uploads.
LIVE_CONCURRENCY, LIVE_CONCURRENCY_LIMIT = "live", 4
# An upload streams as fast as the models compute; its view (a figure that grows with every chunk)
# goes to the page at most this often.
UPDATE_EVERY_S = 0.4
TABLE_COLUMNS = ["model", "mixer", "digits", "seconds streamed", "last chunk ms", "state KiB", "real-time factor"]
NO_TRANSCRIBER_MESSAGE = (
    "**No streaming transcriber saved yet.** They appear here once their folders are in "
    "`weights/transcribers/` (train one with `python -m effviz.train_transcriber`)."
)
COLOURS = plotly.colors.qualitative.Plotly


@dataclass
class ModelTrace:
    """One model's stream and what each chunk cost it."""

    model_id: str
    stream: streaming.DigitStream
    seconds: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    state_kib: list[float] = field(default_factory=list)

    @property
    def sample_rate(self) -> int:
        return self.stream.model.config.sample_rate

    def feed(self, samples: torch.Tensor) -> None:
        if samples.shape[0] == 0:
            return
        report = self.stream.feed(samples)
        self.seconds.append(report.seconds_streamed)
        self.latency_ms.append(report.compute_seconds * 1e3)
        self.state_kib.append(report.state_bytes / 1024)

    def real_time_factor(self) -> float | None:
        """Compute time over audio time: below 1, the model keeps up with speech."""
        return sum(self.latency_ms) / 1e3 / self.seconds[-1] if self.seconds else None


_warmed: set[str] = set()


def start_traces(models: Sequence[str]) -> list[ModelTrace]:
    """A fresh stream per model. A model's first chunk in this process is fed once untimed, on a
    throwaway stream: first allocations are not what its latency should show."""
    check_model_count(models)
    traces = []
    for model_id in models:
        model = streaming.load_transcriber(model_id)  # ValueError for an unknown id
        if model_id not in _warmed:
            streaming.DigitStream(model).feed(torch.zeros(round(streaming.CHUNK_SECONDS * model.config.sample_rate)))
            _warmed.add(model_id)
        traces.append(ModelTrace(model_id, streaming.DigitStream(model)))
    return traces


def transcript_table(traces: Sequence[ModelTrace]) -> pd.DataFrame:
    rows = []
    for t in traces:
        rtf = t.real_time_factor()
        rows.append([t.model_id, t.stream.model.config.mixer, streaming.digits_text(t.stream.transcript),
                     round(t.seconds[-1], 2) if t.seconds else 0.0, round(t.latency_ms[-1], 2) if t.latency_ms else None,
                     round(t.state_kib[-1], 1) if t.state_kib else None, None if rtf is None else round(rtf, 4)])
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def cost_figure(traces: Sequence[ModelTrace]) -> go.Figure:
    """Per-chunk compute time and held state against seconds streamed, one colour per model."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("compute per chunk (ms)", "state held (KiB)"),
                        horizontal_spacing=0.1)
    for i, t in enumerate(traces):
        colour = COLOURS[i % len(COLOURS)]
        seconds = np.asarray(t.seconds, dtype=np.float32)  # sent as binary arrays, compact for long streams
        for col, values in ((1, t.latency_ms), (2, t.state_kib)):
            fig.add_trace(go.Scatter(x=seconds, y=np.asarray(values, dtype=np.float32), mode="lines", name=t.model_id,
                                     legendgroup=t.model_id, showlegend=col == 1, line=dict(color=colour)),
                          row=1, col=col)
    fig.update_xaxes(title_text="seconds streamed")
    fig.update_yaxes(rangemode="tozero")
    fig.update_layout(height=360, margin=dict(t=40, b=40), legend=dict(orientation="h", y=-0.25))
    return fig


def rtf_line(traces: Sequence[ModelTrace]) -> str:
    parts = [f"{t.model_id} {t.real_time_factor():.3f}" for t in traces if t.seconds]
    return "Real-time factor (compute time / audio time; under 1 keeps up with speech): " + ", ".join(parts) + "."


def _view(status: str, traces: Sequence[ModelTrace]) -> tuple[str, pd.DataFrame, go.Figure]:
    return status, transcript_table(traces), cost_figure(traces)


def _no_models_view() -> tuple[str, pd.DataFrame, go.Figure]:
    status = NO_TRANSCRIBER_MESSAGE if not streaming.list_transcribers() else "Choose at least one model."
    return _view(status, [])


# ---- an uploaded recording -----------------------------------------------------------------------


@reports_bad_input
def transcribe_stream(payload: Any, models: Sequence[str] | None) -> Iterator[tuple[str, pd.DataFrame, go.Figure]]:
    """Stream a recording through every model in ``models`` in chunks of ``streaming.CHUNK_SECONDS``,
    yielding (status, transcripts, cost figure) as it goes and once at the end."""
    models = list(models or [])
    if not models:
        yield _no_models_view()
        return
    source = upload_source(payload)
    if source is None:
        raise gr.Error("No recording yet: upload a sound file first.", title=ERROR_TITLE)
    samples, rate = read_audio(source, max_seconds=MAX_RECORDING_SECONDS)
    traces = start_traces(models)
    waveforms = {r: prepare_waveform(samples, rate, r, MAX_RECORDING_SECONDS) for r in {t.sample_rate for t in traces}}
    steps = {r: round(streaming.CHUNK_SECONDS * r) for r in waveforms}
    chunks = max(math.ceil(w.shape[0] / steps[r]) for r, w in waveforms.items())
    duration = samples.shape[0] / rate
    head = f"{duration:.1f} s at {rate} Hz, in chunks of {streaming.CHUNK_SECONDS:g} s through {counted(len(traces), 'model')}"
    yield _view(f"Streaming {head} ...", traces)
    sent = time.monotonic()
    for i in range(chunks):
        for t in traces:  # every model takes the chunk before the next chunk: the transcripts grow together
            step = steps[t.sample_rate]
            t.feed(waveforms[t.sample_rate][i * step:(i + 1) * step])
        if time.monotonic() - sent >= UPDATE_EVERY_S:
            yield _view(f"Streaming {head}: {traces[0].seconds[-1]:.1f} s so far ...", traces)
            sent = time.monotonic()
    yield _view(f"Done: {head}. {rtf_line(traces)}", traces)


# ---- the microphone ------------------------------------------------------------------------------


@dataclass
class LiveSession:
    """One visitor's microphone stream: a resampler per model rate, a stream per model."""

    models: tuple[str, ...]
    sample_rate: int
    traces: list[ModelTrace]
    resamplers: dict[int, StreamResampler]
    seconds: float = 0.0  # of audio received

    @classmethod
    def start(cls, models: tuple[str, ...], sample_rate: int) -> LiveSession:
        traces = start_traces(models)
        rates = {t.sample_rate for t in traces}
        return cls(models, sample_rate, traces, {r: StreamResampler(sample_rate, r) for r in rates})


@reports_bad_input
def transcribe_live(payload: Any, models: Sequence[str] | None,
                    session: LiveSession | None) -> tuple[str, pd.DataFrame, go.Figure, LiveSession | None]:
    """The next chunk of a microphone stream (a short WAV file, as the browser sends it every
    ``LIVE_CHUNK_EVERY_S``): resampled to each model's rate, fed to the visitor's streams.
    Returns (status, transcripts, cost figure, the session to keep)."""
    models = tuple(models or ())
    if not models:
        return (*_no_models_view(), None)
    source = upload_source(payload)
    if source is None:
        return (*_view("Press Record and say some digits.", session.traces if session else []), session)
    samples, rate = read_audio(source, max_seconds=MAX_LIVE_CHUNK_SECONDS)
    if session is None or session.models != models:  # models changed mid-stream: theirs starts now
        session = LiveSession.start(models, rate)
    if rate != session.sample_rate:
        raise gr.Error(f"the stream's sample rate changed from {session.sample_rate} to {rate} Hz; press Reset "
                       "to start again", title=ERROR_TITLE)
    room = MAX_LIVE_SECONDS - session.seconds
    chunk = to_mono(samples, rate)[: max(0, round(room * rate))]
    if chunk.shape[0]:
        session.seconds += chunk.shape[0] / rate
        resampled = {r: resampler.push(chunk) for r, resampler in session.resamplers.items()}
        for t in session.traces:
            t.feed(resampled[t.sample_rate])
    if session.seconds >= MAX_LIVE_SECONDS - 1e-9:
        status = (f"Stopped: a live stream is limited to {MAX_LIVE_SECONDS:g} s of audio. Press Reset to start "
                  f"another. {rtf_line(session.traces)}")
    else:
        status = f"Listening: {session.seconds:.1f} s at {rate} Hz. {rtf_line(session.traces)}"
    return (*_view(status, session.traces), session)


def reset_live() -> tuple[str, pd.DataFrame, go.Figure, None]:
    return (*_view("Reset: press Record and say some digits.", []), None)


# ---- the tab -------------------------------------------------------------------------------------


def build(examples: Examples) -> None:
    """The Live digits tab's components and events (inside the caller's ``gr.Blocks``)."""
    available = streaming.list_transcribers()
    gr.Markdown(
        "Say digits, or upload a recording of them (a phone number, a list of numbers): each chosen "
        "transcriber writes them down as they are said, reading the sound in chunks as it arrives "
        f"({streaming.CHUNK_SECONDS:g} s each for a recording, {LIVE_CHUNK_EVERY_S:g} s from the microphone) "
        "and keeping a state from one chunk to the next. Mamba, RWKV and RetNet keep a state of fixed "
        "size however long the stream; the transformer keeps the keys and values of every token "
        "heard so far, a cache that grows with the stream, and so does its time per chunk. The plot "
        "shows both for every model, chunk by chunk."
    )
    gr.Markdown(f"Limits: recordings up to {MAX_RECORDING_SECONDS / 60:g} min, microphone streams up to "
                f"{MAX_LIVE_SECONDS / 60:g} min (then the stream stops; Reset starts another).")
    with gr.Row():
        with gr.Column(scale=1):
            chosen = gr.Dropdown(available, value=available[:MAX_SHOWN_MODELS], multiselect=True,
                                 label=f"transcribers (at most {MAX_SHOWN_MODELS})", elem_id="live-models")
            recording = gr.Audio(type="filepath", sources=["upload"], label="recording", elem_id="live-recording")
            run = gr.Button("Stream the recording", variant="primary", elem_id="live-run")
            if examples.spoken_number:
                gr.Examples([[examples.spoken_number]], inputs=[recording], label="a phone number (espeak-ng)")
            mic = gr.Audio(sources=["microphone"], streaming=True, label="microphone (live)", elem_id="live-mic")
            reset = gr.Button("Reset", elem_id="live-reset")
        with gr.Column(scale=2):
            status = gr.Markdown(NO_TRANSCRIBER_MESSAGE if not available else "", elem_id="live-status")
            table = gr.Dataframe(headers=TABLE_COLUMNS, label="transcripts", interactive=False, elem_id="live-table")
            plot = gr.Plot(label="cost per chunk", elem_id="live-plot")
    session = gr.State(None, time_to_live=LIVE_STATE_TTL_S)

    run.click(
        transcribe_stream, [recording, chosen], [status, table, plot], api_name="transcribe_stream",
        preprocess=False, concurrency_id=PREDICT_CONCURRENCY, concurrency_limit=PREDICT_CONCURRENCY_LIMIT,
    )
    mic.stream(
        transcribe_live, [mic, chosen, session], [status, table, plot, session], api_name="transcribe_live",
        preprocess=False, stream_every=LIVE_CHUNK_EVERY_S, time_limit=round(MAX_LIVE_SECONDS),
        concurrency_id=LIVE_CONCURRENCY, concurrency_limit=LIVE_CONCURRENCY_LIMIT, show_progress="hidden",
    )
    reset.click(reset_live, None, [status, table, plot, session], api_visibility="private")
