"""Roofline of one model's forward: how far its measured latency sits above what its pieces cost alone.

The floor of a forward is the sum of two kinds of work, each priced on this machine in this run:

- **matmuls and convs** (every aten op torch's FLOP counter knows, plus CPU fused attention): each
  distinct call of the model (op and operand shapes) is replayed alone, so its FLOPs are priced at
  the GFLOP/s this machine reaches on exactly that GEMM;
- **kernels** (``effviz.kernels``: selective_scan, bi_wkv, retention, causal_conv1d, rms_norm,
  wkv): each distinct call is replayed alone and priced per element it pushes through (e.g.
  selective-scan ns per token x channel x state), times the elements the model pushes through.

"Everything else" (norms outside the kernels, elementwise glue, copies, Python and dispatch) has no
floor: it is the measured time minus the floor, and the overhead is that share of the measured time.

One instrumented forward finds the calls: a ``TorchDispatchMode`` sees every aten op, and a
``sys.setprofile`` hook sees every call of a public kernel function whatever module imported it by
name. aten ops run inside a kernel are the kernel's own work, not the model's matmuls. Then the
forward and every replayed call are timed interleaved by the shared protocol
(``effviz.bench.timing``), so a slow spell of the machine hits the forward and its floor alike.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, TextIO

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import conv_flop_count, flop_registry, sdpa_flop_count

import effviz
from effviz import kernels
from effviz.kernels import mamba_inner
from effviz.bench.sweep import model_config, plan_input
from effviz.bench.timing import TimingPolicy, describe_calibration, calibrate, measure_interleaved
from effviz.models import EffvizModel
from effviz.wording import counted

MATMULS = "matmuls & convs"
EVERYTHING_ELSE = "everything else"
FORWARD = "forward"
DEFAULT_MODELS = ("vim-tiny", "vrwkv-tiny", "vir-tiny", "deit-tiny")

# What one element of each kernel is: the unit its per-element cost is quoted in, and how many the
# call's arguments push through (the work its loops do, so costs compare across shapes).
KERNEL_UNITS: dict[str, tuple[str, Callable[[dict[str, Any]], int]]] = {
    "selective_scan": ("token x channel x state", lambda a: a["u"].numel() * a["A"].shape[1]),
    "causal_conv1d": ("token x channel x tap", lambda a: a["x"].numel() * a["weight"].shape[-1]),
    "rms_norm": ("token x channel", lambda a: a["x"].numel()),
    "bi_wkv": ("token x channel", lambda a: a["k"].numel()),
    "wkv": ("token x channel", lambda a: a["k"].numel()),
    "retention": ("token x head x dk x dv", lambda a: a["q"].numel() * a["v"].shape[-1]),
    # Vim's fused inference (effviz.kernels.mamba_inner): both branches' convs, then both scans.
    # A long sequence's conv runs by chunks of steps [start, stop), and its scan recomputes u from x.
    "mamba_conv_cpu": ("token x channel x tap x branch",
                       lambda a: a["x"].shape[0] * a["x"].shape[1]
                       * ((a["x"].shape[2] if a["stop"] is None else a["stop"]) - a["start"])
                       * a["branches"][0].conv_weight.shape[-1] * len(a["branches"])),
    "mamba_inner_cpu": ("token x channel x state x branch",
                        lambda a: a["xdbl"][0].shape[0] * a["xdbl"][0].shape[1] * a["branches"][0].dt_weight.shape[0]
                        * a["branches"][0].A_log.shape[1] * len(a["branches"])),
}
KERNEL_FUNCTIONS: dict[str, Callable] = {
    name: getattr(mamba_inner if name.startswith("mamba_") else kernels, name) for name in KERNEL_UNITS}


def _linear_flops(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    weight = args[1]
    return 2 * out.numel() * weight.shape[1]


def _matmul_flops(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    return 2 * out.numel() * args[0].shape[-1]


def _conv_flops(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    return conv_flop_count(args[0].shape, args[1].shape, out.shape, transposed=False)


def _attention_flops(args: tuple, kwargs: dict, out: Any) -> int:
    return sdpa_flop_count(args[0].shape, args[1].shape, args[2].shape)


# Under inference mode a dispatch mode sees composite ops whole (linear, conv2d, matmul, attention),
# which torch's FLOP registry does not list; it lists what they decompose into (mm, addmm, bmm ...).
# CPU fused attention is missing from it too.
_COMPOSITE_FLOPS: dict[Any, Callable[[tuple, dict, Any], int]] = {
    torch.ops.aten.linear.default: _linear_flops,
    torch.ops.aten.matmul.default: _matmul_flops,
    torch.ops.aten.conv1d.default: _conv_flops,
    torch.ops.aten.conv2d.default: _conv_flops,
    torch.ops.aten.scaled_dot_product_attention.default: _attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default: _attention_flops,
}


def _signature(values: Any) -> tuple:
    """A hashable summary of a call's arguments: shape, strides and dtype of tensors, values of the rest."""
    if isinstance(values, torch.Tensor):
        return ("tensor", tuple(values.shape), values.stride(), str(values.dtype))
    if isinstance(values, (list, tuple)):
        return tuple(_signature(v) for v in values)
    if isinstance(values, dict):
        return tuple((k, _signature(v)) for k, v in sorted(values.items()))
    return (repr(values),)


