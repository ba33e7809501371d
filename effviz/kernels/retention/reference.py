"""Retention, the definition: o_n = Σ_{m≤n} γ^(n−m) (q_n·k_m) v_m + γ^(n+1) q_n S₋₁, per head.

Equivalently S_n = γ S_{n−1} + k_nᵀ v_n and o_n = q_n S_n, from the state S₋₁ (zeros unless an
initial state is given, as when a stream is fed in chunks). This is the parallel form written as
plainly as possible, in fp32 (fp64 when q is fp64). It materialises the (T, T) decay mask, so it
is for tests and short sequences only. Every retention backend, in every mode, is checked
against it.
"""
from __future__ import annotations

import torch


def retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gamma: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """q, k: (batch, heads, T, dk); v: (batch, heads, T, dv); gamma: (heads,);
    initial_state: (batch, heads, dk, dv) S₋₁, or None for zeros.

    Returns o (batch, heads, T, dv) in fp32, or fp64 when q is fp64; with ``return_state``,
    (o, S_{T−1}) with S_{T−1} = γ^T S₋₁ + Σ_m γ^(T−1−m) k_mᵀ v_m in the same dtype."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v, gamma = (t.to(compute) for t in (q, k, v, gamma))
    length = q.shape[-2]
    n = torch.arange(length, device=q.device)[:, None]
    m = torch.arange(length, device=q.device)[None, :]
    # Masked entries (m > n) use exponent 0 rather than n − m: γ^(negative) overflows for long
    # sequences, and an inf there would turn the masked-out gradient into NaN.
    decay = torch.where(n >= m, gamma[:, None, None] ** (n - m).clamp(min=0), 0.0)  # (heads, T, T)
    out = (q @ k.transpose(-1, -2) * decay) @ v
    state = q.new_zeros(q.shape[0], q.shape[1], q.shape[-1], v.shape[-1])
    if initial_state is not None:
        state = initial_state.to(compute)
        out = out + gamma[:, None, None] ** (n + 1) * (q @ state)
    if not return_state:
        return out
    steps = torch.arange(length, device=q.device)
    to_end = gamma[:, None, None] ** (length - 1 - steps)[:, None]  # (heads, T, 1): γ^(T−1−m)
    return out, gamma[:, None, None] ** length * state + (k * to_end).transpose(-1, -2) @ v
