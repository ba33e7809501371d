"""Retention (RetNet, Vision RetNet): o_n = Σ_{m≤n} γ^(n−m) (q_n·k_m) v_m per head.

Causal, unscaled and unnormalised: the model applies its own scaling and group norm. The three
forms of the paper (parallel, recurrent, chunk) give the same output; ``mode`` picks which one
runs, so they can be compared for speed and memory. Backends: reference and torch in every
mode, triton the chunk form, cpu (C) the recurrent form.

Streaming: the recurrent state S (batch, heads, dk, dv) carries the past across calls
(``initial_state`` in, ``return_state`` out), so a sequence fed in chunks gives the outputs and
final state of one pass, in every mode.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..dispatch import check_tensor, pick
from . import cpu_backend, reference, torch_backend

MODES = ("parallel", "recurrent", "chunk")


def _reference(q, k, v, gamma, mode, initial_state, return_state):
    # The math, whatever the form.
    return reference.retention(q, k, v, gamma, initial_state=initial_state, return_state=return_state)


def _torch(q, k, v, gamma, mode, initial_state, return_state):
    return torch_backend.FORMS[mode](q, k, v, gamma, initial_state=initial_state, return_state=return_state)


def _cpu(q, k, v, gamma, mode, initial_state, return_state):
    return cpu_backend.retention_recurrent(q, k, v, gamma, initial_state=initial_state, return_state=return_state)


def _triton(q, k, v, gamma, mode, initial_state, return_state):
    from . import triton_backend  # lazily: importing effviz must not import triton

    return triton_backend.retention_chunk(q, k, v, gamma, initial_state=initial_state, return_state=return_state)


# The Triton kernel is the chunk form only (see triton_backend.py) and the C kernel the recurrent
# form only (cpu.c). Leaving each out of the other modes' choice lets the default fall back to
# torch there instead of failing.
IMPLS_BY_MODE: dict[str, dict[str, Callable]] = {
    "parallel": {"reference": _reference, "torch": _torch},
    "recurrent": {"reference": _reference, "torch": _torch, "cpu": _cpu},
    "chunk": {"reference": _reference, "torch": _torch, "triton": _triton},
}
# The default mode's backends: what models run in inference (and what the sweep reports).
IMPLS: dict[str, Callable] = IMPLS_BY_MODE["chunk"]


def retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gamma: torch.Tensor,
    mode: str = "chunk",
    backend: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal retention with per-head decay ``gamma``.

    q, k: (batch, heads, T, dk); v: (batch, heads, T, dv); gamma: (heads,) in (0, 1).
    mode: "parallel" (O(T²) masked matmul), "recurrent" (one state update per token) or "chunk"
    (chunks of 64 tokens, O(T)). Returns (batch, heads, T, dv) in v's dtype; math is fp32 (fp64 for fp64 inputs, which the
    default backend choice sends to the torch backend).

    State: S_t = γ S_{t−1} + k_tᵀ v_t and o_t = q_t S_t, so S_{−1} = ``initial_state``
    (batch, heads, dk, dv) adds γ^(t+1) q_t S_{−1} to o_t (None = zeros, the stateless op).
    With ``return_state`` the result is (o, S_{T−1}), S in fp32 (fp64 for fp64 inputs); pass it
    as the next chunk's ``initial_state``. On the reference and torch backends gradients flow
    into the initial state too.
    """
    check_tensor("q", q, (None, None, None, None))
    batch, heads, length, dk = q.shape
    check_tensor("k", k, (batch, heads, length, dk), device=q.device)
    check_tensor("v", v, (batch, heads, length, None), device=q.device)
    check_tensor("gamma", gamma, (heads,), device=q.device)
    in_range = ((gamma > 0) & (gamma < 1)).all()
    if torch.compiler.is_compiling():
        # Reading the value would break the graph: the compiled graph checks it when it runs.
        torch._assert_async(in_range, "gamma must lie strictly between 0 and 1")
    elif not bool(in_range):
        raise ValueError(f"gamma must lie strictly between 0 and 1, got {gamma.tolist()}")
    if initial_state is not None:
        check_tensor("initial_state", initial_state, (batch, heads, dk, v.shape[-1]), device=q.device)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if backend == "triton" and mode != "chunk":
        raise ValueError(
            f"retention: backend 'triton' implements mode='chunk' only, got mode={mode!r}; "
            "use backend='torch' for the parallel and recurrent forms"
        )
    if backend == "cpu" and mode != "recurrent":
        raise ValueError(
            f"retention: no 'cpu' implementation of mode={mode!r}: the C kernel is the recurrent "
            "form only; use mode='recurrent', or backend='torch' for the parallel and chunk forms"
        )
    impl = pick("retention", IMPLS_BY_MODE[mode], backend, q, k, v, gamma, initial_state)
    if not return_state:
        return impl(q, k, v, gamma, mode, initial_state, False).to(v.dtype)
    out, state = impl(q, k, v, gamma, mode, initial_state, True)
    state_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return out.to(v.dtype), state.to(state_dtype)
