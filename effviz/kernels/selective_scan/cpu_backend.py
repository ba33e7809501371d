"""ctypes wrapper of ``cpu.c``: the selective scan compiled for this CPU, forward and backward,
from zeros or from a given initial state, and the one-token state update for streaming."""
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


class SelectiveScanCPU(torch.autograd.Function):
    """The C forward keeps no states; the C backward replays them row by row (O(L*N) scratch per
    thread), so training memory stays O(L*dim) like the torch backend, at C speed. The initial
    state h0 (or None = zeros) gets its gradient too."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, reverse: bool):
        dtype = u.dtype
        u, delta, A, Bt, Ct = _prepare(u, delta, A, B, C)
        h0 = None if h0 is None else h0.float().contiguous()
        y, last = _forward(u, delta, A, Bt, Ct, reverse=reverse, h0=h0)
        ctx.save_for_backward(u, delta, A, Bt, Ct, h0)
        ctx.reverse, ctx.dtype = reverse, dtype
        return y.to(dtype), last.to(dtype)

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A, Bt, Ct, h0 = ctx.saved_tensors
        batch, dim, length = u.shape
        n_state = A.shape[1]
        threads = max(1, min(native.num_threads(), dim, 64))  # the C side caps threads at 64 too
        dy = torch.zeros_like(u) if dy is None else dy.float().contiguous()
        dlast = None if dlast is None else dlast.float().contiguous()
        du, ddelta, dA = torch.empty_like(u), torch.empty_like(delta), torch.zeros_like(A)
        dB_parts = u.new_zeros(threads, batch, length, n_state)
        dC_parts = u.new_zeros(threads, batch, length, n_state)
        dh0 = torch.empty_like(h0) if ctx.needs_input_grad[5] else None
        optional = lambda t: None if t is None else native.ptr(t)  # noqa: E731
        status = _lib().selective_scan_bwd(
            *map(native.ptr, (u, delta, A, Bt, Ct, dy)), optional(dlast), optional(h0),
            *map(native.ptr, (du, ddelta, dA, dB_parts, dC_parts)), optional(dh0), batch, dim, length, n_state,
            int(ctx.reverse), threads)
        if status != 0:
            raise MemoryError("selective_scan (cpu backend): out of memory for the backward scratch")
        dB = dB_parts.sum(0).transpose(1, 2)
        dC = dC_parts.sum(0).transpose(1, 2)
        cast = lambda t: t.to(ctx.dtype)  # noqa: E731
        return cast(du), cast(ddelta), cast(dA), cast(dB), cast(dC), None if dh0 is None else cast(dh0), None


def scan_cpu(u, delta, A, B, C, reverse: bool = False, h0=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``reference.scan_reference``; CPU tensors, fp32 math, autograd supported
    (the gradient of h0 included)."""
    return SelectiveScanCPU.apply(u, delta, A, B, C, h0, reverse)


def scan_cpu_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus: bool = False,
                   reverse: bool = False, h0=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference only (no autograd): the whole ``selective_scan`` in one C call, the delta bias and
    softplus, the D skip and the SiLU(z) gate included, from state h0 (None = zeros). Returns fp32 y
    and the last state."""
    delta_bias, D, z, h0 = (None if t is None else t.float().contiguous() for t in (delta_bias, D, z, h0))
    return _forward(*_prepare(u, delta, A, B, C), delta_bias, D, z, delta_softplus, reverse, h0)


def state_update_cpu(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus: bool = False) -> torch.Tensor:
    """One token in place on ``state`` (batch, dim, N) fp32, by the C ``selective_state_update``.
    Inference only; returns fp32 y (batch, dim)."""
    x, dt, A, B, C, D, z, dt_bias = (None if t is None else t.float().contiguous()
                                     for t in (x, dt, A, B, C, D, z, dt_bias))
    batch, dim = x.shape
    work = state if state.is_contiguous() else state.contiguous()
    y = torch.empty_like(x)
    _lib().selective_state_update(
        *map(native.ptr, (work, x, dt, A, B, C)), *(None if t is None else native.ptr(t) for t in (dt_bias, D, z)),
        native.ptr(y), batch, dim, A.shape[1], int(dt_softplus))
    if work is not state:
        state.copy_(work)
    return y


def _prepare(u, delta, A, B, C) -> tuple[torch.Tensor, ...]:
    """fp32 contiguous inputs; B and C time-major, so every step of the C loops reads N
    contiguous floats."""
    u, delta, A = (t.float().contiguous() for t in (u, delta, A))
    Bt, Ct = (t.float().transpose(1, 2).contiguous() for t in (B, C))
    return u, delta, A, Bt, Ct


def _forward(u, delta, A, Bt, Ct, delta_bias=None, D=None, z=None, softplus: bool = False,
             reverse: bool = False, h0=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One call of the C forward on prepared inputs (h0 fp32 contiguous or None); the optional
    parts are fused in when given."""
    batch, dim, length = u.shape
    y = torch.empty_like(u)
    last = u.new_empty(batch, dim, A.shape[1])
    optional = (None if t is None else native.ptr(t) for t in (delta_bias, D, z, h0))
    _lib().selective_scan_fwd(*map(native.ptr, (u, delta, A, Bt, Ct)), *optional, native.ptr(y), native.ptr(last),
                              batch, dim, length, A.shape[1], int(softplus), int(reverse), native.num_threads())
    return y, last
