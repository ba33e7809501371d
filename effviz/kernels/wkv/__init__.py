"""wkv: RWKV-4's causal WKV, the token mixer of its time-mix blocks (``bi_wkv``'s one-sided sibling).

Per batch row and channel c, token t takes a softmax-weighted average of the values of the
tokens up to itself: token i < t weighs ``-(t - 1 - i) * w + k_i`` (its key, decayed linearly
with distance; the previous token is not decayed) and the token itself weighs ``u + k_t``:

    y_t = [Σ_{i<t} e^{-(t-1-i)w + k_i} v_i + e^{u+k_t} v_t] / [Σ_{i<t} e^{-(t-1-i)w + k_i} + e^{u+k_t}]

``w`` is the positive per-channel decay rate (RWKV-4 passes ``-exp(time_decay)`` to its kernel;
pass ``exp(time_decay)`` here), ``u`` the bonus of the token itself (RWKV-4's ``time_first``).

**State.** The tokens before a sequence enter through ``state``, one fp32 (batch, 3, C) tensor
(a, b, p), RWKV-4's (aa, bb, pp). The state after token t of a sequence holds

    e^p · a = Σ_{i≤t} e^{-(t-i)w + k_i} v_i,     e^p · b = Σ_{i≤t} e^{-(t-i)w + k_i}

(the tokens of earlier chunks included, each decayed once per token since), with p the largest
exponent -(t-i)w + k_i of the sum, so that a and b stay in range (b >= 1 once a token has been
seen). That is exactly the prefix sum Σ_{i<t+1} e^{-(t+1-1-i)w + k_i} (v_i, 1) that token t + 1
needs: the first token of the next chunk uses a state as is, and decays it by e^{-w} as it adds
itself. So ``wkv(chunk2, state=wkv(chunk1, return_state=True)[1])`` equals the second half of
``wkv(chunk1 + chunk2)``. ``state=None`` means no tokens before: a = b = 0 and p = -1e38 (finite,
RWKV-4's value; the C kernels are compiled with -ffast-math and must not meet infinities; -inf
is accepted as well), which ``wkv_initial_state`` makes.

The reference builds the (T, T) masked softmax; the other backends run one max-stabilised
running sum, O(T). The cpu and triton backends are inference-only; the torch backend
differentiates w, u, k, v and the state.
"""
from __future__ import annotations

import torch

from ..dispatch import check_tensor, pick
from .cpu_backend import wkv_cpu
from .reference import wkv_reference
from .torch_backend import wkv_torch

EMPTY_P = -1e38  # p of the empty state: e^p (a, b) = 0 with a = b = 0


def _wkv_triton(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None = None,
    return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    from .triton_backend import wkv_triton

    return wkv_triton(w, u, k, v, state, return_state)


IMPLS = {"reference": wkv_reference, "torch": wkv_torch, "cpu": wkv_cpu, "triton": _wkv_triton}


def wkv_initial_state(batch: int, C: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The state of no tokens: fp32 (batch, 3, C) with a = b = 0 and p = -1e38."""
    state = torch.zeros(batch, 3, C, dtype=torch.float32, device=device)
    state[:, 2] = EMPTY_P
    return state


def wkv(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None = None,
    return_state: bool = False,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """w (decay rate), u (bonus of the token itself): (C,); k, v: (batch, T, C), T >= 1.

    ``state``: (batch, 3, C) float32 (or float64) from an earlier call, or None for no tokens
    before (see the module docstring for its exact meaning). Returns (batch, T, C) in v's dtype;
    with ``return_state`` also the (batch, 3, C) state after the last token, float32 (float64
    when the reference or torch backend computes in float64). Math in fp32, or fp64 when any
    input is fp64. ``backend``: see ``effviz.kernels.dispatch``; reference and torch support
    autograd.
    """
    check_tensor("k", k, (None, None, None))
    batch, T, C = k.shape
    if T == 0:
        raise ValueError("k must have at least one token (T >= 1), got shape " + str(tuple(k.shape)))
    check_tensor("v", v, (batch, T, C), device=k.device)
    check_tensor("w", w, (C,), device=k.device)
    check_tensor("u", u, (C,), device=k.device)
    if state is not None:
        check_tensor("state", state, (batch, 3, C), device=k.device, dtypes=(torch.float32, torch.float64))
    fn = pick("wkv", IMPLS, backend, w, u, k, v, state)
    return fn(w, u, k, v, state, return_state)
