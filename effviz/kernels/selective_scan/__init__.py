"""selective_scan: Mamba's input-dependent state-space recurrence (S6).

The public function handles the cheap per-channel parts (delta bias, softplus, the D skip and the
SiLU(z) gate) in PyTorch for every backend; the backends implement only the recurrence
(``scan_*(u, delta, A, B, C, reverse, h0) -> (y, last_state)``), which is where the time goes. The
one exception is inference on the ``cpu`` backend, where those parts cost as much as the recurrence
in PyTorch: ``scan_cpu_fused`` does all of it in its C pass.

Streaming: ``initial_state`` starts the scan from the last state of the previous chunk, so a
sequence cut into chunks of any size gives the outputs and final state of one pass;
``selective_state_update`` (in ``state_update.py``) is the one-token form with the state updated
in place.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dispatch import check_tensor, pick
from .cpu_backend import scan_cpu, scan_cpu_fused
from .reference import scan_reference
from .state_update import selective_state_update
from .torch_backend import scan_torch


def _scan_triton(*args, **kwargs):
    from .triton_backend import scan_triton

    return scan_triton(*args, **kwargs)


IMPLS = {"reference": scan_reference, "torch": scan_torch, "cpu": scan_cpu, "triton": _scan_triton}


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    reverse: bool = False,
    return_last_state: bool = False,
    backend: str | None = None,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y_t = C_t . h_t + D*u_t with h_t = exp(delta_t*A) h_{t-1} + delta_t*B_t*u_t; y *= silu(z).

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, N, L); D, delta_bias: (dim,).
    ``reverse`` scans from t = L-1 down to 0. Returns y (batch, dim, L) in u's dtype, and with
    ``return_last_state`` also the final state (batch, dim, N) in fp32 (fp64 for fp64 inputs on
    the torch and reference backends). State math is fp32 (fp64 for fp64 inputs).

    ``initial_state`` (batch, dim, N), any float dtype, is h_{-1}: the state before the first step
    visited (with ``reverse``, the state before step L-1). None means zeros. Passing the last state
    of one chunk as the initial state of the next (for ``reverse``, of the chunk before it) gives
    the same outputs and final state as one pass over the whole sequence. Under autograd every
    backend also gives the gradient of ``initial_state``.
    """
    check_tensor("u", u, (None, None, None))
    batch, dim, length = u.shape
    device = u.device
    check_tensor("delta", delta, (batch, dim, length), device=device)
    check_tensor("A", A, (dim, None), device=device)
    n_state = A.shape[1]
    check_tensor("B", B, (batch, n_state, length), device=device)
    check_tensor("C", C, (batch, n_state, length), device=device)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            check_tensor(name, t, (dim,), device=device)
    if z is not None:
        check_tensor("z", z, (batch, dim, length), device=device)
    if initial_state is not None:
        check_tensor("initial_state", initial_state, (batch, dim, n_state), device=device)
    if length == 0 or n_state == 0:
        raise ValueError(f"selective_scan needs L >= 1 and N >= 1, got L={length}, N={n_state}")

    fn = pick("selective_scan", IMPLS, backend, u, delta, A, B, C, D, z, delta_bias, initial_state,
              differentiable=("reference", "torch", "cpu", "triton"))
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias, initial_state))
    if fn is scan_cpu and not needs_grad:
        # Inference on the C kernel: bias, softplus, D skip and gate fused into its one pass.
        y, last_state = scan_cpu_fused(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse,
                                       initial_state)
        y = y.to(u.dtype)
        return (y, last_state) if return_last_state else y
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    delta = delta.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h0 = None if initial_state is None else initial_state.to(compute)
    y, last_state = fn(u.to(compute), delta, A.to(compute), B.to(compute), C.to(compute), reverse=reverse, h0=h0)
    del delta  # no longer needed: free it before the epilogue's temporaries exist
    # In inference, apply the D skip and the gate in place on y (ours), so peak memory stays within
    # twice the inputs + outputs; under autograd, out of place keeps the values backward needs.
    in_place = not (torch.is_grad_enabled() and y.requires_grad)
    if D is not None:
        skip = (D.to(compute)[:, None], u.to(compute))
        y = y.addcmul_(*skip) if in_place else torch.addcmul(y, *skip)
    if z is not None:
        gate = F.silu(z.to(compute))
        y = y.mul_(gate) if in_place else y * gate
    y = y.to(u.dtype)
    return (y, last_state) if return_last_state else y
