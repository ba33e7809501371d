"""Scaling sweeps: latency and peak memory of whole models as their input grows (DESIGN.md §5).

A sweep runs every model of a ``SweepSpec`` at every value of one axis:

- ``resolution``: side of a square image in px, rounded down to a multiple of the model's patch;
- ``seconds``: audio length; the input is a (batch, seconds * 100, mel_bins) fbank;
- ``tokens``: fused audio-visual sequence length, for models that take both modalities: image
  side and audio length grow together, about half the tokens each; the actual count is reported;
- ``length``: text length in tokens, for the causal language models (random token ids).

Each point (one value of the axis) runs in fresh child processes (this module run as a script),
one point at a time. One timing child builds every model of the point and times their forwards
with an allocator that keeps what it frees (``timing.steady_allocator_env``: jemalloc, no page
faults once warm) and the shared protocol of ``effviz.bench.timing``: one warm-up each, then
rounds of one forward per model (A B C A B C ...), so that a busy spell of the machine hits all
of them alike, as many rounds as the time budget allows; a run that waited for the CPU (wall
time over CPU time) is flagged and run again. The headline latency is the minimum of a model's
undisturbed runs, with p20 and p80 kept beside it. Then each model's peak memory is measured in
a child of its own, started with ``MALLOC_MMAP_THRESHOLD_=65536`` as ``effviz.bench.memory``
does (that setting slows forwards, so it never shares a process with timing).

Before a point runs each model's memory is estimated, and it is recorded as "oom" without running
when the estimate exceeds what the machine has free. A model that runs out of memory or past its
time limit is recorded as such and its larger points are skipped; the other models of the point
are timed again without it. Nothing a point does can crash the sweep or keep memory afterwards:
it all lived in the children.

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
from effviz.bench.devices import bench_device
from effviz.bench.fit import Cost, Crossover, Exponent, crossover, fit_exponent, upper_half
from effviz.bench.kernels import _processor_name
from effviz.bench.memory import MALLOC_ENV, peak_of_call_mib
from effviz.bench.timing import (
    TimingPolicy, calibrate, describe_allocator, describe_calibration, measure_interleaved, steady_allocator_env,
    time_once,
)
from effviz.kernels import native
from effviz.kernels.dispatch import pick
from effviz.models import EffvizModel, ModelConfig, architecture_config
from effviz.models.language import LanguageModel
from effviz.models.registry import ARCHITECTURES, BUNDLED_RECIPES, LANGUAGE_MODELS
from effviz.wording import counted

AXES = {"resolution": "px", "seconds": "s", "tokens": "tokens", "length": "tokens"}
AXIS_MODALITIES = {"resolution": ("image",), "seconds": ("audio",), "tokens": ("image", "audio"), "length": ("text",)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
STATUSES = ("ok", "oom", "timeout", "skipped", "error")
# Which points take turns in the timed runs. "models": the models of one size (A B A B ...), one
# size after the other, each size reported as soon as it is done (the app's live plot). "all":
# every model at every size in one round (A1 B1 A2 B2 ... A1 B1 ...), so that a machine whose
# speed drifts over minutes slows every size alike and the exponents, which compare sizes, hold
# still; the points come at the end, and every model at every size is held in memory at once.
INTERLEAVE = ("models", "all")
ALLOCATORS = ("steady", "glibc")
FRAMES_PER_SECOND = 100  # Kaldi fbank, 10 ms frame shift
KERNEL_OPS = ("selective_scan", "bi_wkv", "retention", "rms_norm", "causal_conv1d")
MIB = 2**20

# Memory estimate of a point (see estimate_memory_mib). Peak activation memory of one inference
# forward, in 4-byte values per token and embedding channel. Measured with the memory child
# (fp32, batch 1, 1 thread, Ti-sized models at 448 and 896 px): DeiT-Ti (SDPA) 12, Vim-Ti 22,
# VRWKV-Ti 13, ViR-Ti 16, DeiT-Ti with radius-32 window attention 23; set about 1.4x higher for
# per-thread buffers and allocator slack.
ACTIVATION_VALUES = {"attention": 16, "mamba": 32, "rwkv": 20, "retention": 24, "window_attention": 32}
# Eager attention also holds (heads, L, L) scores: 1.9-2.1 copies measured at 896-1248 px.
EAGER_SCORE_COPIES = 2.5
# Causal attention (SDPA with its boolean (L, L) mask) holds more than the mask: gpt-tiny grew by
# 2.6 bytes per (L, L) entry beyond its linear part from 1024 to 2048 tokens (mask included), i.e.
# a tenth of a copy of the (heads, L, L) fp32 scores; with the mask, set 1.5x higher.
CAUSAL_SCORE_COPIES = 0.25
# A child's own footprint before any model: Python + torch + effviz are about 520 MiB resident
# on CPU; a CUDA context takes a similar amount on the GPU.
CHILD_BASE_MIB = 550
# Keep this much of the free memory (at least MEMORY_MARGIN_MIB) for everything else.
MEMORY_MARGIN_FRACTION, MEMORY_MARGIN_MIB = 0.1, 512
_POLL_S = 0.05


# ---- what to run ---------------------------------------------------------------------------


def model_config(model_id: str) -> ModelConfig:
    """Config of an official tiny architecture, a bundled recipe or a language model (weights
    not needed)."""
    if model_id in ARCHITECTURES:
        return architecture_config(model_id)
    if model_id in BUNDLED_RECIPES:
        return BUNDLED_RECIPES[model_id]()
    if model_id in LANGUAGE_MODELS:
        return LANGUAGE_MODELS[model_id]()
    raise ValueError(
        f"unknown model {model_id!r}; architectures: {', '.join(ARCHITECTURES)}; "
        f"bundled: {', '.join(BUNDLED_RECIPES)}; language models: {', '.join(LANGUAGE_MODELS)}"
    )


def build_model(cfg: ModelConfig) -> torch.nn.Module:
    """The model a config describes: a language model for text, the classifier otherwise."""
    return LanguageModel(cfg) if cfg.modalities == ("text",) else EffvizModel(cfg)


@dataclass(frozen=True)
class PointInput:
    """The input one point feeds its model, and the sequence length that makes."""

    image_side: int | None
    audio_frames: int | None
    tokens: int
    text_tokens: int | None = None

    def describe(self) -> str:
        if self.text_tokens is not None:
            return f"text {self.text_tokens} tokens"
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
        example = {"resolution": "vim-tiny", "seconds": "aum-tiny", "tokens": "av-mamba-tiny", "length": "gpt-tiny"}[axis]
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

    if axis == "length":
        if round(x) < 1:
            raise ValueError(f"{model_id}: a text needs at least 1 token, got {x:g}")
        return PointInput(None, None, round(x), text_tokens=round(x))
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

    ``values`` are sorted and de-duplicated. ``budget_s`` is the time the timed runs of one
    point may fill (all its models together), within ``min_runs`` and ``max_runs`` undisturbed
    runs per model. ``timeout_s`` is each model's time limit: in the timing child its share
    (starting Python and torch and building the model included), and each memory child. One
    warm-up forward over ``timeout_s / (1 + min_runs + max_redos)`` counts as a timeout: its
    timed runs and redos could not fit. ``threads`` defaults to this process's torch thread
    count; with one, a run that waited for the CPU is told apart exactly. ``interleave`` (an
    ``INTERLEAVE`` key) says which points take turns. ``allocator``: "steady" times with
    ``timing.steady_allocator_env`` (jemalloc where installed), "glibc" with the plain malloc of
    a Python process, to see what the allocator costs. Invalid specs raise ValueError on
    construction, before anything runs.
    """

    models: tuple[str, ...]
    axis: str
    values: tuple[float, ...]
    device: str = "cpu"
    dtype: str = "fp32"
    batch: int = 1
    budget_s: float = 2.0
    min_runs: int = 3
    max_runs: int = 30
    timeout_s: float = 120.0
    threads: int | None = None
    interleave: str = "models"
    allocator: str = "steady"

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
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout_s}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.interleave not in INTERLEAVE:
            raise ValueError(f"unknown interleave {self.interleave!r}; choose one of {', '.join(INTERLEAVE)}")
        if self.allocator not in ALLOCATORS:
            raise ValueError(f"unknown allocator {self.allocator!r}; choose one of {', '.join(ALLOCATORS)}")
        device = bench_device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device cuda asked for, but torch sees no CUDA GPU here")
        self.policy()  # raises on a bad budget or run counts
        for model_id in self.models:
            for x in self.values:
                plan_input(model_id, self.axis, x)

    @property
    def unit(self) -> str:
        return AXES[self.axis]

    def resolved_threads(self) -> int:
        return self.threads or torch.get_num_threads()

    def policy(self) -> TimingPolicy:
        """The timing protocol's settings for this sweep (CPU time is no guide on CUDA)."""
        on_cpu = torch.device(self.device).type == "cpu"
        return TimingPolicy(budget_s=self.budget_s, min_runs=self.min_runs, max_runs=self.max_runs,
                            check_cpu=on_cpu, cpu_fallback=on_cpu and self.resolved_threads() == 1)

    def warmup_limit_s(self) -> float:
        """The longest one warm-up forward may take for the model's timed runs to fit its limit."""
        policy = self.policy()
        return self.timeout_s / (1 + policy.min_runs + policy.max_redos)


