"""ctypes wrapper of ``cpu.c``: the selective scan compiled for this CPU, forward and backward,
from zeros or from a given initial state, and the one-token state update for streaming.

The C calls are torch custom ops (``torch.ops.effviz.selective_scan_cpu``, ``..._cpu_backward``,
``selective_state_update_cpu``), each with a fake implementation, so ``torch.compile`` and
``torch.export`` keep them in the graph; the forward op's autograd formula is the C backward.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from .. import native

_FWD_ARGS = [ctypes.c_void_p] * 11 + [ctypes.c_int64] * 4 + [ctypes.c_int] * 3
_BWD_ARGS = [ctypes.c_void_p] * 14 + [ctypes.c_int64] * 4 + [ctypes.c_int, ctypes.c_int]
_UPDATE_ARGS = [ctypes.c_void_p] * 10 + [ctypes.c_int64] * 3 + [ctypes.c_int]


@functools.cache  # argtypes are set once: every Vim forward makes 48 calls
def _lib() -> ctypes.CDLL:
    lib = native.library()
    lib.selective_scan_fwd.argtypes, lib.selective_scan_fwd.restype = _FWD_ARGS, None
    lib.selective_scan_bwd.argtypes, lib.selective_scan_bwd.restype = _BWD_ARGS, ctypes.c_int
    lib.selective_state_update.argtypes, lib.selective_state_update.restype = _UPDATE_ARGS, None
    return lib


def _optional_ptr(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else native.ptr(t)


def _fp32(t: torch.Tensor | None) -> torch.Tensor | None:
    """fp32 contiguous, as the C code reads it (no copy when it already is)."""
    return None if t is None else t.float().contiguous()


@torch.library.custom_op("effviz::selective_scan_cpu", mutates_args=())
def selective_scan_op(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bt: torch.Tensor, Ct: torch.Tensor,
    h0: torch.Tensor | None, delta_bias: torch.Tensor | None, D: torch.Tensor | None, z: torch.Tensor | None,
    delta_softplus: bool, reverse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One call of the C forward: u, delta, z (batch, dim, L); A (dim, N); Bt, Ct time-major
    (batch, L, N), so every step of the C loops reads N contiguous floats; h0 (batch, dim, N) or
    None = zeros; delta_bias, D (dim,). The optional parts are fused in when given. Returns fp32
    y (batch, dim, L) and the last state (batch, dim, N). Differentiable only without the fused
    parts (delta_bias, D, z, delta_softplus): the C backward is that of the bare recurrence."""
    u, delta, A, Bt, Ct, h0, delta_bias, D, z = map(_fp32, (u, delta, A, Bt, Ct, h0, delta_bias, D, z))
    batch, dim, length = u.shape
    y = torch.empty_like(u)
    last = u.new_empty(batch, dim, A.shape[1])
    _lib().selective_scan_fwd(*map(native.ptr, (u, delta, A, Bt, Ct)), *map(_optional_ptr, (delta_bias, D, z, h0)),
                              native.ptr(y), native.ptr(last), batch, dim, length, A.shape[1], int(delta_softplus),
                              int(reverse), native.num_threads())
    return y, last


@selective_scan_op.register_fake
def _(u, delta, A, Bt, Ct, h0, delta_bias, D, z, delta_softplus, reverse):
    batch, dim, _ = u.shape
    return u.new_empty(u.shape, dtype=torch.float32), u.new_empty(batch, dim, A.shape[1], dtype=torch.float32)


@torch.library.custom_op("effviz::selective_scan_cpu_backward", mutates_args=())
def selective_scan_backward_op(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bt: torch.Tensor, Ct: torch.Tensor,
    h0: torch.Tensor | None, dy: torch.Tensor, dlast: torch.Tensor | None, reverse: bool,
) -> list[torch.Tensor]:
    """The C backward of the bare recurrence: [du, ddelta, dA, dBt, dCt] in fp32, and dh0 after
    them when h0 is given. It keeps no states from the forward: it replays them row by row
    (O(L*N) scratch per thread), so training memory stays O(L*dim) like the torch backend."""
    u, delta, A, Bt, Ct, h0, dy, dlast = map(_fp32, (u, delta, A, Bt, Ct, h0, dy, dlast))
    batch, dim, length = u.shape
    n_state = A.shape[1]
    threads = max(1, min(native.num_threads(), dim, 64))  # the C side caps threads at 64 too
    du, ddelta, dA = torch.empty_like(u), torch.empty_like(delta), torch.zeros_like(A)
    dB_parts = u.new_zeros(threads, batch, length, n_state)
    dC_parts = u.new_zeros(threads, batch, length, n_state)
    dh0 = None if h0 is None else torch.empty_like(h0)
    status = _lib().selective_scan_bwd(
        *map(native.ptr, (u, delta, A, Bt, Ct, dy)), _optional_ptr(dlast), _optional_ptr(h0),
        *map(native.ptr, (du, ddelta, dA, dB_parts, dC_parts)), _optional_ptr(dh0), batch, dim, length, n_state,
        int(reverse), threads)
    if status != 0:
        raise MemoryError("selective_scan (cpu backend): out of memory for the backward scratch")
    grads = [du, ddelta, dA, dB_parts.sum(0), dC_parts.sum(0)]
    return grads if dh0 is None else [*grads, dh0]


