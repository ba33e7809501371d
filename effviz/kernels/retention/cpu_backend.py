"""ctypes wrapper of ``cpu.c``: the recurrent form of retention on CPU in fp32, inference only.

The C call is the torch custom op ``torch.ops.effviz.retention_recurrent_cpu`` with a fake
implementation, so ``torch.compile`` and ``torch.export`` keep it in the graph.
"""
from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import torch

from .. import native


@functools.cache
def _kernel() -> Callable[..., None]:
    lib = native.library()
    if lib is None:
        raise RuntimeError("retention: the native kernel library is not available")
    fn = lib.retention_recurrent_fwd
    fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 5 + [ctypes.c_int]
    fn.restype = None
    return fn


@torch.library.custom_op("effviz::retention_recurrent_cpu", mutates_args=())
def retention_recurrent_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor, initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (batch, heads, T, dv) output and S_{T−1}: the kernel leaves the state in its buffer
    anyway, so the op always returns it (a fixed schema) and ``retention_recurrent`` drops it."""
    q, k, v, gamma = (t.float().contiguous() for t in (q, k, v, gamma))
    batch, heads, length, dk = q.shape
    dv = v.shape[-1]
    out = q.new_empty(batch, heads, length, dv)
    if initial_state is None:
        state = q.new_zeros(batch, heads, dk, dv)
    else:  # a copy: the kernel updates the state in place, and the caller's must stay as it was
        state = initial_state.to(torch.float32).clone(memory_format=torch.contiguous_format)
    if batch * heads:
        _kernel()(native.ptr(q), native.ptr(k), native.ptr(v), native.ptr(gamma), native.ptr(out),
                  native.ptr(state), batch, heads, length, dk, dv, native.num_threads())
    return out, state


@retention_recurrent_op.register_fake
def _(q, k, v, gamma, initial_state):
    batch, heads, length, dk = q.shape
    dv = v.shape[-1]
    return q.new_empty(batch, heads, length, dv, dtype=torch.float32), q.new_empty(batch, heads, dk, dv,
                                                                                 dtype=torch.float32)


def retention_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor,
    initial_state: torch.Tensor | None = None, return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``torch_backend.retention_recurrent``; CPU tensors, no autograd.

    Returns fp32 (batch, heads, T, dv), and with ``return_state`` also S_{T−1} in fp32."""
    out, state = retention_recurrent_op(q, k, v, gamma, initial_state)
    return (out, state) if return_state else out