def default_spec() -> SweepSpec:
    """The app's default sweep, a few minutes on a 2-core CPU: Vim-Ti against DeiT-Ti (SDPA and
    eager) at four resolutions spanning 4x in side (16x in tokens), so that each model gets an
    exponent from 3 or more sizes; 1 thread, so that disturbed runs are told apart exactly."""
    return SweepSpec(models=("vim-tiny", "deit-tiny", "deit-tiny-eager"), axis="resolution",
                     values=(160, 320, 480, 640), budget_s=2.0, min_runs=3, max_runs=20, timeout_s=120, threads=1)


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
    # The timing protocol's detail: spread of the runs the headline (minimum) came from, those
    # runs, whether they are wall or CPU times (see effviz.bench.timing.Timing), and every run as
    # [wall ms, CPU ms, disturbed]. Absent in sweeps saved before it.
    latency_p20_ms: float | None = None
    latency_p80_ms: float | None = None
    latency_runs_ms: list[float] | None = None
    latency_basis: str = "wall"
    disturbed_runs: int = 0
    all_runs: list[list[Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- memory estimate -------------------------------------------------------------------------


@functools.cache
def parameter_count(model_id: str) -> int:
    """Parameters of a model, counted on the meta device: nothing is allocated."""
    with torch.device("meta"):
        model = build_model(model_config(model_id))
    return sum(p.numel() for p in model.parameters())


def estimate_memory_mib(model_id: str, axis: str, x: float, batch: int = 1, dtype: str = "fp32") -> float:
    """Rough memory a point needs on top of a bare child process: weights, input, and the peak
    activations of one forward (linear in tokens, plus the L² scores of eager attention)."""
    cfg = model_config(model_id)
    point = plan_input(model_id, axis, x)
    item = DTYPES[dtype].itemsize
    length = point.tokens
    total = parameter_count(model_id) * item
    # One block's activations are alive at a time: a hybrid peaks in its costliest kind of block.
    mixers = set(cfg.block_mixers())
    total += max(ACTIVATION_VALUES[m] for m in mixers) * batch * length * cfg.embed_dim * 4
    if "attention" in mixers and cfg.attn_impl == "eager":
        total += EAGER_SCORE_COPIES * batch * cfg.num_heads * length**2 * item
    if "attention" in mixers and cfg.causal:  # the (L, L) causal mask, and SDPA's masked scores
        total += length**2 + CAUSAL_SCORE_COPIES * batch * cfg.num_heads * length**2 * item
    if point.text_tokens is not None:  # next-token logits over the vocabulary
        total += batch * length * cfg.num_classes * item
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


# ---- one point in child processes ------------------------------------------------------------


@dataclass(frozen=True)
class _ChildOutcome:
    status: str  # a STATUSES entry, or "stopped"
    value: float | None = None  # peak memory
    reason: str = ""
    timing: dict[str, Any] | None = None  # Timing.to_dict() of a latency run


@dataclass(frozen=True)
class _ChildEnding:
    """How a child ended: "exited", "timeout" or "stopped"; its result file and progress lines."""

    ending: str
    result: dict[str, Any] | None
    progress: list[dict[str, Any]]
    returncode: int | None
    stderr: str


def _run_child(spec: SweepSpec, request: dict[str, Any], timeout_s: float, stop: threading.Event | None) -> _ChildEnding:
    """Run this module as a child that measures what ``request`` says; kill it on timeout or stop."""
    request = {**request, "axis": spec.axis, "device": spec.device, "dtype": spec.dtype, "batch": spec.batch,
               "threads": spec.resolved_threads()}
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    if request["mode"] == "memory":
        env.update(MALLOC_ENV)
    elif spec.allocator == "steady":
        env.update(steady_allocator_env(env))
    env["OMP_NUM_THREADS"] = str(request["threads"])
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="effviz-sweep-") as tmp:
        result_path, stderr_path, progress_path = Path(tmp) / "result.json", Path(tmp) / "stderr.txt", Path(tmp) / "progress.jsonl"
        request["progress"] = str(progress_path)
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
                ending = _wait(proc, timeout_s, stop)
            finally:  # also on KeyboardInterrupt: never leave a child running
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        result = json.loads(result_path.read_text()) if result_path.exists() else None
        progress = [json.loads(line) for line in progress_path.read_text().splitlines()] if progress_path.exists() else []
        return _ChildEnding(ending, result, progress, proc.returncode, stderr_path.read_text(errors="replace"))


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
    if "skipped" in result:
        return _ChildOutcome("skipped", reason=result["skipped"])
    if "timeout" in result:
        return _ChildOutcome("timeout", reason=f"{mode} run: {result['timeout']}")
    if "error" not in result:
        return _ChildOutcome("ok", result.get("value"), timing=result.get("timing"))
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


def _time_point(
    spec: SweepSpec, points: Sequence[tuple[str, float]], stop: threading.Event | None
) -> dict[tuple[str, float], _ChildOutcome] | None:
    """Latency of every (model, x) of ``points``, timed interleaved in one child, the budget
    ``spec.budget_s`` per size; None when stopped.

    A child that runs past its limit (each point's ``timeout_s``) or dies is blamed on the point
    it was building or warming up (its progress file says which): that point fails, the model's
    larger points among them are skipped, and the others are timed again in a fresh child. A
    child that fails during the interleaved runs fails them all.
    """
    outcomes: dict[tuple[str, float], _ChildOutcome] = {}
    pending = list(points)
    while pending:
        sizes = len({x for _, x in pending})
        request = {"mode": "latency", "points": [list(p) for p in pending],
                   "policy": asdict(replace(spec.policy(), budget_s=spec.budget_s * sizes)),
                   "warmup_limit_s": spec.warmup_limit_s()}
        ended = _run_child(spec, request, spec.timeout_s * len(pending), stop)
        if ended.ending == "stopped":
            return None
        if ended.ending == "exited" and ended.result is not None:
            for point, result in zip(pending, ended.result["points"]):
                outcomes[point] = _outcome_from_result(result, "latency")
            return outcomes
        if ended.ending == "timeout":
            failed = _ChildOutcome("timeout", reason=f"latency run exceeded the {spec.timeout_s:g} s limit "
                                   "(which includes starting the process and building the model)")
        else:
            failed = _outcome_from_death(ended.returncode, ended.stderr, "latency")
        warmed = {line["warmed"] for line in ended.progress if "warmed" in line}
        started = [line["starting"] for line in ended.progress if "starting" in line]
        if not started or started[-1] in warmed:  # during the timed runs, or before any point: no one to single out
            outcomes.update({p: failed for p in pending})
            return outcomes
        culprit = pending[started[-1]]
        outcomes[culprit] = failed
        model_id, x = culprit
        for later in [p for p in pending if p[0] == model_id and p[1] > x]:
            outcomes[later] = _ChildOutcome("skipped", reason=f"after {failed.status} at {x:g} {spec.unit}: "
                                            f"{failed.reason}")
        pending = [p for p in pending if p not in outcomes]
    return outcomes


def _point_forward(model_id: str, axis: str, x: float, device: str, dtype: str, batch: int) -> Callable[[], Any]:
    """Build a randomly initialised model and its input; return one inference forward."""
    point = plan_input(model_id, axis, x)
    cfg = model_config(model_id)
    dev, dt = torch.device(device), DTYPES[dtype]
    model = build_model(cfg).eval().to(device=dev, dtype=dt)
    inputs = {}
    if point.text_tokens is not None:
        inputs["tokens"] = torch.randint(0, cfg.num_classes, (batch, point.text_tokens), device=dev)
    if point.image_side is not None:
        inputs["image"] = torch.randn(batch, cfg.in_chans, point.image_side, point.image_side, device=dev, dtype=dt)
    if point.audio_frames is not None:
        inputs["audio"] = torch.randn(batch, point.audio_frames, cfg.mel_bins, device=dev, dtype=dt)

    def forward():
        with torch.inference_mode():
            return model(**inputs)

    return forward


def _error(err: BaseException) -> dict[str, str]:
    return {"error": f"{type(err).__name__}: {err}", "type": type(err).__name__}


def _latency_child(request: dict[str, Any]) -> dict[str, Any]:
    """Build and warm up each (model, x) point (one failing does not stop the others), then time
    the ones that are ready interleaved. Results in the order of ``request["points"]``."""
    device = request["device"]
    policy = TimingPolicy(**request["policy"])
    sync = (lambda: torch.cuda.synchronize(device)) if torch.device(device).type == "cuda" else None
    results: dict[int, dict[str, Any]] = {}
    forwards: dict[str, Callable[[], Any]] = {}
    too_slow: dict[str, str] = {}  # model -> why its larger points are not built
    with open(request["progress"], "a") as progress:
        for i, (model_id, x) in enumerate(request["points"]):
            if model_id in too_slow:
                results[i] = {"skipped": too_slow[model_id]}
                continue
            progress.write(json.dumps({"starting": i}) + "\n")
            progress.flush()
            try:
                forward = _point_forward(model_id, request["axis"], x, device, request["dtype"], request["batch"])
                # Warm-up: native kernels load, Triton compiles, thread pools start.
                warmup_s = time_once(forward, policy, sync).wall_ms / 1e3
            except Exception as err:  # reported to the parent, which files it as oom or error
                results[i] = _error(err)
                continue
            finally:  # failed or not, this point is done: only a hang or a death leaves it "starting"
                progress.write(json.dumps({"warmed": i}) + "\n")
                progress.flush()
            if warmup_s > request["warmup_limit_s"]:
                results[i] = {"timeout": (
                    f"one forward took {warmup_s:.1f} s: its timed runs would not fit the time limit "
                    f"(a warm-up may take {request['warmup_limit_s']:.1f} s)")}
                too_slow[model_id] = f"after timeout at {x:g}: {results[i]['timeout']}"
            else:
                forwards[str(i)] = forward
    if forwards:
        timings = measure_interleaved(forwards, policy, sync)
        results.update({int(i): {"timing": t.to_dict()} for i, t in timings.items()})
    return {"points": [results[i] for i in range(len(request["points"]))]}


def _child_main(result_path: str) -> None:
    request = json.load(sys.stdin)
    torch.set_num_threads(request["threads"])
    try:
        if request["mode"] == "latency":
            result = _latency_child(request)
        else:
            forward = _point_forward(
                request["model"], request["axis"], request["x"], request["device"], request["dtype"], request["batch"]
            )
            forward()  # warm-up, as for latency: one-time loading is not the forward's memory
            result = {"value": peak_of_call_mib(forward, request["device"])}
    except Exception as err:  # reported to the parent, which files it as oom or error
        result = _error(err)
        if request["mode"] == "latency":  # failed during the interleaved runs: all points alike
            result = {"points": [result for _ in request["points"]]}
    Path(result_path).write_text(json.dumps(result))


def _memory_child(spec: SweepSpec, model_id: str, x: float, stop: threading.Event | None) -> _ChildOutcome:
    ended = _run_child(spec, {"mode": "memory", "model": model_id, "x": x}, spec.timeout_s, stop)
    if ended.ending == "stopped":
        return _ChildOutcome("stopped")
    if ended.ending == "timeout":
        return _ChildOutcome("timeout", reason=f"memory run exceeded the {spec.timeout_s:g} s limit "
                             "(which includes starting the process and building the model)")
    if ended.result is not None:
        return _outcome_from_result(ended.result, "memory")
    return _outcome_from_death(ended.returncode, ended.stderr, "memory")


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
    """Measure every model at every value, smallest values first, yielding each point when done
    (the models of one value are timed together, or every point together with ``interleave="all"``;
    then each point is measured for memory on its own).

    Waits (from the first ``next``) while another sweep runs in this process. Setting ``stop``
    kills the running child and ends the sweep without yielding the points of that value that
    were not finished. Exhaust or close the generator to let the next sweep run.
    """
    if not _acquire_turn(stop):
        return
    try:
        native.available()  # builds the C kernels here if needed, not inside a child's time limit
        blocked: dict[str, str] = {}  # model -> why its larger points are skipped
        if spec.interleave == "all":
            results = {(m, x): _planned(spec, m, x, blocked) for x in spec.values for m in spec.models}
            for result in _measure(spec, results, stop):
                if result is None:
                    return
                yield result
            return
        for x in spec.values:
            if stop is not None and stop.is_set():
                return
            for result in _run_value(spec, x, blocked, stop):
                if result is None:
                    return
                if result.status in ("oom", "timeout") and result.model not in blocked:
                    blocked[result.model] = f"after {result.status} at {x:g} {spec.unit}: {result.reason}"
                yield result
    finally:
        _SWEEP_LOCK.release()


def _run_value(
    spec: SweepSpec, x: float, blocked: dict[str, str], stop: threading.Event | None
) -> Iterator[PointResult | None]:
    """Every model at ``x``, in the spec's order; None when stopped."""
    results = {(m, x): _planned(spec, m, x, blocked) for m in spec.models}
    yield from _measure(spec, results, stop)


def _planned(spec: SweepSpec, model_id: str, x: float, blocked: dict[str, str]) -> PointResult:
    """A point before it is measured: "ok" to measure, or skipped (blocked) or refused (memory)."""
    point = plan_input(model_id, spec.axis, x)
    result = PointResult(model_id, spec.axis, x, point.tokens, None, None, "ok", "", point.describe())
    if model_id in blocked:
        return replace(result, status="skipped", reason=blocked[model_id])
    if (refusal := _memory_refusal(spec, model_id, x)) is not None:
        return replace(result, status="oom", reason=refusal)
    return result


def _measure(spec: SweepSpec, results: dict[tuple[str, float], PointResult], stop: threading.Event | None
             ) -> Iterator[PointResult | None]:
    """Time the "ok" points of ``results`` interleaved, then measure each one's memory; yield
    every point in order, None when stopped."""
    to_time = [key for key, r in results.items() if r.status == "ok"]
    try:
        latencies = _time_point(spec, to_time, stop) if to_time else {}
    except Exception as err:  # on this side (no process could start ...): record it, go on
        latencies = {k: _ChildOutcome("error", reason=f"could not run: {type(err).__name__}: {err}") for k in to_time}
    if latencies is None:
        yield None
        return
    for key, result in results.items():
        if key in latencies:
            result = _with_latency(result, latencies[key])
            if result.status == "ok":
                result = _with_memory(spec, result, stop)
        if result is None:
            yield None
            return
        yield result


def _with_latency(result: PointResult, latency: _ChildOutcome) -> PointResult:
    if latency.status != "ok":
        return replace(result, status=latency.status, reason=latency.reason)
    timing = latency.timing
    reason = ""
    if timing["unstable"]:
        reason = f"unstable: {timing['disturbed']} of {len(timing['all_runs'])} runs waited for the CPU; "
        reason += ("latency from their CPU times (1 thread: each run without its waiting)" if timing["basis"] == "cpu"
                   else "latency from their wall times, waiting included")
    return replace(result, latency_ms=timing["min_ms"], latency_p20_ms=timing["p20_ms"],
                   latency_p80_ms=timing["p80_ms"], latency_runs_ms=timing["runs_ms"], latency_basis=timing["basis"],
                   disturbed_runs=timing["disturbed"], all_runs=timing["all_runs"], reason=reason)


def _with_memory(spec: SweepSpec, result: PointResult, stop: threading.Event | None) -> PointResult | None:
    if torch.device(spec.device).type == "cpu" and not Path("/proc/self/clear_refs").exists():
        note = "peak memory not measured: CPU peak memory needs Linux (/proc/self/clear_refs)"
        return replace(result, reason="; ".join(r for r in (result.reason, note) if r))
    try:
        memory = _memory_child(spec, result.model, result.x, stop)
    except Exception as err:  # on this side (no process could start ...): record it, go on
        memory = _ChildOutcome("error", reason=f"could not run: {type(err).__name__}: {err}")
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
    """Where and how the sweep is measured: the header of every report. Includes a calibration
    of the machine's noise, taken now (``effviz.bench.timing.calibrate``)."""
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
        "budget_s": spec.budget_s,
        "min_runs": spec.min_runs,
        "max_runs": spec.max_runs,
        "timeout_s": spec.timeout_s,
        "interleave": spec.interleave,
        "allocator": describe_allocator() if spec.allocator == "steady" else "glibc malloc (--allocator glibc)",
        "memory_available_mib": available_memory_mib(spec.device),
        "calibration": calibrate(),
    }


