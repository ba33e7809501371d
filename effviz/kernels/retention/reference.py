"""Retention, the definition: o_n = Σ_{m≤n} γ^(n−m) (q_n·k_m) v_m, per head.

This is the parallel form written as plainly as possible, in fp32 (fp64 when q is fp64). It materialises the (T, T)
decay mask, so it is for tests and short sequences only. Every retention backend, in every mode,
is checked against it.
"""
from __future__ import annotations

import torch


def retention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """q, k: (batch, heads, T, dk); v: (batch, heads, T, dv); gamma: (heads,).

    Returns (batch, heads, T, dv) in fp32, or fp64 when q is fp64."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v, gamma = (t.to(compute) for t in (q, k, v, gamma))
    length = q.shape[-2]
    n = torch.arange(length, device=q.device)[:, None]
    m = torch.arange(length, device=q.device)[None, :]
    # Masked entries (m > n) use exponent 0 rather than n − m: γ^(negative) overflows for long
    # sequences, and an inf there would turn the masked-out gradient into NaN.
    decay = torch.where(n >= m, gamma[:, None, None] ** (n - m).clamp(min=0), 0.0)  # (heads, T, T)
    return (q @ k.transpose(-1, -2) * decay) @ v
