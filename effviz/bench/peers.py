"""Peers side by side: our kernels and DeiT-Ti against other libraries' implementations of the same
function, on the same inputs, timed interleaved in one run by the shared protocol
(``effviz.bench.timing``), with their numerical agreement.

- selective scan (Vim-Ti's shapes, softplus deltas, D skip, SiLU gate): our ``cpu`` and ``torch``
  backends, mamba_ssm's ``selective_scan_ref`` and mambapy's parallel scan (``pscan``);
- retention (ViR-T's three heads of 64 and decays, which are RetNet's): our ``torch`` chunked and
  ``cpu`` recurrent forms, flash-linear-attention's ``naive_retention`` (parallel form) and its chunked
  simple-GLA reference with the gate log(gamma);
- DeiT-Ti: our ``deit-tiny`` and timm's ``deit_tiny_patch16_224`` holding the same (random) weights,
  converted by ``effviz.convert``; the headline is the latency ratio effviz / timm.

Each peer is optional: when its library does not import, its row says so and the rest still run.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TextIO

import torch
import torch.nn.functional as F

import effviz
from effviz import kernels
from effviz.bench.kernels import _processor_name, _retention_inputs, _scan_inputs
from effviz.bench.timing import TimingPolicy, measure_interleaved
from effviz.wording import counted

COMPARISONS = ("selective_scan", "retention", "deit-tiny")
DEIT_TARGET_RATIO = 1.05  # effviz / timm at 224 px, one thread


class PeerMissing(Exception):
    """A peer's library is not installed (or does not import here); the message says which."""