@selective_scan_backward_op.register_fake
def _(u, delta, A, Bt, Ct, h0, dy, dlast, reverse):
    grads = [torch.empty_like(t, dtype=torch.float32) for t in (u, delta, A, Bt, Ct)]
    return grads if h0 is None else [*grads, torch.empty_like(h0, dtype=torch.float32)]


def _setup_context(ctx, inputs, output) -> None:
    u, delta, A, Bt, Ct, h0, delta_bias, D, z, delta_softplus, reverse = inputs
    ctx.save_for_backward(u, delta, A, Bt, Ct, h0)
    ctx.fused = delta_softplus or any(t is not None for t in (delta_bias, D, z))
    ctx.reverse = reverse


def _backward(ctx, dy, dlast):
    if ctx.fused:
        raise RuntimeError("selective_scan (cpu backend): the fused form (delta_bias, softplus, D, z) is inference "
                           "only; under autograd apply them outside the op, as selective_scan does")
    u, delta, A, Bt, Ct, h0 = ctx.saved_tensors
    grads = selective_scan_backward_op(u, delta, A, Bt, Ct, h0, dy, dlast, ctx.reverse)
    dh0 = grads[5] if h0 is not None else None
    return *grads[:5], dh0, None, None, None, None, None


selective_scan_op.register_autograd(_backward, setup_context=_setup_context)


def scan_cpu(u, delta, A, B, C, reverse: bool = False, h0=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``reference.scan_reference``; CPU tensors, fp32 math, autograd supported
    (the gradient of h0 included)."""
    dtype = u.dtype
    y, last = selective_scan_op(*_prepare(u, delta, A, B, C), h0, None, None, None, False, reverse)
    return y.to(dtype), last.to(dtype)


def scan_cpu_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus: bool = False,
                   reverse: bool = False, h0=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference only (no autograd): the whole ``selective_scan`` in one C call, the delta bias and
    softplus, the D skip and the SiLU(z) gate included, from state h0 (None = zeros). Returns fp32 y
    and the last state."""
    return selective_scan_op(*_prepare(u, delta, A, B, C), h0, delta_bias, D, z, delta_softplus, reverse)


@torch.library.custom_op("effviz::selective_state_update_cpu", mutates_args=("state",))
def state_update_cpu(
    state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, z: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One token in place on ``state`` (batch, dim, N) fp32, by the C ``selective_state_update``.
    Inference only; returns fp32 y (batch, dim)."""
    x, dt, A, B, C, D, z, dt_bias = map(_fp32, (x, dt, A, B, C, D, z, dt_bias))
    batch, dim = x.shape
    work = state if state.is_contiguous() else state.contiguous()
    y = torch.empty_like(x)
    _lib().selective_state_update(
        *map(native.ptr, (work, x, dt, A, B, C)), *map(_optional_ptr, (dt_bias, D, z)),
        native.ptr(y), batch, dim, A.shape[1], int(dt_softplus))
    if work is not state:
        state.copy_(work)
    return y


@state_update_cpu.register_fake
def _(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    return x.new_empty(x.shape, dtype=torch.float32)


def _prepare(u, delta, A, B, C) -> tuple[torch.Tensor, ...]:
    """fp32 contiguous inputs with B and C time-major, in differentiable torch ops outside the
    C op, so autograd takes the gradients of B and C back through the transposes."""
    u, delta, A = (t.float().contiguous() for t in (u, delta, A))
    Bt, Ct = (t.float().transpose(1, 2).contiguous() for t in (B, C))
    return u, delta, A, Bt, Ct
