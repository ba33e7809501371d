"""ctypes wrapper of ``cpu.c``: Bi-WKV on CPU in fp32, inference only.

The C call is the torch custom op ``torch.ops.effviz.bi_wkv_cpu`` with a fake implementation, so
``torch.compile`` and ``torch.export`` keep it in the graph.
"""
from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import torch

from .. import native


@functools.cache
def _kernel() -> Callable[..., int]:
    lib = native.library()
    if lib is None:
        raise RuntimeError("bi_wkv: the native kernel library is not available")
    fn = lib.bi_wkv_forward
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [pointer, pointer, pointer, pointer, pointer, size, size, size, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


@torch.library.custom_op("effviz::bi_wkv_cpu", mutates_args=())
def bi_wkv_cpu(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """w, u: (C,); k, v: (batch, T, C) CPU tensors -> (batch, T, C) in v's dtype."""
    out_dtype = v.dtype
    w, u, k, v = (x.to(torch.float32).contiguous() for x in (w, u, k, v))
    batch, T, C = k.shape
    y = torch.empty_like(k)
    status = _kernel()(
        native.ptr(w), native.ptr(u), native.ptr(k), native.ptr(v), native.ptr(y),
        batch, T, C, native.num_threads(),
    )
    if status != 0:
        raise MemoryError("bi_wkv: the cpu kernel could not allocate its scratch memory")
    return y.to(out_dtype)


@bi_wkv_cpu.register_fake
def _(w, u, k, v):
    return k.new_empty(k.shape, dtype=v.dtype)
