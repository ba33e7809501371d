"""Scaling sweeps: latency and peak memory of whole models as their input grows (DESIGN.md §5).

A sweep runs every model of a ``SweepSpec`` at every value of one axis:

- ``resolution``: side of a square image in px, rounded down to a multiple of the model's patch;
- ``seconds``: audio length; the input is a (batch, seconds * 100, mel_bins) fbank;
- ``tokens``: fused audio-visual sequence length, for models that take both modalities: image
  side and audio length grow together, about half the tokens each; the actual count is reported.

Each point runs in isolation, one at a time, in two fresh child processes (this module run as a
script): one times the forward with normal malloc (one warm-up, then the median of ``repeats``;
CUDA events on GPU), the other, started with ``MALLOC_MMAP_THRESHOLD_=65536``, measures the peak
memory of one forward as ``effviz.bench.memory`` does. Before a point runs its memory is
estimated, and it is recorded as "oom" without running when the estimate exceeds what the machine
has free. A child that runs out of memory or past the time limit is recorded as such and the
larger points of that model are skipped. Nothing a point does can crash the sweep or keep memory
afterwards: it all lived in the child.

``run_sweep`` yields each point as it finishes, so the app can draw curves as they grow, and
stops promptly (killing the running child) when its ``stop`` event is set. Sweeps in one process
run one at a time: timings must not overlap.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

import effviz
from effviz.bench.fit import Crossover, crossover, loglog_slope, upper_half
from effviz.bench.kernels import _processor_name
from effviz.bench.memory import MALLOC_ENV, peak_of_call_mib
from effviz.kernels import native
from effviz.kernels.dispatch import pick
from effviz.models import EffvizModel, ModelConfig, architecture_config
from effviz.models.registry import ARCHITECTURES, BUNDLED_RECIPES

AXES = {"resolution": "px", "seconds": "s", "tokens": "tokens"}
AXIS_MODALITIES = {"resolution": ("image",), "seconds": ("audio",), "tokens": ("image", "audio")}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
STATUSES = ("ok", "oom", "timeout", "skipped", "error")
FRAMES_PER_SECOND = 100  # Kaldi fbank, 10 ms frame shift
KERNEL_OPS = ("selective_scan", "bi_wkv", "retention", "rms_norm", "causal_conv1d")
MIB = 2**20

# Memory estimate of a point (see estimate_memory_mib). Peak activation memory of one inference
# forward, in 4-byte values per token and embedding channel. Measured with the memory child
# (fp32, batch 1, 1 thread, Ti-sized models at 448 and 896 px): DeiT-Ti (SDPA) 12, Vim-Ti 22,
# VRWKV-Ti 13, ViR-Ti 16; set about 1.4x higher for per-thread buffers and allocator slack.
ACTIVATION_VALUES = {"attention": 16, "mamba": 32, "rwkv": 20, "retention": 24}
# Eager attention also holds (heads, L, L) scores: 1.9-2.1 copies measured at 896-1248 px.
EAGER_SCORE_COPIES = 2.5
# A child's own footprint before any model: Python + torch + effviz are about 520 MiB resident
# on CPU; a CUDA context takes a similar amount on the GPU.
CHILD_BASE_MIB = 550
# Keep this much of the free memory (at least MEMORY_MARGIN_MIB) for everything else.
MEMORY_MARGIN_FRACTION, MEMORY_MARGIN_MIB = 0.1, 512
_POLL_S = 0.05


# ---- what to run ---------------------------------------------------------------------------


def model_config(model_id: str) -> ModelConfig:
    """Config of an official tiny architecture or of a bundled recipe (weights not needed)."""
    if model_id in ARCHITECTURES:
        return architecture_config(model_id)
    if model_id in BUNDLED_RECIPES:
        return BUNDLED_RECIPES[model_id]()
    raise ValueError(
        f"unknown model {model_id!r}; architectures: {', '.join(ARCHITECTURES)}; "
        f"bundled: {', '.join(BUNDLED_RECIPES)}"
    )


@dataclass(frozen=True)
class PointInput:
    """The input one point feeds its model, and the sequence length that makes."""

    image_side: int | None
    audio_frames: int | None
    tokens: int

    def describe(self) -> str:
        parts = []
        if self.image_side is not None:
            parts.append(f"image {self.image_side}x{self.image_side}")
        if self.audio_frames is not None:
            parts.append(f"audio {self.audio_frames / FRAMES_PER_SECOND:g} s ({self.audio_frames} frames)")
        return " + ".join(parts)


def plan_input(model_id: str, axis: str, x: float) -> PointInput:
    """The input of ``model_id`` at ``x`` on ``axis``; ValueError when the model does not take
    the axis' modality or ``x`` is too small for one patch."""
    if axis not in AXES:
        raise ValueError(f"unknown axis {axis!r}; choose one of {', '.join(AXES)}")
    cfg = model_config(model_id)
    needed = AXIS_MODALITIES[axis]
    if not set(needed) <= set(cfg.modalities):
        example = {"resolution": "vim-tiny", "seconds": "aum-tiny", "tokens": "av-mamba-digits"}[axis]
        raise ValueError(
            f"model {model_id!r} takes {' and '.join(cfg.modalities)} input, but the {axis} axis needs "
            f"a model that takes {' and '.join(needed)} (e.g. {example})"
        )
    prefix = (0 if cfg.cls_token is None else 1) + int(cfg.dist_token)  # class (and distillation) token
    patch, audio_patch = cfg.patch_size, cfg.audio_patch_size
    stride = cfg.audio_patch_stride or audio_patch  # AST's audio patches overlap
    mel_rows = (cfg.mel_bins - (cfg.audio_patch_mel or audio_patch)) // stride + 1  # 1 for full-spectrum strips

    def frames_for(time_patches: int) -> int:
        return (time_patches - 1) * stride + audio_patch

    if axis == "resolution":
        side = int(x) // patch * patch
        if side == 0:
            raise ValueError(f"{model_id}: resolution {x:g} px is smaller than one {patch} px patch")
        return PointInput(side, None, (side // patch) ** 2 + prefix)
    if axis == "seconds":
        frames = round(x * FRAMES_PER_SECOND)
        if frames < audio_patch:
            raise ValueError(
                f"{model_id}: {x:g} s of audio is shorter than one {audio_patch}-frame patch "
                f"({audio_patch / FRAMES_PER_SECOND:g} s)"
            )
        time_patches = (frames - audio_patch) // stride + 1
        return PointInput(None, frames_for(time_patches), mel_rows * time_patches + prefix)
    smallest = 1 + mel_rows + prefix
    if round(x) < smallest:
        raise ValueError(f"{model_id}: {x:g} tokens is fewer than one image and one audio patch ({smallest})")
    # Half the tokens from a square image grid, the rest from audio time steps of mel_rows tokens.
    target = round(x) - prefix
    grid = max(1, round(math.sqrt(target / 2)))
    time_patches = max(1, round((target - grid**2) / mel_rows))
    return PointInput(grid * patch, frames_for(time_patches), grid**2 + mel_rows * time_patches + prefix)


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep runs: ``models`` (registry ids) at each of ``values`` along ``axis``.

    ``values`` are sorted and de-duplicated. ``timeout_s`` bounds each child process (starting
    Python and torch and building the model included). ``threads`` defaults to this process's
    torch thread count. Invalid specs raise ValueError on construction, before anything runs.
    """

    models: tuple[str, ...]
    axis: str
    values: tuple[float, ...]
    device: str = "cpu"
    dtype: str = "fp32"
    batch: int = 1
    repeats: int = 3
    timeout_s: float = 120.0
    threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(dict.fromkeys(self.models)))
        object.__setattr__(self, "values", tuple(sorted(set(float(v) for v in self.values))))
        if not self.models:
            raise ValueError("a sweep needs at least one model")
        if not self.values:
            raise ValueError("a sweep needs at least one value")
        if any(not math.isfinite(v) or v <= 0 for v in self.values):
            raise ValueError(f"sweep values must be positive numbers, got {list(self.values)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.batch < 1 or self.repeats < 1:
            raise ValueError(f"batch and repeats must be >= 1, got {self.batch} and {self.repeats}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout_s}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        device = torch.device(self.device)  # raises on nonsense such as "gpu"
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device cuda asked for, but torch sees no CUDA GPU here")
        for model_id in self.models:
            for x in self.values:
                plan_input(model_id, self.axis, x)

    @property
    def unit(self) -> str:
        return AXES[self.axis]

    def resolved_threads(self) -> int:
        return self.threads or torch.get_num_threads()


def default_spec() -> SweepSpec:
    """A quick sweep for the app's default (well under a minute on a 2-core CPU): Vim-Ti against
    DeiT-Ti at small resolutions, one timed run per point."""
    return SweepSpec(models=("vim-tiny", "deit-tiny"), axis="resolution", values=(64, 128, 192), repeats=1, timeout_s=60)


@dataclass(frozen=True)
class PointResult:
    """One model at one size. ``x`` is the value asked for on the axis; ``tokens`` and ``inputs``
    say what the model actually got (sides round down to whole patches). ``status`` is one of
    STATUSES; ``reason`` says why it is not "ok" (or why a value is missing). Values measured
    before a failure are kept (e.g. the latency of a point whose memory run timed out)."""

    model: str
    axis: str
    x: float
    tokens: int
    latency_ms: float | None
    peak_mem_mib: float | None
    status: str
    reason: str
    inputs: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- memory estimate -------------------------------------------------------------------------


@functools.cache
def parameter_count(model_id: str) -> int:
    """Parameters of a model, counted on the meta device: nothing is allocated."""
    with torch.device("meta"):
        model = EffvizModel(model_config(model_id))
    return sum(p.numel() for p in model.parameters())


def estimate_memory_mib(model_id: str, axis: str, x: float, batch: int = 1, dtype: str = "fp32") -> float:
    """Rough memory a point needs on top of a bare child process: weights, input, and the peak
    activations of one forward (linear in tokens, plus the L² scores of eager attention)."""
    cfg = model_config(model_id)
    point = plan_input(model_id, axis, x)
    item = DTYPES[dtype].itemsize
    length = point.tokens
    total = parameter_count(model_id) * item
    total += ACTIVATION_VALUES[cfg.mixer] * batch * length * cfg.embed_dim * 4
    if cfg.mixer == "attention" and cfg.attn_impl == "eager":
        total += EAGER_SCORE_COPIES * batch * cfg.num_heads * length**2 * item
    # Image stem: each full-resolution conv + GELU holds 2 x stem_channels values per pixel; the
    # stride-2 conv + GELU holds 2 x 2*stem_channels at 1/4 of the pixels.
    stem = 2 * cfg.stem_channels * cfg.stem_depth + (cfg.stem_channels if cfg.stem_stride == 2 else 0)
    if point.image_side is not None:
        pixels = batch * point.image_side**2
        total += pixels * (cfg.in_chans + stem) * item  # input, stem
    if point.audio_frames is not None:
        cells = batch * point.audio_frames * cfg.mel_bins
        total += cells * 2 * item  # fbank and its transpose
    return total / MIB


def available_memory_mib(device: str) -> float | None:
    """Free memory for a new child: CUDA free memory, or MemAvailable; None when unknown."""
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free / MIB
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _memory_refusal(spec: SweepSpec, model_id: str, x: float) -> str | None:
    available = available_memory_mib(spec.device)
    if available is None:
        return None
    usable = available - max(MEMORY_MARGIN_MIB, MEMORY_MARGIN_FRACTION * available)
    needed = CHILD_BASE_MIB + estimate_memory_mib(model_id, spec.axis, x, spec.batch, spec.dtype)
    if needed <= usable:
        return None
    return (
        f"not run: estimated to need {needed:,.0f} MiB, but only {available:,.0f} MiB is free "
        f"on {spec.device} (keeping a margin of {available - usable:,.0f} MiB)"
    )


# ---- one point in a child process ------------------------------------------------------------


@dataclass(frozen=True)
class _ChildOutcome:
    status: str  # a STATUSES entry, or "stopped"
    value: float | None = None
    reason: str = ""


def _run_child(spec: SweepSpec, mode: str, model_id: str, x: float, stop: threading.Event | None) -> _ChildOutcome:
    """Run this module as a child that measures ``mode`` ("latency" or "memory") of one point."""
    request = {
        "mode": mode, "model": model_id, "axis": spec.axis, "x": x, "device": spec.device,
        "dtype": spec.dtype, "batch": spec.batch, "repeats": spec.repeats, "threads": spec.resolved_threads(),
    }
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}  # latency: normal malloc
    if mode == "memory":
        env.update(MALLOC_ENV)
    env["OMP_NUM_THREADS"] = str(request["threads"])
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="effviz-sweep-") as tmp:
        result_path, stderr_path = Path(tmp) / "result.json", Path(tmp) / "stderr.txt"
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "effviz.bench.sweep", str(result_path)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr, env=env,
            )
            try:
                try:
                    proc.stdin.write(json.dumps(request).encode())
                    proc.stdin.close()
                except BrokenPipeError:  # the child died at once; its exit status says why
                    pass
                ending = _wait(proc, spec.timeout_s, stop)
            finally:  # also on KeyboardInterrupt: never leave a child running
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if ending == "stopped":
            return _ChildOutcome("stopped")
        if ending == "timeout":
            return _ChildOutcome(
                "timeout", reason=f"{mode} run exceeded the {spec.timeout_s:g} s limit "
                "(which includes starting the process and building the model)",
            )
        if result_path.exists():
            return _outcome_from_result(json.loads(result_path.read_text()), mode)
        return _outcome_from_death(proc.returncode, stderr_path.read_text(errors="replace"), mode)


def _wait(proc: subprocess.Popen, timeout_s: float, stop: threading.Event | None) -> str:
    """Wait for the child: "exited", or "timeout" / "stopped" (the caller kills it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            proc.wait(timeout=_POLL_S)
            return "exited"
        except subprocess.TimeoutExpired:
            pass
        if stop is not None and stop.is_set():
            return "stopped"
        if time.monotonic() > deadline:
            return "timeout"


def _is_out_of_memory(error_type: str, message: str) -> bool:
    # torch raises OutOfMemoryError on CUDA, but a plain RuntimeError from its CPU allocator.
    return error_type in ("OutOfMemoryError", "MemoryError") or "can't allocate memory" in message


def _outcome_from_result(result: dict[str, Any], mode: str) -> _ChildOutcome:
    if "error" not in result:
        return _ChildOutcome("ok", result["value"])
    status = "oom" if _is_out_of_memory(result["type"], result["error"]) else "error"
    return _ChildOutcome(status, reason=f"{mode} run: {result['error']}")


def _outcome_from_death(returncode: int, stderr: str, mode: str) -> _ChildOutcome:
    if returncode == -signal.SIGKILL:
        return _ChildOutcome("oom", reason=f"{mode} run killed by SIGKILL (the out-of-memory killer, most likely)")
    if returncode < 0:
        return _ChildOutcome("error", reason=f"{mode} run killed by {signal.Signals(-returncode).name}")
    tail = " | ".join(stderr.strip().splitlines()[-3:])
    if _is_out_of_memory("", stderr):
        return _ChildOutcome("oom", reason=f"{mode} run: {tail}")
    return _ChildOutcome("error", reason=f"{mode} run exited with code {returncode}" + (f": {tail}" if tail else ""))


def _point_forward(model_id: str, axis: str, x: float, device: str, dtype: str, batch: int) -> Callable[[], Any]:
    """Build a randomly initialised model and its input; return one inference forward."""
    point = plan_input(model_id, axis, x)
    cfg = model_config(model_id)
    dev, dt = torch.device(device), DTYPES[dtype]
    model = EffvizModel(cfg).eval().to(device=dev, dtype=dt)
    inputs = {}
    if point.image_side is not None:
        inputs["image"] = torch.randn(batch, cfg.in_chans, point.image_side, point.image_side, device=dev, dtype=dt)
    if point.audio_frames is not None:
        inputs["audio"] = torch.randn(batch, point.audio_frames, cfg.mel_bins, device=dev, dtype=dt)

    def forward():
        with torch.inference_mode():
            return model(**inputs)

    return forward


def _median_latency_ms(forward: Callable[[], Any], repeats: int, device: str) -> float:
    forward()  # warm-up: native kernels load, Triton compiles, thread pools start
    times = []
    for _ in range(repeats):
        if torch.device(device).type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            forward()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _child_main(result_path: str) -> None:
    request = json.load(sys.stdin)
    try:
        torch.set_num_threads(request["threads"])
        forward = _point_forward(
            request["model"], request["axis"], request["x"], request["device"], request["dtype"], request["batch"]
        )
        if request["mode"] == "latency":
            result = {"value": _median_latency_ms(forward, request["repeats"], request["device"])}
        else:
            forward()  # warm-up, as for latency: one-time loading is not the forward's memory
            result = {"value": peak_of_call_mib(forward, request["device"])}
    except Exception as err:  # reported to the parent, which files it as oom or error
        result = {"error": f"{type(err).__name__}: {err}", "type": type(err).__name__}
    Path(result_path).write_text(json.dumps(result))


# ---- the sweep -----------------------------------------------------------------------------

# One sweep at a time per process: concurrent timings would measure each other.
_SWEEP_LOCK = threading.Lock()
_waiting = 0
_waiting_guard = threading.Lock()


def sweeps_waiting() -> int:
    """How many sweeps are waiting for the one running now to finish."""
    return _waiting


def sweep_running() -> bool:
    return _SWEEP_LOCK.locked()


def _acquire_turn(stop: threading.Event | None) -> bool:
    global _waiting
    with _waiting_guard:
        _waiting += 1
    try:
        while not _SWEEP_LOCK.acquire(timeout=_POLL_S):
            if stop is not None and stop.is_set():
                return False
        return True
    finally:
        with _waiting_guard:
            _waiting -= 1


def run_sweep(spec: SweepSpec, stop: threading.Event | None = None) -> Iterator[PointResult]:
    """Measure every model at every value, smallest values first, yielding each point when done.

    Waits (from the first ``next``) while another sweep runs in this process. Setting ``stop``
    kills the running child and ends the sweep without yielding that point. Exhaust or close
    the generator to let the next sweep run.
    """
    if not _acquire_turn(stop):
        return
    try:
        native.available()  # builds the C kernels here if needed, not inside a child's time limit
        blocked: dict[str, str] = {}  # model -> why its larger points are skipped
        for x in spec.values:
            for model_id in spec.models:
                if stop is not None and stop.is_set():
                    return
                try:
                    result = _run_point(spec, model_id, x, blocked.get(model_id), stop)
                except Exception as err:  # on this side (no process could start ...): record it, go on
                    point = plan_input(model_id, spec.axis, x)
                    result = PointResult(model_id, spec.axis, x, point.tokens, None, None, "error",
                                         f"could not run: {type(err).__name__}: {err}", point.describe())
                if result is None:
                    return
                if result.status in ("oom", "timeout") and model_id not in blocked:
                    blocked[model_id] = f"after {result.status} at {x:g} {spec.unit}: {result.reason}"
                yield result
    finally:
        _SWEEP_LOCK.release()


def _run_point(
    spec: SweepSpec, model_id: str, x: float, blocked: str | None, stop: threading.Event | None
) -> PointResult | None:
    point = plan_input(model_id, spec.axis, x)
    result = PointResult(model_id, spec.axis, x, point.tokens, None, None, "ok", "", point.describe())
    if blocked is not None:
        return replace(result, status="skipped", reason=blocked)
    refusal = _memory_refusal(spec, model_id, x)
    if refusal is not None:
        return replace(result, status="oom", reason=refusal)
    latency = _run_child(spec, "latency", model_id, x, stop)
    if latency.status == "stopped":
        return None
    if latency.status != "ok":
        return replace(result, status=latency.status, reason=latency.reason)
    result = replace(result, latency_ms=latency.value)
    if torch.device(spec.device).type == "cpu" and not Path("/proc/self/clear_refs").exists():
        return replace(result, reason="peak memory not measured: CPU peak memory needs Linux (/proc/self/clear_refs)")
    memory = _run_child(spec, "memory", model_id, x, stop)
    if memory.status == "stopped":
        return None
    if memory.status != "ok":
        return replace(result, status=memory.status, reason=memory.reason)
    return replace(result, peak_mem_mib=memory.value)


# ---- environment and summary ---------------------------------------------------------------


def kernel_backends(device: str) -> dict[str, str]:
    """The backend the dispatcher picks for each kernel op on ``device`` in inference (children
    inherit this process's environment, EFFVIZ_BACKEND included, so they pick the same)."""
    probe = torch.zeros(1, device=device)
    chosen = {}
    with torch.inference_mode():
        for op in KERNEL_OPS:
            impls = importlib.import_module(f"effviz.kernels.{op}").IMPLS
            fn = pick(op, impls, None, probe)
            chosen[op] = next(name for name, impl in impls.items() if impl is fn)
    return chosen


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def sweep_environment(spec: SweepSpec) -> dict[str, Any]:
    """Where and how the sweep is measured: the header of every report."""
    return {
        "device": spec.device,
        "device_name": _processor_name(torch.device(spec.device)),
        "threads": spec.resolved_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _package_version("triton"),
        "effviz": effviz.__version__,
        "kernel_backends": kernel_backends(spec.device),
        "dtype": spec.dtype,
        "batch": spec.batch,
        "repeats": spec.repeats,
        "timeout_s": spec.timeout_s,
        "memory_available_mib": available_memory_mib(spec.device),
    }


def _value(point: PointResult, metric: str) -> float | None:
    return point.latency_ms if metric == "latency" else point.peak_mem_mib


def _cost(point: PointResult, metric: str, as_baseline: bool) -> float | None:
    """A point's cost for the crossover: its value; for a baseline that ran out of memory or time
    (or was skipped after that), infinity; otherwise nothing."""
    value = _value(point, metric)
    if value is not None:
        return value
    return math.inf if as_baseline and point.status in ("oom", "timeout", "skipped") else None


def _exponent(points: Sequence[PointResult], metric: str, x_range: tuple[float, float] | None) -> float | None:
    measured = [
        (p.tokens, _value(p, metric)) for p in points
        if (_value(p, metric) or 0) > 0 and (x_range is None or x_range[0] <= p.x <= x_range[1])
    ]
    if len({n for n, _ in measured}) < 2:
        return None
    ns, costs = [n for n, _ in measured], [c for _, c in measured]
    if x_range is None:
        ns, costs = upper_half(ns, costs)
    return loglog_slope(ns, costs)


def summarize(points: Sequence[PointResult], fit_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """Scaling exponents per model and crossovers of each efficient model against each
    attention baseline, for latency and for memory.

    Exponents are least-squares slopes of log(cost) vs log(tokens) over the upper half of a
    model's measured points and, with ``fit_range`` (x units, inclusive), over that range; None
    where fewer than two points were measured.
    """
    by_model: dict[str, list[PointResult]] = {}
    for p in sorted(points, key=lambda p: p.x):
        by_model.setdefault(p.model, []).append(p)
    mixers = {m: model_config(m).mixer for m in by_model}
    fits = [
        {
            "model": m,
            "mixer": mixers[m],
            "latency_exponent": _exponent(ps, "latency", None),
            "memory_exponent": _exponent(ps, "memory", None),
            "fit_range": list(fit_range) if fit_range else None,
            "latency_exponent_in_range": _exponent(ps, "latency", fit_range) if fit_range else None,
            "memory_exponent_in_range": _exponent(ps, "memory", fit_range) if fit_range else None,
        }
        for m, ps in by_model.items()
    ]
    crossovers = []
    for eff in (m for m in by_model if mixers[m] != "attention"):
        for base in (m for m in by_model if mixers[m] == "attention"):
            eff_at = {p.x: p for p in by_model[eff]}
            base_at = {p.x: p for p in by_model[base]}
            xs = sorted(eff_at.keys() & base_at.keys())
            entry: dict[str, Any] = {"efficient": eff, "baseline": base}
            for metric in ("latency", "memory"):
                found: Crossover = crossover(
                    xs,
                    [_cost(eff_at[x], metric, False) for x in xs],
                    [_cost(base_at[x], metric, True) for x in xs],
                    [eff_at[x].tokens for x in xs],
                )
                entry[metric] = found.to_dict()
            crossovers.append(entry)
    return {"fits": fits, "crossovers": crossovers}


# ---- report --------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"


def format_environment(env: dict[str, Any]) -> str:
    backends = ", ".join(f"{op} {b}" for op, b in env["kernel_backends"].items())
    memory = env["memory_available_mib"]
    return (
        f"**{env['device_name']}** ({env['device']}, {env['threads']} threads), {env['dtype']}, "
        f"batch {env['batch']}, median of {env['repeats']}, time limit {env['timeout_s']:g} s per run; "
        f"python {env['python']}, torch {env['torch']}, triton {env['triton'] or 'not installed'}, "
        f"effviz {env['effviz']}; free memory {_fmt(memory, 4)} MiB\n\nKernel backends: {backends}\n"
    )


def format_report(env: dict[str, Any], points: Sequence[PointResult], summary: dict[str, Any], unit: str) -> str:
    """Markdown: environment, one row per point, exponents, crossovers."""
    lines = [format_environment(env), "| model | x | tokens | input | latency ms | peak MiB | status | reason |",
             "|---|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append(
            f"| {p.model} | {p.x:g} {unit} | {p.tokens} | {p.inputs} | {_fmt(p.latency_ms)} | "
            f"{_fmt(p.peak_mem_mib)} | {p.status} | {p.reason} |"
        )
    fit_range = next((f["fit_range"] for f in summary["fits"] if f["fit_range"]), None)
    header = ["model", "mixer", "latency exponent", "memory exponent"]
    if fit_range:
        span = f"{fit_range[0]:g}-{fit_range[1]:g} {unit}"
        header += [f"latency exponent ({span})", f"memory exponent ({span})"]
    lines += ["", "Scaling exponents: slope of log(cost) vs log(tokens), upper half of the points.", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for f in summary["fits"]:
        cells = [f["model"], f["mixer"], _fmt(f["latency_exponent"]), _fmt(f["memory_exponent"])]
        if fit_range:
            cells += [_fmt(f["latency_exponent_in_range"]), _fmt(f["memory_exponent_in_range"])]
        lines.append("| " + " | ".join(cells) + " |")
    if summary["crossovers"]:
        lines += ["", "Crossovers: where the efficient model becomes faster / smaller than the baseline.", "",
                  "| efficient | baseline | faster from | smaller from |", "|---|---|---|---|"]
        for c in summary["crossovers"]:
            faster = Crossover(**c["latency"]).describe(f" {unit}")
            smaller = Crossover(**c["memory"]).describe(f" {unit}")
            lines.append(f"| {c['efficient']} | {c['baseline']} | {faster} | {smaller} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    _child_main(sys.argv[1])
    # The result is on disk: skip the interpreter's teardown, where unloading torch takes a
    # second or two of every point on a small CPU.
    sys.stderr.flush()
    os._exit(0)
