"""The definition of Bi-WKV: an explicit per-channel softmax over all tokens, O(T²) memory.

For each channel c and query position t, token i gets the logit
``-(|t - i| - 1) * w[c] + k[i, c]`` (i != t) or ``u[c] + k[t, c]`` (i == t), and the output is
the softmax-weighted average of ``v[:, c]``. Fast backends are tested against this; it is only
meant for small T.
"""
from __future__ import annotations

import torch


def bi_wkv_reference(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """w, u: (C,); k, v: (batch, T, C) -> (batch, T, C) in v's dtype; fp32 math (float64 if given)."""
    compute = torch.float64 if torch.float64 in (w.dtype, u.dtype, k.dtype, v.dtype) else torch.float32
    out_dtype = v.dtype
    w, u, k, v = (x.to(compute) for x in (w, u, k, v))
    T = k.shape[1]
    pos = torch.arange(T, device=k.device)
    distance = (pos[:, None] - pos[None, :]).abs().to(compute)  # (t, i)
    # logits[b, t, i, c]: the decayed key of token i as seen from position t ...
    logits = -(distance - 1)[None, :, :, None] * w + k[:, None, :, :]
    # ... except on the diagonal, where the token sees itself through the "first" bonus u.
    is_self = torch.eye(T, dtype=torch.bool, device=k.device)[None, :, :, None]
    logits = torch.where(is_self, (u + k)[:, :, None, :], logits)
    weights = torch.softmax(logits, dim=2)
    return (weights * v[:, None, :, :]).sum(dim=2).to(out_dtype)
