"""RMSNorm with a residual add in plain PyTorch: any device, autograd.

Every elementwise op here is a full read and write of a (rows, D) tensor, so the code is arranged
to make as few of them as the math allows: the sum of squares comes from ``vector_norm`` (a
reduction that materialises no squared copy) and the two scalings share one output buffer.
"""
from __future__ import annotations

import torch


def rms_norm_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor | None,
    eps: float,
    residual_in_fp32: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``reference.rms_norm_reference``."""
    # Type promotion upcasts inside the add kernel: a bf16 x plus an fp32 residual costs one pass.
    if residual is None:
        total = x.float()
    elif residual.dtype == torch.float32:
        total = residual + x
    else:
        total = x.float() + residual
    norm = torch.linalg.vector_norm(total, dim=-1, keepdim=True)
    inv_rms = torch.rsqrt(norm.square() / x.shape[-1] + eps)
    # The second scaling is in place on a fresh buffer; autograd saves what mul_ needs.
    out = torch.mul(total, inv_rms).mul_(weight.float())
    residual_dtype = torch.float32 if residual_in_fp32 else x.dtype
    return out.to(x.dtype), total.to(residual_dtype)
