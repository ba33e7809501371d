"""Causal depthwise conv1d, written for reading rather than speed.

    y[:, d, t] = bias[d] + sum_{j<K} weight[d, K-1-j] * x[:, d, t-j]        (x = 0 before t = 0)

the cross-correlation orientation of ``nn.Conv1d``, so Mamba/Vim checkpoint weights apply as
they are: the last tap weights the current step. ``reverse`` runs the same filter over the
time-reversed sequence: x[:, d, t+j] in place of x[:, d, t-j] (x = 0 after t = L-1).
An ``initial_state`` (batch, D, K-1) gives the inputs before t = 0 in place of the zeros (forward
only): x[:, d, -i] = initial_state[:, d, K-1-i]. All math in fp32 (fp64 when x is fp64). This is the definition every backend is tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _shifted(x: torch.Tensor, steps: int, reverse: bool) -> torch.Tensor:
    """x delayed by ``steps`` along time (advanced when ``reverse``), zero-filled, same length."""
    if steps == 0:
        return x
    shifted = torch.zeros_like(x)
    if steps < x.shape[-1]:
        if reverse:
            shifted[..., :-steps] = x[..., steps:]
        else:
            shifted[..., steps:] = x[..., :-steps]
    return shifted


def causal_conv1d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
    reverse: bool,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """x: (batch, D, L); weight: (D, K); bias: (D,) or None; activation None or "silu";
    initial_state: (batch, D, K-1) or None (zeros), the inputs before x[..., 0], oldest first.

    Returns (batch, D, L) in x's dtype.
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    x32, weight = x.to(compute), weight.to(compute)
    taps, length = weight.shape[1], x.shape[-1]
    if initial_state is not None:
        # Run over [initial_state, x] and keep the outputs of x's steps.
        x32 = torch.cat([initial_state.to(compute), x32], dim=-1)
    y = torch.zeros_like(x32)
    for j in range(taps):
        y = y + weight[:, taps - 1 - j, None] * _shifted(x32, j, reverse)
    y = y[..., y.shape[-1] - length:]
    if bias is not None:
        y = y + bias.to(compute)[:, None]
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype)
