"""ctypes wrapper of ``cpu.c``: causal depthwise conv1d on CPU in fp32, inference only.

The C call is the torch custom op ``torch.ops.effviz.causal_conv1d_cpu`` with a fake
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
        raise RuntimeError("causal_conv1d: the native kernel library is not available")
    fn = lib.causal_conv1d_fwd
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 4 + [ctypes.c_int] * 2
    fn.restype = None
    return fn


@torch.library.custom_op("effviz::causal_conv1d_cpu", mutates_args=())
def causal_conv1d_cpu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
    reverse: bool,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as ``reference.causal_conv1d_reference``; CPU tensors, no autograd."""
    out_dtype = x.dtype
    x, weight = (t.float().contiguous() for t in (x, weight))
    bias, state = (None if t is None else t.float().contiguous() for t in (bias, initial_state))
    batch, dim, length = x.shape
    y = torch.empty_like(x)
    _kernel()(native.ptr(x), native.ptr(weight), None if bias is None else native.ptr(bias),
              None if state is None else native.ptr(state), native.ptr(y),
              batch, dim, length, weight.shape[1], int(activation == "silu"), int(reverse))
    return y.to(out_dtype)


@causal_conv1d_cpu.register_fake
def _(x, weight, bias, activation, reverse, initial_state=None):
    return torch.empty_like(x, memory_format=torch.contiguous_format)