def _value(point: PointResult, metric: str) -> float | None:
    return point.latency_ms if metric == "latency" else point.peak_mem_mib


def _runs(point: PointResult, metric: str) -> list[float] | None:
    """What a point's headline came from: its undisturbed latency runs (the headline alone in
    sweeps saved before they were kept), or its one memory reading."""
    value = _value(point, metric)
    if value is None or value <= 0:
        return None
    if metric == "latency" and point.latency_runs_ms:
        return list(point.latency_runs_ms)
    return [value]


def _cost(point: PointResult, metric: str, as_baseline: bool) -> Cost:
    """A point's cost for the crossover: (headline, p80) of its latency runs, its memory reading;
    for a baseline that ran out of memory or time (or was skipped after that), infinity;
    otherwise nothing."""
    value = _value(point, metric)
    if value is not None:
        if metric == "latency" and point.latency_p80_ms is not None:
            return value, point.latency_p80_ms
        return value
    return math.inf if as_baseline and point.status in ("oom", "timeout", "skipped") else None


def _exponent(points: Sequence[PointResult], metric: str, x_range: tuple[float, float] | None) -> Exponent:
    measured = [
        (p.tokens, runs) for p in points
        if (runs := _runs(p, metric)) and (x_range is None or x_range[0] <= p.x <= x_range[1])
    ]
    ns, runs = [n for n, _ in measured], [r for _, r in measured]
    if x_range is None:
        ns, runs = upper_half(ns, runs)
    return fit_exponent(ns, runs)


