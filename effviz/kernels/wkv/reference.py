"""The definition of the causal WKV: an explicit masked softmax over the prefix, O(T²) memory.

For each channel c and position t, token i <= t gets the logit ``-(t - 1 - i) * w[c] + k[i, c]``
(i < t) or ``u[c] + k[t, c]`` (i == t); the tokens before the sequence, summarised by the state
(a, b, p), enter as one more term whose numerator and denominator are e^{p - t w} (a, b). The
output is the weighted average of the values, max-stabilised by hand (a softmax with an extra
term that has its own numerator and denominator). Fast backends are tested against this; it is
only meant for small T.
"""
from __future__ import annotations

import torch


def wkv_reference(
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
    """
    inputs = (w, u, k, v) if state is None else (w, u, k, v, state)
    compute = torch.float64 if any(x.dtype == torch.float64 for x in inputs) else torch.float32
    out_dtype = v.dtype
    w, u, k, v = (x.to(compute) for x in (w, u, k, v))
    batch, T, C = k.shape
    if state is None:
        a0 = b0 = torch.zeros(batch, C, dtype=compute, device=k.device)
        p0 = torch.full((batch, C), -1e38, dtype=compute, device=k.device)
    else:
        a0, b0, p0 = state.to(compute).unbind(1)

    pos = torch.arange(T, device=k.device)
    steps_back = (pos[:, None] - 1 - pos[None, :]).to(compute)  # (t, i): t - 1 - i
    # logits[b, t, i, c]: the decayed key of token i as seen from position t ...
    logits = -steps_back[None, :, :, None] * w + k[:, None, :, :]
    # ... except on the diagonal, where the token sees itself through the bonus u ...
    is_self = torch.eye(T, dtype=torch.bool, device=k.device)[None, :, :, None]
    logits = torch.where(is_self, (u + k)[:, :, None, :], logits)
    # ... and the future is masked out.
    is_future = (pos[None, :] > pos[:, None])[None, :, :, None]
    logits = logits.masked_fill(is_future, float("-inf"))
    # The state's term at position t: the sums before the sequence, decayed t times.
    state_logit = p0[:, None, :] - pos.to(compute)[None, :, None] * w  # (batch, t, C)

    top = torch.maximum(logits.amax(dim=2), state_logit)  # (batch, t, C)
    weights = torch.exp(logits - top[:, :, None, :])
    state_scale = torch.exp(state_logit - top)
    num = (weights * v[:, None, :, :]).sum(dim=2) + state_scale * a0[:, None, :]
    den = weights.sum(dim=2) + state_scale * b0[:, None, :]
    out = (num / den).to(out_dtype)
    if not return_state:
        return out

    # After the last token, token i has been decayed T - 1 - i times and the old state T times;
    # p is the largest of these exponents (the value RWKV-4's running max reaches).
    last_logits = k - (T - 1 - pos).to(compute)[None, :, None] * w  # (batch, i, C)
    last_state_logit = p0 - T * w
    p = torch.maximum(last_logits.amax(dim=1), last_state_logit)
    weights = torch.exp(last_logits - p[:, None, :])
    state_scale = torch.exp(last_state_logit - p)
    a = (weights * v).sum(dim=1) + state_scale * a0
    b = weights.sum(dim=1) + state_scale * b0
    return out, torch.stack([a, b, p], dim=1)