def _shape_text(args: Any) -> str:
    return " ".join("x".join(map(str, a.shape)) for a in args if isinstance(a, torch.Tensor))


@dataclass
class CallGroup:
    """Every call of one op with one argument signature: how often the forward makes it, the work
    of one call, and one call's arguments kept to replay it alone."""

    component: str
    name: str
    shapes: str
    replay: Callable[[], Any]
    count: int = 0
    work: int = 0  # FLOPs (matmuls) or elements (kernels) of one call


class _Recorder(TorchDispatchMode):
    """Records the model's matmul and conv calls (aten level) and its kernel calls (Python level)."""

    def __init__(self) -> None:
        super().__init__()
        self.groups: dict[tuple, CallGroup] = {}
        self._kernel_depth = 0
        self._kernel_codes = {fn.__code__: name for name, fn in KERNEL_FUNCTIONS.items()}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._kernel_depth:
            return out  # part of a kernel's own work
        if func in _COMPOSITE_FLOPS:
            flops = _COMPOSITE_FLOPS[func](args, kwargs, out)
        elif func._overloadpacket in flop_registry:
            flops = flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
        else:
            return out
        key = (MATMULS, str(func), _signature(args), _signature(kwargs))
        if key not in self.groups:
            self.groups[key] = CallGroup(MATMULS, func.__name__.split(".")[0], _shape_text(args),
                                         lambda: func(*args, **kwargs), work=int(flops))
        self.groups[key].count += 1
        return out

    def _profile(self, frame, event: str, arg: Any) -> None:
        name = self._kernel_codes.get(frame.f_code)
        if name is None:
            return
        if event == "call":
            if self._kernel_depth == 0:
                self._record_kernel(name, dict(frame.f_locals))
            self._kernel_depth += 1
        elif event == "return":
            self._kernel_depth -= 1

    def _record_kernel(self, name: str, call_args: dict[str, Any]) -> None:
        key = (name, _signature(call_args))
        if key not in self.groups:
            fn = KERNEL_FUNCTIONS[name]
            # Replays never write in place: the fused Vim kernel's output goes over z in the model.
            replay = {**call_args, "out": None} if "out" in call_args else call_args
            self.groups[key] = CallGroup(name, name, _shape_text(call_args.values()),
                                         lambda: fn(**replay), work=KERNEL_UNITS[name][1](call_args))
        self.groups[key].count += 1

    def __enter__(self):
        self._previous_profile = sys.getprofile()
        sys.setprofile(self._profile)
        return super().__enter__()

    def __exit__(self, *exc):
        sys.setprofile(self._previous_profile)
        return super().__exit__(*exc)


def record_calls(forward: Callable[[], Any]) -> list[CallGroup]:
    """The matmul and kernel calls one run of ``forward`` makes, grouped by op and signature."""
    recorder = _Recorder()
    with recorder:
        forward()
    return list(recorder.groups.values())


