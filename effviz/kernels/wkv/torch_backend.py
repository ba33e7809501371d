"""Causal WKV in O(T) time and memory with plain PyTorch ops: runs on any device, supports autograd.

The sums obey S_t = e^{-w} S_{t-1} + e^{k_t} (v_t, 1). They are kept as RWKV-4 keeps them,
scaled by e^{-p_t} where p_t = max(p_{t-1} - w, k_t) is the largest exponent in the sum, so that

    h_t = α_t h_{t-1} + β_t (v_t, 1),   α_t = e^{p_{t-1} - w - p_t},   β_t = e^{k_t - p_t}.

α and β lie in [0, 1] and h's denominator is >= 1 (the largest term contributes exactly 1), so
nothing overflows and the denominator cannot underflow, for any |k| or w·T. The point is that the
stabiliser p does not need gradients (the outputs do not depend on it: it cancels), so it is
found first in a cheap loop outside autograd; α and β are then formed for all t at once, and
the loop that autograd records is one fused multiply-add per token. (A loop over logaddexp and
lerp, the form of ``bi_wkv``'s torch backend, was measured ~1.7x slower forward + backward at
(32, 200, 128) on one thread.) The outputs, a two-term mix of the prefix h_{t-1} and the token's
own e^{u+k_t}, are formed for all t at once afterwards.
"""
from __future__ import annotations

import torch


def wkv_torch(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None = None,
    return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """w, u: (C,); k, v: (batch, T, C); state: (batch, 3, C) or None (see ``effviz.kernels.wkv``).

    Returns (batch, T, C) in v's dtype, and with ``return_state`` the (batch, 3, C) state after
    the last token; fp32 math (float64 if any input is float64), the state in the math dtype.
    Differentiable in w, u, k, v and the state.
    """
    inputs = (w, u, k, v) if state is None else (w, u, k, v, state)
    compute = torch.float64 if any(x.dtype == torch.float64 for x in inputs) else torch.float32
    out_dtype = v.dtype
    w, u, k, v = (x.to(compute) for x in (w, u, k, v))
    batch, T, C = k.shape
    if state is None:  # the empty sum
        h = torch.zeros(2, batch, C, dtype=compute, device=k.device)
        p_start = torch.full((batch, C), -1e38, dtype=compute, device=k.device)
    else:
        a0, b0, p_start = state.to(compute).unbind(1)
        h = torch.stack([a0, b0])

    # The stabiliser p_t, without gradients.
    with torch.no_grad():
        p_t, decay, keys = p_start, w.detach(), k.detach().unbind(1)
        ps = []
        for k_t in keys:
            p_t = torch.maximum(p_t - decay, k_t)
            ps.append(p_t)
        p = torch.stack(ps, dim=1)  # (batch, T, C): p after token t
    # p before token t; the first is the state's own, which carries the state's gradient.
    p_before = torch.cat([p_start[:, None], p[:, :-1]], dim=1)

    alpha = torch.exp(p_before - w - p)
    beta = torch.exp(k - p)
    added = torch.stack([beta * v, beta])  # (2, batch, T, C): β_t (v_t, 1)
    prefixes = [h]
    for alpha_t, added_t in zip(alpha.unbind(1), added.unbind(2)):
        h = torch.addcmul(added_t, alpha_t, h)
        prefixes.append(h)
    num, den = torch.stack(prefixes[:-1], dim=2)  # each (batch, T, C): the sums over i < t

    # The token itself, e^{u+k_t} (v_t, 1), against the prefix e^{p_before} (num, den): the
    # output moves from the prefix's mean num / den towards v_t by the token's share of the total
    # weight, a sigmoid of the log ratio. den is 0 only for the empty prefix (then the share is 1);
    # clamping it keeps that case free of 0 / 0, and of log 0 in the gradient.
    den = den.clamp_min(1e-30)
    log_den = p_before + torch.log(den)
    out = torch.lerp(num / den, v, torch.sigmoid(u + k - log_den)).to(out_dtype)
    if not return_state:
        return out
    # p_T is returned as data, so here it needs its gradient: token i has been decayed T - 1 - i
    # times, the old state T times, and p_T is the largest of these exponents. Rescaling h by
    # e^{p_loop - p_T} (1 up to rounding) carries that gradient to a and b.
    pos = torch.arange(T, device=k.device)
    p_last = torch.maximum((k - (T - 1 - pos).to(compute)[None, :, None] * w).amax(dim=1), p_start - T * w)
    a, b = h * torch.exp(p[:, -1] - p_last)
    return out, torch.stack([a, b, p_last], dim=1)