def summarize(points: Sequence[PointResult], fit_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """Scaling exponents per model and crossovers of each efficient model against each
    attention baseline, for latency and for memory.

    Exponents (``Exponent.to_dict()``: value, 95% bootstrap interval, or why refused) are
    least-squares slopes of log(cost) vs log(tokens) over the upper half of a model's measured
    points (3 at least) and, with ``fit_range`` (x units, inclusive), over that range; refused
    from fewer than 3 sizes or a span under 2x in tokens (``effviz.bench.fit``).
    """
    by_model: dict[str, list[PointResult]] = {}
    for p in sorted(points, key=lambda p: p.x):
        by_model.setdefault(p.model, []).append(p)
    mixers = {m: model_config(m).mixer for m in by_model}
    fits = [
        {
            "model": m,
            "mixer": mixers[m],
            "latency": _exponent(ps, "latency", None).to_dict(),
            "memory": _exponent(ps, "memory", None).to_dict(),
            "fit_range": list(fit_range) if fit_range else None,
            "latency_in_range": _exponent(ps, "latency", fit_range).to_dict() if fit_range else None,
            "memory_in_range": _exponent(ps, "memory", fit_range).to_dict() if fit_range else None,
        }
        for m, ps in by_model.items()
    ]
    crossovers = [
        pair_crossovers(by_model[eff], by_model[base])
        for eff in (m for m in by_model if mixers[m] != "attention")
        for base in (m for m in by_model if mixers[m] == "attention")
    ]
    return {"fits": fits, "crossovers": crossovers}


def pair_crossovers(efficient: Sequence[PointResult], baseline: Sequence[PointResult]) -> dict[str, Any]:
    """Where the model of ``efficient`` becomes faster and smaller than that of ``baseline``, over
    the values both were run at: {"efficient", "baseline", "latency", "memory"}, each metric a
    ``Crossover.to_dict()``."""
    eff_at = {p.x: p for p in efficient}
    base_at = {p.x: p for p in baseline}
    xs = sorted(eff_at.keys() & base_at.keys())
    entry: dict[str, Any] = {"efficient": efficient[0].model, "baseline": baseline[0].model}
    for metric in ("latency", "memory"):
        found: Crossover = crossover(
            xs,
            [_cost(eff_at[x], metric, False) for x in xs],
            [_cost(base_at[x], metric, True) for x in xs],
            [eff_at[x].tokens for x in xs],
        )
        entry[metric] = found.to_dict()
    return entry


def estimate_left_s(spec: SweepSpec, size_seconds: Sequence[float]) -> float:
    """Seconds the sizes not yet measured should take, from how long each finished size took
    (``size_seconds``, in order): each size to come as long as the last one did, and at least the
    time budget. Before any size is done, the budget alone: a floor, as starting the children
    and building the models come on top."""
    last = size_seconds[-1] if size_seconds else 0.0
    return (len(spec.values) - len(size_seconds)) * max(spec.budget_s, last)


def disturbed_runs(points: Sequence[PointResult]) -> int:
    """Timed runs of the sweep so far that waited for the CPU and are measured again."""
    return sum(p.disturbed_runs for p in points)


# ---- report --------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"


def describe_protocol(env: dict[str, Any]) -> str:
    """How latency is measured, in one sentence."""
    threads = env["threads"]
    return (
        f"latency: the minimum of each model's undisturbed runs (p20-p80 beside it), "
        f"{env['min_runs']}-{env['max_runs']} runs per model, "
        + ("every model at every size timed in turn (A1 B1 A2 B2 ... A1 B1 ...), "
           f"for about {env['budget_s']:g} s per size, " if env.get("interleave") == "all" else
           f"the models of a point timed in turn (A B A B ...) for about {env['budget_s']:g} s, ")
        + f"{counted(threads, 'torch thread')}; "
        f"a run whose wall time exceeds its CPU time by over {100 * TimingPolicy().margin:.0f}% waited for the CPU "
        "and is run again; a point still short of undisturbed runs after 5 redos says \"unstable\" and takes "
        + ("the CPU times of all its runs (with one thread, each run without its waiting)" if threads == 1
           else "the wall times of all its runs")
        + (f"; allocator: {env['allocator']}" if env.get("allocator") else "")
    )


def format_environment(env: dict[str, Any]) -> str:
    backends = ", ".join(f"{op} {b}" for op, b in env["kernel_backends"].items())
    memory = env["memory_available_mib"]
    return (
        f"**{env['device_name']}** ({env['device']}, {counted(env['threads'], 'thread')}), {env['dtype']}, "
        f"batch {env['batch']}, time limit {env['timeout_s']:g} s per model and point; "
        f"python {env['python']}, torch {env['torch']}, triton {env['triton'] or 'not installed'}, "
        f"effviz {env['effviz']}; free memory {_fmt(memory, 4)} MiB\n\n"
        f"Measuring: {describe_protocol(env)}.\n\n"
        f"Noise: {describe_calibration(env['calibration'])}.\n\nKernel backends: {backends}\n"
    )


def _median_faults(point: PointResult) -> str:
    """The median minor page faults of a point's timed runs, or "—" where none were counted."""
    faults = [run[3] for run in point.all_runs or [] if len(run) > 3 and run[3] >= 0]
    return "—" if not faults else f"{sorted(faults)[len(faults) // 2]:,}"


def format_report(env: dict[str, Any], points: Sequence[PointResult], summary: dict[str, Any], unit: str) -> str:
    """Markdown: environment, one row per point, exponents, crossovers."""
    lines = [format_environment(env),
             "| model | x | tokens | input | latency ms (min) | p20-p80 ms | runs (redone) | page faults per run | "
             "peak MiB | status | reason |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        spread = "—" if p.latency_p20_ms is None else f"{_fmt(p.latency_p20_ms)}-{_fmt(p.latency_p80_ms)}"
        runs = "—" if not p.latency_runs_ms else f"{len(p.latency_runs_ms)} ({p.disturbed_runs})"
        lines.append(
            f"| {p.model} | {p.x:g} {unit} | {p.tokens} | {p.inputs} | {_fmt(p.latency_ms)} | {spread} | {runs} | "
            f"{_median_faults(p)} | {_fmt(p.peak_mem_mib)} | {p.status} | {p.reason} |"
        )
    fit_range = next((f["fit_range"] for f in summary["fits"] if f["fit_range"]), None)
    header = ["model", "mixer", "latency exponent", "memory exponent"]
    if fit_range:
        span = f"{fit_range[0]:g}-{fit_range[1]:g} {unit}"
        header += [f"latency exponent ({span})", f"memory exponent ({span})"]
    lines += ["", "Scaling exponents: slope of log(cost) vs log(tokens) over the upper half of the points (3 at "
              "least, spanning 2x in tokens), with its 95% bootstrap interval over the runs.", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for f in summary["fits"]:
        cells = [f["model"], f["mixer"], Exponent(**f["latency"]).describe(), Exponent(**f["memory"]).describe()]
        if fit_range:
            cells += [Exponent(**f["latency_in_range"]).describe(), Exponent(**f["memory_in_range"]).describe()]
        lines.append("| " + " | ".join(cells) + " |")
    if summary["crossovers"]:
        lines += ["", "Crossovers: where the efficient model becomes faster / smaller than the baseline, beyond "
                  "the spread of the runs.", "",
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
