"""The Gradio app's tabs, one module each; ``app.py`` assembles them.

Shared here: how an event's raw file payload becomes something our decoders read, how library
errors reach the user, the GPU decorator for Hugging Face ZeroGPU, the concurrency groups events
run in, and running every model of a task on one input (Vision, Audio and Multimodal tabs).
"""
from __future__ import annotations

import base64
import binascii
import functools
import inspect
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import gradio as gr
import numpy as np
import pandas as pd
import soundfile
import torch
from PIL import Image

from .. import api
from ..bench.memory import measure_peak_memory
from ..convert.loading import hub_offline_setting
from ..data.audio import read_audio
from ..data.image import open_image

F = TypeVar("F", bound=Callable[..., Any])

# Benchmarks (scaling sweeps, kernel tables) share one slot: a timing taken while another
# benchmark runs measures the contention, not the model. Predictions have their own group, so a
# long sweep never blocks them.
BENCH_CONCURRENCY = "benchmark"
PREDICT_CONCURRENCY = "predict"
PREDICT_CONCURRENCY_LIMIT = 2
ERROR_TITLE = "Cannot use this input"
NO_MODEL_MESSAGE = (
    "**No bundled model for this task yet.** Models appear here once their weights are in "
    "`weights/` (train one with `python -m effviz.train`) or an official release is chosen "
    "above (downloaded from the Hugging Face Hub on first use); ↻ refreshes the list."
)
# Result slots a tab shows side by side; a request naming more models is refused.
MAX_SHOWN_MODELS = 8
TOP_K = 5
PEAK_MEMORY_TIMEOUT_S = 120.0
# Largest file one upload may be; app.py hands it to Gradio, which refuses bigger ones before
# they reach our code. 100 MB holds a 48 MP phone photo or minutes of studio-quality WAV.
MAX_UPLOAD_MB = api.limit_from_env("EFFVIZ_MAX_UPLOAD_MB", 100.0)
# Uploads (and sweep downloads) sit in Gradio's cache ($GRADIO_TEMP_DIR, /tmp/gradio by default):
# every this many seconds, files older than this are deleted (and all of them when the app stops).
UPLOAD_RETENTION_S = max(1, round(api.limit_from_env("EFFVIZ_UPLOAD_RETENTION_S", 3600)))  # whole seconds for Gradio
MEASUREMENT_NOTE = (
    "**latency**: wall time of one `effviz.predict` call on the already decoded input (framing "
    "it to the model's input size, then the forward), after one untimed warm-up call per model. "
    "**weights**: memory of the model's parameters and buffers. **peak**: only when asked for "
    "(it takes a few seconds): the extra resident memory one prediction needs, read from the "
    "kernel's high-water mark in a separate process, weights and decoded input excluded."
)
RESULT_COLUMNS = ["model", "mixer", "top-1", "probability", "latency ms", "weights MiB", "peak MiB"]

try:  # present on Hugging Face Spaces: a ZeroGPU Space lends a GPU to each decorated call
    import spaces
except ImportError:
    spaces = None


def gpu(fn: F) -> F:
    """``spaces.GPU(fn)`` when the ``spaces`` package is importable (itself a no-op outside
    ZeroGPU Spaces), ``fn`` unchanged otherwise."""
    return spaces.GPU(fn) if spaces is not None else fn


def devices() -> list[str]:
    """Devices a benchmark can run on here: the CPU, and CUDA when torch sees a GPU."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def limits_line() -> str:
    """The input limits as one line of Markdown, shown under each tab's introduction."""
    return (
        f"Limits: pictures up to {api.MAX_IMAGE_PIXELS:,} pixels, sounds up to {api.MAX_AUDIO_SECONDS:g} s, "
        f"files up to {MAX_UPLOAD_MB:g} MB per upload, deleted from the server within "
        f"{_duration(2 * UPLOAD_RETENTION_S)}."
    )


def _duration(seconds: int) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds} s"