@dataclass
class Component:
    """One line of the breakdown. ``work``: FLOPs or elements in the forward; ``floor_ms``: their
    cost at the rates measured alone (None for everything else); ``rate``: GFLOP/s or ns per element."""

    name: str
    unit: str
    calls: int = 0
    work: int = 0
    floor_ms: float | None = None
    rate: float | None = None
    share_of_measured: float | None = None


@dataclass
class RooflineResult:
    model: str
    input: str
    tokens: int
    threads: int
    measured_ms: float
    measured_p20_ms: float
    measured_p80_ms: float
    floor_ms: float
    overhead: float  # (measured - floor) / measured
    flag: str | None  # why the overhead is outside [0, 1), when it is
    components: list[Component]
    calls: list[dict[str, Any]]
    unstable: bool
    disturbed: int
    protocol: str
    machine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_forward(model_id: str, size: int, seed: int = 0) -> tuple[Callable[[], Any], str, int]:
    """A randomly initialised ``model_id`` in eval mode and one image of ``size`` px: its inference
    forward, a description of the input, and the token count."""
    point = plan_input(model_id, "resolution", size)
    cfg = model_config(model_id)
    torch.manual_seed(seed)
    model = EffvizModel(cfg).eval()
    image = torch.randn(1, cfg.in_chans, point.image_side, point.image_side)

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(image=image)

    return forward, point.describe(), point.tokens


def roofline_policy(budget_s: float) -> TimingPolicy:
    """The shared protocol; on one thread an unstable timing falls back on CPU times."""
    return TimingPolicy(budget_s=budget_s, min_runs=5, max_runs=50, cpu_fallback=torch.get_num_threads() == 1)


def run_roofline(model_id: str, size: int, budget_s: float = 3.0, log: TextIO = sys.stderr) -> RooflineResult:
    """Measure ``model_id``'s forward at ``size`` px beside its floor (see the module docstring)."""
    for result in iter_roofline([model_id], size, budget_s, log):
        pass
    return result


def iter_roofline(models: list[str], size: int, budget_s: float = 3.0,
                  log: TextIO = sys.stderr) -> Iterator[RooflineResult]:
    """One ``RooflineResult`` per model, as each is measured (the app streams them)."""
    for model_id in models:
        print(f"[roofline] {model_id} at {size} px: recording its calls", file=log, flush=True)
        forward, described, tokens = build_forward(model_id, size)
        forward()  # warm-up: first allocations, the native kernels' build
        groups = record_calls(forward)
        calls: dict[str, Callable[[], Any]] = {FORWARD: forward}
        for i, group in enumerate(groups):
            with torch.inference_mode():
                group.replay()  # warm-up of the replay alone
            calls[f"{i}"] = _inference(group.replay)
        policy = roofline_policy(budget_s)
        print(f"[roofline] {model_id}: timing the forward and {counted(len(groups), 'distinct call')} "
              "alone, interleaved", file=log, flush=True)
        timings = measure_interleaved(calls, policy)
        yield summarize(model_id, described, tokens, groups, timings, policy)


