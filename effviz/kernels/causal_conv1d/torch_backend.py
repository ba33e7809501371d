"""Causal depthwise conv1d via ``F.conv1d``: any device, autograd.

The causal form pads K-1 zeros on the left. The reverse form pads on the right and flips the
(D, K) taps instead of flipping the (batch, D, L) sequence twice: flipping the weight is free.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
    reverse: bool,
) -> torch.Tensor:
    """Same contract as ``reference.causal_conv1d_reference``."""
    dim, taps = weight.shape
    weight = weight.float()
    if reverse:
        padded = F.pad(x.float(), (0, taps - 1))
        weight = weight.flip(-1)
    else:
        padded = F.pad(x.float(), (taps - 1, 0))
    y = F.conv1d(padded, weight[:, None, :], bias.float() if bias is not None else None, groups=dim)
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype)
