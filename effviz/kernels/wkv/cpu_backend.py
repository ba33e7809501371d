"""ctypes wrapper of ``cpu.c``: the causal WKV on CPU in fp32, inference only, state in and out.

The C call is the torch custom op ``torch.ops.effviz.wkv_cpu`` with a fake implementation, so
``torch.compile`` and ``torch.export`` keep it in the graph.
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
        raise RuntimeError("wkv: the native kernel library is not available")
    fn = lib.wkv_forward
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [pointer] * 7 + [size, size, size, ctypes.c_int]
    fn.restype = None
    return fn


@torch.library.custom_op("effviz::wkv_cpu", mutates_args=())
def wkv_op(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, T, C) output in v's dtype and the fp32 (batch, 3, C) state after the last token:
    writing the state costs 3 C floats per row, so the op always returns it (a fixed schema) and
    ``wkv_cpu`` drops it unless asked."""
    out_dtype = v.dtype
    w, u, k, v = (x.to(torch.float32).contiguous() for x in (w, u, k, v))
    batch, T, C = k.shape
    state_in = None
    if state is not None:
        state_in = state.to(torch.float32).clone(memory_format=torch.contiguous_format)
        # The kernel is compiled with -ffast-math and must not meet infinities: -inf means empty too.
        state_in[:, 2].clamp_(min=-1e38)
    y = torch.empty_like(k)
    state_out = torch.empty(batch, 3, C, dtype=torch.float32)
    _kernel()(
        native.ptr(w), native.ptr(u), native.ptr(k), native.ptr(v),
        None if state_in is None else native.ptr(state_in),
        native.ptr(y), native.ptr(state_out),
        batch, T, C, native.num_threads(),
    )
    return y.to(out_dtype), state_out


@wkv_op.register_fake
def _(w, u, k, v, state):
    batch, _, C = k.shape
    return k.new_empty(k.shape, dtype=v.dtype), k.new_empty(batch, 3, C, dtype=torch.float32)


def wkv_cpu(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None = None,
    return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """w, u: (C,); k, v: (batch, T, C); state: (batch, 3, C) or None; CPU tensors.

    Returns (batch, T, C) in v's dtype, and with ``return_state`` the fp32 (batch, 3, C) state.
    """
    out, state_out = wkv_op(w, u, k, v, state)
    return (out, state_out) if return_state else out