def _inference(fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        with torch.inference_mode():
            return fn()
    return call


def summarize(model_id: str, described: str, tokens: int, groups: list[CallGroup], timings: dict,
              policy: TimingPolicy) -> RooflineResult:
    """The breakdown from the recorded calls and their timings (``timings[str(i)]`` is ``groups[i]``'s)."""
    measured = timings[FORWARD]
    by_name: dict[str, Component] = {}
    call_rows = []
    for i, group in enumerate(groups):
        alone_ms = timings[str(i)].min_ms
        unit = "FLOP" if group.component == MATMULS else KERNEL_UNITS[group.component][0]
        part = by_name.setdefault(group.component, Component(group.component, unit, floor_ms=0.0))
        part.calls += group.count
        part.work += group.count * group.work
        part.floor_ms += group.count * alone_ms
        call_rows.append({"component": group.component, "op": group.name, "shapes": group.shapes,
                          "count": group.count, "work": group.work, "alone_ms": alone_ms,
                          "floor_ms": group.count * alone_ms})
    components = sorted(by_name.values(), key=lambda c: (c.name != MATMULS, c.name))
    for part in components:
        if part.unit == "FLOP":
            part.rate = part.work / part.floor_ms / 1e6 if part.floor_ms else None  # GFLOP/s
        else:
            part.rate = part.floor_ms * 1e6 / part.work if part.work else None  # ns per element
    floor = sum(part.floor_ms for part in components)
    components.append(Component(EVERYTHING_ELSE, "", floor_ms=None))
    components[-1].share_of_measured = (measured.min_ms - floor) / measured.min_ms
    for part in components[:-1]:
        part.share_of_measured = part.floor_ms / measured.min_ms
    overhead = (measured.min_ms - floor) / measured.min_ms
    flag = None
    if overhead < 0:
        flag = ("the floor exceeds the measured forward: the calls ran slower alone than in the model "
                "(noise, or caches warmed differently); the overhead is not meaningful")
    return RooflineResult(
        model=model_id, input=described, tokens=tokens, threads=torch.get_num_threads(),
        measured_ms=measured.min_ms, measured_p20_ms=measured.p20_ms, measured_p80_ms=measured.p80_ms,
        floor_ms=floor, overhead=overhead, flag=flag, components=components, calls=call_rows,
        unstable=any(t.unstable for t in timings.values()), disturbed=sum(t.disturbed for t in timings.values()),
        protocol=(f"the forward and each distinct call alone timed in turn for {policy.budget_s:g} s, "
                  f"{policy.min_runs}-{policy.max_runs} undisturbed runs each, minimum used"),
    )


def environment() -> dict[str, Any]:
    """What the numbers were measured with, and the machine's noise before measuring."""
    from effviz.bench.kernels import _processor_name

    return {"processor": _processor_name(torch.device("cpu")), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "effviz": effviz.__version__,
            "backends": kernels.available_backends(), "calibration": calibrate()}


def _fmt_work(part: Component) -> str:
    if part.unit == "FLOP":
        return f"{part.work / 1e6:,.1f} MFLOP"
    if not part.unit:
        return "—"
    return f"{part.work / 1e6:,.2f} M {part.unit}"


def _fmt_rate(part: Component) -> str:
    if part.rate is None:
        return "—"
    if part.unit == "FLOP":
        return f"{part.rate:.1f} GFLOP/s"
    return f"{part.rate:.3g} ns/element"


def format_result(result: RooflineResult) -> str:
    """Markdown: the headline and the per-component table of one model."""
    lines = [
        f"### {result.model}: {result.input}, {result.tokens} tokens, {counted(result.threads, 'thread')}",
        "",
        f"Measured **{result.measured_ms:.2f} ms** (p20-p80 {result.measured_p20_ms:.2f}-{result.measured_p80_ms:.2f}); "
        f"floor **{result.floor_ms:.2f} ms**; overhead **{100 * result.overhead:.0f}%** of the measured time."
        + (" Unstable: the machine kept the runs waiting, numbers from all runs." if result.unstable else ""),
    ]
    if result.flag:
        lines += ["", f"⚠ {result.flag}."]
    lines += ["", "| component | calls | work | rate alone | floor ms | % of measured |", "|---|---|---|---|---|---|"]
    for part in result.components:
        floor = "—" if part.floor_ms is None else f"{part.floor_ms:.2f}"
        lines.append(f"| {part.name} | {part.calls or '—'} | {_fmt_work(part)} | {_fmt_rate(part)} | {floor} | "
                     f"{100 * part.share_of_measured:.0f}% |")
    return "\n".join(lines) + "\n"


def format_report(results: list[RooflineResult], env: dict[str, Any]) -> str:
    """Markdown for every model measured, after one line about the machine."""
    head = (f"**{env['processor']}**, {counted(env['threads'], 'thread')}, torch {env['torch']}, effviz {env['effviz']}; "
            f"kernel backends: {', '.join(env['backends'])}. {describe_calibration(env['calibration']).capitalize()}.")
    protocol = f"Timing: {results[0].protocol}." if results else ""
    return "\n".join([head, "", protocol, ""] + [format_result(r) for r in results])

