"""ctypes wrapper of ``cpu.c``: causal depthwise conv1d on CPU in fp32, inference only."""
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
    x, weight = (t.detach().float().contiguous() for t in (x, weight))
    bias, state = (None if t is None else t.detach().float().contiguous() for t in (bias, initial_state))
    batch, dim, length = x.shape
    y = torch.empty_like(x)
    _kernel()(native.ptr(x), native.ptr(weight), None if bias is None else native.ptr(bias),
              None if state is None else native.ptr(state), native.ptr(y),
              batch, dim, length, weight.shape[1], int(activation == "silu"), int(reverse))
    return y.to(out_dtype)
