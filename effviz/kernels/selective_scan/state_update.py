"""selective_state_update: one token of the selective scan on a state kept between calls.

The streaming form of ``selective_scan`` (shaped like mamba_ssm's ``selective_state_update``): the
caller owns a (batch, dim, N) fp32 state, and each call advances it by one token in place, so a
stream of any length runs in constant memory. Every backend does the whole step, bias, softplus,
D skip and gate included: at one token those cost as much as the recurrence. Inference only.
"""
from __future__ import annotations

import torch

from ..dispatch import check_tensor, pick
from .cpu_backend import state_update_cpu
from .reference import state_update_reference
from .torch_backend import state_update_torch


def _state_update_triton(*args, **kwargs):
    from .triton_backend import state_update_triton

    return state_update_triton(*args, **kwargs)


STATE_UPDATE_IMPLS = {"reference": state_update_reference, "torch": state_update_torch, "cpu": state_update_cpu,
                      "triton": _state_update_triton}


def selective_state_update(
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
    backend: str | None = None,
) -> torch.Tensor:
    """Advance ``state`` by one token in place and return that token's output y.

        dt = softplus(dt + dt_bias)          (bias and softplus only when given / asked)
        state = exp(dt*A) * state + dt*B*x
        y = (C . state + D*x) * silu(z)      (D and z only when given)

    state: (batch, dim, N) float32, the state after the previous token (zeros before the first),
    overwritten with the state after this one. x, dt, z: (batch, dim); A: (dim, N); B, C: (batch, N);
    D, dt_bias: (dim,); inputs of any float dtype, math in fp32. Returns y (batch, dim) in x's dtype.
    Calling it for t = 0..L-1 gives the outputs and last state of ``selective_scan`` over the L
    tokens (for a reverse scan, call it for t = L-1..0).

    Inference only on every backend: it raises a ValueError when an input requires gradients
    (wrap the call in ``torch.no_grad()`` or ``torch.inference_mode()``); train with
    ``selective_scan``.
    """
    check_tensor("state", state, (None, None, None), dtypes=(torch.float32,))
    batch, dim, n_state = state.shape
    device = state.device
    for name, t in (("x", x), ("dt", dt)):
        check_tensor(name, t, (batch, dim), device=device)
    check_tensor("A", A, (dim, n_state), device=device)
    for name, t in (("B", B), ("C", C)):
        check_tensor(name, t, (batch, n_state), device=device)
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None:
            check_tensor(name, t, (dim,), device=device)
    if z is not None:
        check_tensor("z", z, (batch, dim), device=device)
    if n_state == 0:
        raise ValueError("selective_state_update needs N >= 1, got N=0")
    tensors = (state, x, dt, A, B, C, D, z, dt_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise ValueError("selective_state_update is inference-only: call it under torch.no_grad() or "
                         "torch.inference_mode(), or train with selective_scan")
    fn = pick("selective_state_update", STATE_UPDATE_IMPLS, backend, *tensors)
    return fn(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus).to(x.dtype)
