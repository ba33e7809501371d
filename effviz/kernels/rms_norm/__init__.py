"""rms_norm: Vim's per-block ``residual += h; h = RMSNorm(residual)`` as one op.

Fusing the add into the norm matters because the op is pure memory traffic: the fused form reads
x and the residual once and writes both results once. Vim keeps its residual stream in fp32
(``residual_in_fp32``) while the hidden states may be fp16/bf16.
"""
from __future__ import annotations

import math

import torch

from ..dispatch import check_tensor, pick
from .cpu_backend import rms_norm_cpu
from .reference import rms_norm_reference
from .torch_backend import rms_norm_torch


def _rms_norm_triton(*args, **kwargs):
    from .triton_backend import rms_norm_triton

    return rms_norm_triton(*args, **kwargs)


IMPLS = {"reference": rms_norm_reference, "torch": rms_norm_torch, "cpu": rms_norm_cpu, "triton": _rms_norm_triton}


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    residual_in_fp32: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out, new_residual) with new_residual = x + residual (or x) and
    out = new_residual * rsqrt(mean(new_residual², -1) + eps) * weight.

    x: (..., D); weight: (D,); residual: x's shape, any float dtype, or None. out has x's dtype;
    new_residual is fp32 when ``residual_in_fp32`` else x's dtype (it may be x itself when no
    copy is needed). Math in fp32; the norm uses the sum before it is rounded for storage.
    """
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] == 0:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (..., D) with D >= 1, got {got}")
    check_tensor("x", x, (None,) * x.dim())
    dim = x.shape[-1]
    check_tensor("weight", weight, (dim,), device=x.device)
    if residual is not None:
        check_tensor("residual", residual, tuple(x.shape), device=x.device)
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")

    fn = pick("rms_norm", IMPLS, backend, x, weight, residual)
    return fn(x, weight, residual, float(eps), residual_in_fp32)
