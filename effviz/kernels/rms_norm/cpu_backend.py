"""ctypes wrapper of ``cpu.c``: fused residual add + RMSNorm on CPU in fp32, inference only.

The C call is the torch custom op ``torch.ops.effviz.rms_norm_cpu`` with a fake implementation,
so ``torch.compile`` and ``torch.export`` keep it in the graph.
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
        raise RuntimeError("rms_norm: the native kernel library is not available")
    fn = lib.rms_norm_fwd
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 2 + [ctypes.c_float]
    fn.restype = None
    return fn


@torch.library.custom_op("effviz::rms_norm_cpu", mutates_args=())
def rms_norm_cpu(
    x: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor | None,
    eps: float,
    residual_in_fp32: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``reference.rms_norm_reference``, except that new_residual is always a
    new tensor (a custom op's outputs may not alias its inputs); CPU tensors, no autograd."""
    shape, dim = x.shape, x.shape[-1]
    rows = lambda t: t.float().reshape(-1, dim).contiguous()  # noqa: E731  (a view when already so)
    x32, res32 = rows(x), None if residual is None else rows(residual)
    w32 = weight.float().contiguous()
    out, total = torch.empty_like(x32), torch.empty_like(x32)
    _kernel()(native.ptr(x32), None if res32 is None else native.ptr(res32), native.ptr(w32), native.ptr(out),
              native.ptr(total), x32.shape[0], dim, eps)
    residual_dtype = torch.float32 if residual_in_fp32 else x.dtype
    return out.view(shape).to(x.dtype), total.view(shape).to(residual_dtype)


@rms_norm_cpu.register_fake
def _(x, weight, residual, eps, residual_in_fp32):
    residual_dtype = torch.float32 if residual_in_fp32 else x.dtype
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=residual_dtype)