def _optional(module: str, install: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise PeerMissing(f"{module} does not import ({err}); install it with `{install}`") from None


@contextmanager
def _placeholder_modules(names: dict[str, types.ModuleType]) -> Iterator[None]:
    """``names`` in ``sys.modules`` for the duration, unless a real module already holds the name."""
    added = [name for name in names if name not in sys.modules]
    sys.modules.update({name: names[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


# --no-build-isolation builds with the environment's own tools: a fresh venv lacks wheel, which the build needs.
MAMBA_SSM_INSTALL = ("pip install wheel && MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip install "
                     "--no-build-isolation mamba-ssm torch==2.11.0 torchaudio==2.11.0")


def mamba_ssm_reference() -> Callable[..., torch.Tensor]:
    """mamba_ssm's ``selective_scan_ref`` (plain torch). Its module imports the compiled CUDA extension
    ``selective_scan_cuda`` at the top, and the package's ``__init__`` imports its CUDA models, so a
    python-only install (no extension) cannot import it the normal way; then the module is loaded
    with an empty placeholder for the extension (the reference never calls it) and without running the
    package's ``__init__``."""
    try:
        return importlib.import_module("mamba_ssm.ops.selective_scan_interface").selective_scan_ref
    except ImportError:
        pass
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or not spec.submodule_search_locations:
        raise PeerMissing(f"mamba_ssm is not installed; install it with `{MAMBA_SSM_INSTALL}`")
    package = types.ModuleType("mamba_ssm")
    package.__path__ = list(spec.submodule_search_locations)
    placeholders = {"mamba_ssm": package, "selective_scan_cuda": types.ModuleType("selective_scan_cuda")}
    try:
        with _placeholder_modules(placeholders):
            module = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
            for name in [n for n in sys.modules if n.startswith("mamba_ssm.")]:
                sys.modules.pop(name)  # loaded under the placeholder package: not for anyone else
    except ImportError as err:
        raise PeerMissing(f"mamba_ssm's reference module does not import ({err})") from None
    return module.selective_scan_ref


# ---- the comparisons: each returns {name: call} and {name: output} on one set of inputs ----


def _scan_calls(length: int) -> tuple[dict[str, Callable[[], torch.Tensor]], list[str]]:
    x = _scan_inputs(length, torch.float32, torch.Generator().manual_seed(0))
    calls: dict[str, Callable[[], torch.Tensor]] = {}
    notes = []
    for backend in ("cpu", "torch"):
        if backend in kernels.available_backends():
            calls[f"effviz {backend}"] = lambda b=backend: kernels.selective_scan(**x, delta_softplus=True, backend=b)
    try:
        reference = mamba_ssm_reference()
        calls["mamba_ssm selective_scan_ref"] = lambda: reference(
            x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], delta_softplus=True)
    except PeerMissing as err:
        notes.append(f"mamba_ssm skipped: {err}")
    try:
        mambapy = _optional("mambapy.mamba", "pip install mambapy torch==2.11.0 torchaudio==2.11.0")
        dim, n_state = x["A"].shape
        block = mambapy.MambaBlock(mambapy.MambaConfig(d_model=dim // 2, n_layers=1, d_state=n_state, pscan=True))
        # mambapy is token-major (batch, L, channels): the inputs are laid out for it before timing.
        u, delta, z = (x[k].transpose(1, 2).contiguous() for k in ("u", "delta", "z"))
        B, C = (x[k].transpose(1, 2).contiguous() for k in ("B", "C"))

        def mambapy_scan() -> torch.Tensor:
            y = block.selective_scan(u, F.softplus(delta + x["delta_bias"]), x["A"], B, C, x["D"])
            return (y * F.silu(z)).transpose(1, 2)

        calls["mambapy pscan"] = mambapy_scan
    except PeerMissing as err:
        notes.append(f"mambapy skipped: {err}")
    return calls, notes


def _retention_calls(length: int) -> tuple[dict[str, Callable[[], torch.Tensor]], list[str]]:
    x = _retention_inputs(length, torch.float32, torch.Generator().manual_seed(0))
    calls: dict[str, Callable[[], torch.Tensor]] = {}
    notes = []
    # The C kernel is the recurrent form only; the chunked form (the one ViR runs in eval) is torch's.
    for backend, mode in (("torch", "chunk"), ("cpu", "recurrent")):
        if backend in kernels.available_backends():
            calls[f"effviz {backend} ({mode})"] = lambda b=backend, m=mode: kernels.retention(**x, mode=m, backend=b)
    try:
        install = "pip install flash-linear-attention torch==2.11.0 torchaudio==2.11.0"
        naive = _optional("fla.ops.retention.naive", install)
        simple_gla = _optional("fla.ops.simple_gla.naive", install)
        head_dim = x["q"].shape[-1]
        # Our kernel takes q already scaled; fla's naive_retention scales it by head_dim^-0.5 itself.
        q_unscaled = x["q"] * head_dim**0.5
        calls["fla naive_retention (parallel)"] = lambda: naive.naive_retention(q_unscaled, x["k"], x["v"])
        # Retention is simple GLA with the gate log(gamma) per head; fla's layout is (batch, T, heads, d).
        q, k, v = (x[n].transpose(1, 2).contiguous() for n in ("q", "k", "v"))
        g = x["gamma"].log().expand(q.shape[0], q.shape[1], -1).contiguous()

        def fla_chunk() -> torch.Tensor:
            return simple_gla.naive_chunk_simple_gla(q, k, v, g, scale=1.0)[0].transpose(1, 2)

        calls["fla naive_chunk_simple_gla"] = fla_chunk
    except PeerMissing as err:
        notes.append(f"flash-linear-attention skipped: {err}")
    return calls, notes


def deit_pair(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """timm's ``deit_tiny_patch16_224`` with random weights, and our ``deit-tiny`` holding the same
    weights (converted by ``effviz.convert``, as an official checkpoint would be); both in eval mode."""
    timm = _optional("timm", "pip install timm")
    from effviz.convert import convert_checkpoint

    torch.manual_seed(seed)
    theirs = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    ours, _ = convert_checkpoint("deit-tiny", theirs.state_dict())
    return ours, theirs


def _deit_calls(size: int) -> tuple[dict[str, Callable[[], torch.Tensor]], list[str]]:
    try:
        ours, theirs = deit_pair()
    except PeerMissing as err:
        return {}, [f"timm skipped: {err}"]
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return {"effviz deit-tiny": lambda: ours(image=image), "timm deit_tiny_patch16_224": lambda: theirs(image)}, []


def _describe(name: str, size: int, length: int) -> str:
    from effviz.bench.kernels import RET_HEAD_DIM, RET_HEADS, SCAN_DIM, SCAN_STATE

    return {
        "selective_scan": f"batch 1, dim {SCAN_DIM}, N {SCAN_STATE}, L {length}; softplus(delta + bias), D skip, SiLU(z) gate",
        "retention": f"batch 1, {RET_HEADS} heads, dk = dv = {RET_HEAD_DIM}, L {length}; ViR's decays",
        "deit-tiny": f"one {size}x{size} image, random weights shared by both",
    }[name]


def compare(name: str, size: int = 224, length: int | None = None, budget_s: float = 3.0,
            log: TextIO = sys.stderr) -> dict[str, Any]:
    """One comparison: every implementation available run once (warm-up, agreement), then all timed
    interleaved. Rows carry min/p20/p80 ms, the ratio to the first (ours) and the max abs difference
    from it; ``notes`` say which peers were skipped and why."""
    length = length or (size // 16) ** 2 + 1  # DeiT-Ti's tokens at this size
    builders = {"selective_scan": lambda: _scan_calls(length), "retention": lambda: _retention_calls(length),
                "deit-tiny": lambda: _deit_calls(size)}
    calls, notes = builders[name]()
    for note in notes:
        print(f"[peers] {name}: {note}", file=log, flush=True)
    record: dict[str, Any] = {"comparison": name, "shapes": _describe(name, size, length), "notes": notes, "rows": []}
    if not calls:
        return record
    timed = {impl: _inference(call) for impl, call in calls.items()}
    outputs = {impl: call().float() for impl, call in timed.items()}
    baseline = next(iter(outputs))
    print(f"[peers] {name}: timing {', '.join(timed)} interleaved", file=log, flush=True)
    policy = TimingPolicy(budget_s=budget_s, min_runs=5, max_runs=100, cpu_fallback=torch.get_num_threads() == 1)
    timings = measure_interleaved(timed, policy)
    first_ms = timings[baseline].min_ms
    for impl, timing in timings.items():
        record["rows"].append({
            "impl": impl, "min_ms": timing.min_ms, "p20_ms": timing.p20_ms, "p80_ms": timing.p80_ms,
            "runs": len(timing.used_ms), "disturbed": timing.disturbed, "unstable": timing.unstable,
            "ratio_to_first": timing.min_ms / first_ms,
            "max_abs_diff": (outputs[impl] - outputs[baseline]).abs().max().item(),
        })
    record["baseline"] = baseline
    return record


def _inference(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    def call() -> torch.Tensor:
        with torch.inference_mode():
            return fn()
    return call


def run_peers(size: int = 224, length: int | None = None, budget_s: float = 3.0,
              comparisons: tuple[str, ...] = COMPARISONS, log: TextIO = sys.stderr) -> dict[str, Any]:
    """Every comparison in turn, with the machine they ran on."""
    env = {"processor": _processor_name(torch.device("cpu")), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "effviz": effviz.__version__, "backends": kernels.available_backends()}
    return {"environment": env, "comparisons": [compare(name, size, length, budget_s, log) for name in comparisons]}


def deit_ratio(record: dict[str, Any]) -> float | None:
    """effviz / timm latency of DeiT-Ti in a ``run_peers`` record, None when timm was skipped."""
    for comparison in record["comparisons"]:
        if comparison["comparison"] == "deit-tiny" and len(comparison["rows"]) == 2:
            return comparison["rows"][0]["min_ms"] / comparison["rows"][1]["min_ms"]
    return None


def format_report(record: dict[str, Any]) -> str:
    """Markdown: one table per comparison, ratios to our first implementation, agreement beside them."""
    env = record["environment"]
    lines = [f"**{env['processor']}**, {counted(env['threads'], 'thread')}, torch {env['torch']}, "
             f"effviz {env['effviz']}; kernel backends: {', '.join(env['backends'])}."]
    for comparison in record["comparisons"]:
        lines += ["", f"### {comparison['comparison']}", "", comparison["shapes"], ""]
        if comparison["rows"]:
            base = comparison["baseline"]
            lines += [f"| implementation | min ms | p20-p80 ms | runs (redone) | time / {base} | max abs diff from {base} |",
                      "|---|---|---|---|---|---|"]
            for row in comparison["rows"]:
                unstable = " unstable†" if row["unstable"] else ""
                lines.append(f"| {row['impl']} | {row['min_ms']:.3g} | {row['p20_ms']:.3g}-{row['p80_ms']:.3g} | "
                             f"{row['runs']} ({row['disturbed']}){unstable} | {row['ratio_to_first']:.2f}x | "
                             f"{row['max_abs_diff']:.2g} |")
        lines += [f"- {note}" for note in comparison["notes"]]
    ratio = deit_ratio(record)
    if ratio is not None:
        verdict = "meets" if ratio <= DEIT_TARGET_RATIO else "misses"
        lines += ["", f"DeiT-Ti latency effviz / timm: **{ratio:.3f}** ({verdict} the target <= {DEIT_TARGET_RATIO})."]
    if any(row["unstable"] for c in record["comparisons"] for row in c["rows"]):
        lines += ["", "† unstable: the machine kept the runs waiting; numbers from all runs."]
    return "\n".join(lines) + "\n"


__all__ = ["COMPARISONS", "compare", "deit_pair", "deit_ratio", "format_report", "mamba_ssm_reference", "run_peers"]