def reports_bad_input(fn: F) -> F:
    """Make ``fn``'s ``ValueError``/``FileNotFoundError`` (the library's bad-input errors) a
    ``gr.Error`` with the same message: the user reads what is wrong instead of Gradio's generic
    "Error", and the server keeps running. Works for plain functions and generators."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:  # already meant for the user (gr.Error is a ValueError too)
                raise
            except (ValueError, FileNotFoundError) as err:
                raise gr.Error(str(err), title=ERROR_TITLE) from err

        return generator_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:  # already meant for the user (gr.Error is a ValueError too)
            raise
        except (ValueError, FileNotFoundError) as err:
            raise gr.Error(str(err), title=ERROR_TITLE) from err

    return wrapper  # type: ignore[return-value]


def upload_source(payload: Any) -> str | bytes | None:
    """The file behind an event input taken raw (``preprocess=False``): a path or the bytes.

    Image events skip Gradio's preprocessing because it opens the picture with PIL before our
    code runs, so a damaged upload would end in a generic error; we decode it ourselves
    (``effviz.data.image.open_image``) and say what is wrong. A raw payload is Gradio's file
    record: a dict with ``path`` (an upload already in Gradio's cache) or a ``data:`` URL (a
    picture sent inline). Plain path strings (preprocessed inputs, examples) pass through.
    """
    if payload is None or isinstance(payload, str):
        return payload
    if isinstance(payload, dict):
        if payload.get("path"):
            return payload["path"]
        url = payload.get("url") or ""
        if url.startswith("data:"):
            try:
                return base64.b64decode(url.partition(",")[2], validate=True)
            except (binascii.Error, ValueError) as err:
                raise gr.Error("the inline file data is not valid base64", title=ERROR_TITLE) from err
    raise gr.Error(f"unexpected input of type {type(payload).__name__}", title=ERROR_TITLE)


def sketch_source(payload: Any) -> str | bytes | None:
    """The flattened drawing (``composite``) of a raw ``gr.Sketchpad`` payload; None if absent."""
    if isinstance(payload, dict) and "composite" in payload:
        return upload_source(payload["composite"])
    return upload_source(payload)


# ---- every model of a task on one input ----------------------------------------------------------


@dataclass
class ModelResult:
    """One model's answer to one input: top-5 probabilities and latency, or why there are none."""

    model_id: str
    probabilities: dict[str, float] | None = None
    latency_ms: float | None = None
    error: str | None = None
    peak_mib: float | None = None
    peak_error: str | None = None  # why peak memory was asked for but not measured


_warmed: set[str] = set()


def timed_predict(model_id: str, **model_input: Any) -> ModelResult:
    """``effviz.predict`` (top 5) and its wall time. A model's first call in this process runs
    once untimed before: loading weights (for an official release, the first download),
    first allocations and (on GPU) compiling kernels are not what its latency should show. A
    ``ValueError`` (this model cannot take this input) or ``FileNotFoundError`` (its official
    weights cannot be fetched) is kept in the result, so that the other models still answer."""
    try:
        if model_id not in _warmed:
            api.predict(model_id, top_k=TOP_K, **model_input)
            _warmed.add(model_id)
        start = time.perf_counter()
        probabilities = api.predict(model_id, top_k=TOP_K, **model_input)
    except (ValueError, FileNotFoundError) as err:  # FileNotFoundError: an official release that cannot be fetched
        return ModelResult(model_id, error=str(err))
    return ModelResult(model_id, probabilities, (time.perf_counter() - start) * 1e3)


def model_choices(task: str) -> list[tuple[str, str]]:
    """The model picker's (label, id) pairs for ``task``: the models ready here (folders under
    weights/, official releases already in the Hugging Face cache), then the official releases
    still to download, with their size. Reads the disk only: no network call."""
    ready = api.list_models(task)
    releases = api.list_releases(task)
    choices = [(f"{m} (official)" if m in releases else m, m) for m in ready]
    choices += [(f"{name} (official, ~{r.size_mb} MB download on first use)", name)
                for name, r in releases.items() if name not in ready]
    return choices


def default_models(task: str) -> list[str]:
    """What a tab runs unless the visitor picks: the models trained here (no download)."""
    releases = api.list_releases(task)
    return [m for m in api.list_models(task) if m not in releases][:MAX_SHOWN_MODELS]


def official_models_note() -> str:
    """What the tabs say about official weights; offline, plainly that they need the Hub."""
    if hub_offline_setting() is not None:
        return ("Official models (ImageNet-1k, AudioSet) need the Hugging Face Hub, and this app runs "
                "offline (`HF_HUB_OFFLINE` is set): only those already in its cache can be used.")
    return ("Official models (ImageNet-1k, AudioSet) are downloaded from the Hugging Face Hub the first "
            "time one is used, with a progress bar, and read from the cache afterwards.")


