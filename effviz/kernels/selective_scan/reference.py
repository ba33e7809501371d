"""Selective scan (Mamba's S6 recurrence), written for reading rather than speed.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        h: (batch, dim, N)
    y_t = C_t . h_t                                                y: (batch, dim)

One step per token, state kept in fp32. This is the definition every backend is tested against.
``state_update_reference`` is the same step as a whole op (bias, softplus, D skip, gate included)
on a state kept between calls: the streaming form.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    reverse: bool = False,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bare recurrence: u, delta (batch, dim, L); A (dim, N); B, C (batch, N, L).

    Returns y (batch, dim, L) and the last state (batch, dim, N). With ``reverse`` the scan runs
    from t = L-1 down to 0. ``h0`` (batch, dim, N) is the state before the first step visited
    (None = zeros). Math in fp32 (fp64 if the inputs are fp64).
    """
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    h = torch.zeros(batch, dim, A.shape[1], dtype=dtype, device=u.device) if h0 is None else h0.to(dtype)
    ys = [None] * length
    steps = range(length - 1, -1, -1) if reverse else range(length)
    for t in steps:
        decay = torch.exp(delta[:, :, t, None] * A)                         # (batch, dim, N)
        drive = (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]  # (batch, dim, N)
        h = decay * h + drive
        ys[t] = torch.einsum("bdn,bn->bd", h, C[:, :, t])
    return torch.stack(ys, dim=-1), h


def state_update_reference(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One token of the scan: state (batch, dim, N) is updated in place, y (batch, dim) returned.

    x, dt, z (batch, dim); A (dim, N); B, C (batch, N); D, dt_bias (dim,). Math in the state's dtype.
        dt = softplus(dt + dt_bias);  state = exp(dt*A)*state + dt*B*x;  y = (C.state + D*x)*silu(z)
    """
    dtype = state.dtype
    x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    state.copy_(torch.exp(dt[:, :, None] * A) * state + (dt * x)[:, :, None] * B[:, None, :])
    y = torch.einsum("bdn,bn->bd", state, C)
    if D is not None:
        y = y + D.to(dtype) * x
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y
