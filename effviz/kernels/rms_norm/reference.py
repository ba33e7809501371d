"""RMSNorm with a residual add, written for reading rather than speed.

    new_residual = x + residual                      (or x when there is no residual)
    out          = new_residual / sqrt(mean(new_residual², last dim) + eps) * weight

All math in fp32. This is the definition every backend is tested against.
"""
from __future__ import annotations

import torch


def rms_norm_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor | None,
    eps: float,
    residual_in_fp32: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out in x's dtype, new_residual in fp32 or x's dtype per ``residual_in_fp32``).

    The norm is taken of the fp32 sum, before it is rounded to the residual's storage dtype.
    """
    total = x.float()
    if residual is not None:
        total = total + residual.float()
    mean_square = (total * total).mean(dim=-1, keepdim=True)
    out = total / torch.sqrt(mean_square + eps) * weight.float()
    residual_dtype = torch.float32 if residual_in_fp32 else x.dtype
    return out.to(x.dtype), total.to(residual_dtype)