def announce_downloads(models: Sequence[str], progress: Any) -> None:
    """Tell the visitor, through the event's ``gr.Progress``, which official releases are about to
    be downloaded (huggingface_hub's own tqdm bars follow when it shows them)."""
    releases = api.list_releases()
    pending = [m for m in models if m in releases and api.release_file(releases[m]) is None]
    if pending:
        size = sum(releases[m].size_mb for m in pending)
        progress(0, desc=f"downloading {', '.join(pending)} (~{size} MB) from the Hugging Face Hub, once")


def check_model_count(models: Sequence[str]) -> None:
    if len(models) > MAX_SHOWN_MODELS:
        raise gr.Error(f"pick at most {MAX_SHOWN_MODELS} models at once ({len(models)} were asked for)",
                       title=ERROR_TITLE)


def slot_values(models: Sequence[str], probabilities: Sequence[dict[str, float] | None]) -> list[Any]:
    """The values of a tab's ``MAX_SHOWN_MODELS`` result labels: one per model that ran, in
    order, then None (API clients get plain values; :func:`slot_looks` names and shows them)."""
    values = list(probabilities or [None] * len(models))
    return values + [None] * (MAX_SHOWN_MODELS - len(values))


def slot_looks(models: Sequence[str] | None) -> list[Any]:
    """The result labels named after the chosen models, the unused ones hidden."""
    models = list(models or [])[:MAX_SHOWN_MODELS]
    return [gr.update(label=m, visible=True) for m in models] + [
        gr.update(visible=False) for _ in range(MAX_SHOWN_MODELS - len(models))
    ]


def raise_if_all_failed(results: Sequence[ModelResult]) -> None:
    """One message for the user when no model could take the input (all for the same reason,
    typically the input itself, such as an empty drawing)."""
    if results and all(r.error is not None for r in results):
        messages = list(dict.fromkeys(r.error for r in results))
        raise gr.Error("; ".join(messages), title=ERROR_TITLE)


def measure_peaks(results: Sequence[ModelResult], image: Image.Image | None = None,
                  audio: tuple[np.ndarray, int] | None = None) -> None:
    """Fill ``peak_mib`` of the results that have an answer, measured in one child process."""
    answered = [r for r in results if r.error is None]
    if not answered:
        return
    with tempfile.TemporaryDirectory(prefix="effviz-peak-") as tmp:
        files: dict[str, str] = {}
        if image is not None:
            files["image"] = str(Path(tmp) / "input.png")
            image.save(files["image"])
        if audio is not None:
            files["audio"] = str(Path(tmp) / "input.wav")
            soundfile.write(files["audio"], audio[0], audio[1], subtype="FLOAT")
        calls = [{"model_id": r.model_id, **files} for r in answered]
        readings = measure_peak_memory("effviz.ui:prediction_call", calls, timeout_s=PEAK_MEMORY_TIMEOUT_S)
    for result, reading in zip(answered, readings):
        result.peak_mib, result.peak_error = reading.peak_mib, reading.error


def status_line(summary: str, results: Sequence[ModelResult]) -> str:
    """``summary``, plus why any asked-for peak memory is missing."""
    missing = [f"{r.model_id}: {r.peak_error}" for r in results if r.peak_error]
    return summary + "".join(f"\n\nPeak memory not measured for {note}" for note in missing)


def prediction_call(model_id: str, image: str | None = None, audio: str | None = None) -> Callable[[], Any]:
    """Memory-child factory (``effviz.ui:prediction_call``): the model is loaded and the input
    files decoded now, so that only the prediction itself counts in the measured peak."""
    model_input: dict[str, Any] = {}
    if image is not None:
        model_input["image"] = open_image(image)
    if audio is not None:
        model_input["audio"], model_input["sample_rate"] = read_audio(audio)
    api.load_model(model_id)
    return lambda: api.predict(model_id, **model_input)


def weights_mib(model_id: str) -> float:
    model = api.load_model(model_id)
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def result_table(results: Sequence[ModelResult]) -> pd.DataFrame:
    """The per-model table: top-1, latency and memory of each result."""
    rows = []
    for r in results:
        mixer = api.load_model(r.model_id).config.mixer if r.error is None else ""
        if r.probabilities:
            label, probability = next(iter(r.probabilities.items()))
            rows.append([r.model_id, mixer, label, round(probability, 4), _round(r.latency_ms),
                         _round(weights_mib(r.model_id)), _round(r.peak_mib)])
        else:
            rows.append([r.model_id, mixer, f"error: {r.error}", None, None, None, None])
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
