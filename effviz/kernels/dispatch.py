"""Backend choice for every op of the kernel runtime, in one place.

Each op folder (``selective_scan/``, ``bi_wkv/`` ...) registers up to four implementations:

- ``reference``: plain PyTorch, readable top to bottom; the definition of correctness.
- ``torch``: fast pure-PyTorch path that runs on any device and supports autograd.
- ``cpu``: a small C library compiled on first use (see ``native.py``); CPU, fp32 math.
  Used by default on CPU when it builds, because Python-level loops cannot reach memory
  bandwidth on a 2-core machine. Inference only, except where an op says otherwise
  (selective_scan has a C backward, so CPU training of Mamba models runs at C speed too).
  Each C call is a torch custom op in the ``effviz`` namespace (``torch.ops.effviz.*``),
  registered in the op's ``cpu_backend.py`` with a fake (shape-only) implementation, so
  ``torch.compile`` and ``torch.export`` keep it in the graph; eager calls go through the same op.
- ``triton``: GPU kernels, inference only except where an op says otherwise (selective_scan and
  bi_wkv have Triton backwards). They also run on CPU tensors under ``TRITON_INTERPRET=1``
  (tests only: it is slow).

``backend=None`` picks: ``$EFFVIZ_BACKEND`` if set, else ``torch`` for float64 inputs (the cpu
and triton kernels compute in fp32, and fp64 is asked for exactly when that is not enough), else
``triton`` for CUDA tensors when Triton imports, else ``cpu`` for CPU tensors when the native
library builds, else ``torch``.
Backends without gradients are skipped automatically when gradients are needed; naming one
explicitly in that case is an error rather than silently wrong gradients.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Callable

import torch

log = logging.getLogger("effviz.kernels")

BACKENDS = ("reference", "torch", "cpu", "triton")
# float64 is accepted too: gradient checks run in double precision.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# A constant for the compiler, like ``native.available``: fixed per process, and the import behind
# it is nothing dynamo can trace.
@torch.compiler.assume_constant_result
def triton_available() -> bool:
    """Triton imports and has something to run on: a CUDA GPU, or the CPU interpreter."""
    return _triton_usable()


@functools.cache
def _triton_usable() -> bool:
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        return False  # checked first: importing triton costs a second and is useless here
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # a broken triton install must not take the runtime down
        return False
    return True


def available_backends() -> list[str]:
    """Backends that can run on this machine, in ``BACKENDS`` order."""
    from . import native

    names = ["reference", "torch"]
    if native.available():
        names.append("cpu")
    if triton_available():
        names.append("triton")
    return names


def _default_backend(device: torch.device, impls: dict[str, Callable], usable: tuple[str, ...],
                     float64: bool) -> str:
    from . import native

    if float64:
        return "torch"
    if device.type == "cuda" and "triton" in usable and triton_available():
        return "triton"
    if device.type == "cpu" and "cpu" in usable and native.available():
        return "cpu"
    return "torch"


_logged: set[tuple[str, str, str]] = set()


def pick(
    op: str,
    impls: dict[str, Callable],
    backend: str | None,
    *tensors: torch.Tensor | None,
    differentiable: tuple[str, ...] = ("reference", "torch"),
) -> Callable:
    """Return the implementation of ``op`` to run on ``tensors``.

    ``impls`` maps backend name -> function; ``tensors`` are the op's inputs (``None`` allowed),
    used to find the device and whether autograd is needed; ``differentiable`` names the
    backends of this op that support autograd.
    """
    present = [t for t in tensors if t is not None]
    device = present[0].device
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in present)
    usable = tuple(b for b in impls if b in differentiable) if needs_grad else tuple(impls)
    if backend is None:
        backend = os.environ.get("EFFVIZ_BACKEND") or None
        if backend not in usable:
            backend = None  # the override names a backend this op (or autograd) cannot use here
        if backend is None:
            backend = _default_backend(device, impls, usable, any(t.dtype == torch.float64 for t in present))
    if backend not in BACKENDS:
        raise ValueError(f"{op}: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend not in impls:
        raise ValueError(f"{op}: no {backend!r} implementation; this op has {', '.join(impls)}")
    if backend not in available_backends():
        raise ValueError(
            f"{op}: backend {backend!r} is not available on this machine "
            f"(available: {', '.join(available_backends())})"
        )
    if needs_grad and backend not in differentiable:
        raise ValueError(
            f"{op}: backend {backend!r} is inference-only; use backend='torch' (or None) when "
            "inputs require gradients"
        )
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"{op}: backend 'cpu' needs CPU tensors, got {device}")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"{op}: backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), got {device}")
    key = (op, backend, device.type)
    # Not while compiling: a log call would break the graph (eager calls log the choice).
    if key not in _logged and not torch.compiler.is_compiling():
        _logged.add(key)
        log.info("%s: using the %s backend on %s", op, backend, device.type)
    return impls[backend]


def check_tensor(
    name: str,
    t: torch.Tensor | None,
    shape: tuple[int | None, ...],
    *,
    device: torch.device | None = None,
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES,
) -> None:
    """Raise a ValueError naming ``name`` if ``t`` is not a tensor of ``shape`` (None = any size)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape) or any(want is not None and got != want for got, want in zip(t.shape, shape)):
        want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")
