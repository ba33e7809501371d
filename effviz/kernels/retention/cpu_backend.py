"""ctypes wrapper of ``cpu.c``: the recurrent form of retention on CPU in fp32, inference only."""
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


def retention_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor,
    initial_state: torch.Tensor | None = None, return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``torch_backend.retention_recurrent``; CPU tensors, no autograd.

    Returns fp32 (batch, heads, T, dv), and with ``return_state`` also S_{T−1} in fp32."""
    q, k, v, gamma = (t.detach().float().contiguous() for t in (q, k, v, gamma))
    batch, heads, length, dk = q.shape
    dv = v.shape[-1]
    out = q.new_empty(batch, heads, length, dv)
    if initial_state is None:
        state = q.new_zeros(batch, heads, dk, dv)
    else:  # a copy: the kernel updates the state in place, and the caller's must stay as it was
        state = initial_state.detach().to(torch.float32).clone(memory_format=torch.contiguous_format)
    if batch * heads:
        _kernel()(native.ptr(q), native.ptr(k), native.ptr(v), native.ptr(gamma), native.ptr(out),
                  native.ptr(state), batch, heads, length, dk, dv, native.num_threads())
    return (out, state) if return_state else out
