"""Bi-WKV in O(T) time and memory with plain PyTorch ops: runs on any device, supports autograd.

The sum over i < t obeys S_{t+1} = e^{-w} S_t + e^{k_t} v_t (and the same for i > t, run
backwards), so one running pass per direction suffices. Instead of the usual (numerator,
denominator, max-exponent) triple, each pass carries the equivalent normalised pair

    log_den = log Σ_{i<t} e^{-(t-1-i)w + k_i}       (the max-stabilised denominator, in log space)
    ratio   = Σ_{i<t} e^{-(t-1-i)w + k_i} v_i / e^{log_den}   (numerator / denominator)

Adding token t is then ``log_den' = logaddexp(log_den - w, k_t)`` and ``ratio' = lerp(ratio, v_t,
e^{k_t - log_den'})``: logaddexp is itself max-stabilised (max + log1p(e^{-|difference|})) and
the interpolation weight lies in [0, 1], so no step can overflow whatever |k| or |w|·T are, and
a step costs five tensor ops instead of about ten. The Python loop over T is what this backend
spends its time on, so the forward and the backward pass run in the same loop, stacked along a
leading axis of size 2.
"""
from __future__ import annotations

import torch


def bi_wkv_torch(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """w, u: (C,); k, v: (batch, T, C) -> (batch, T, C) in v's dtype; fp32 math (float64 if given)."""
    compute = torch.float64 if torch.float64 in (w.dtype, u.dtype, k.dtype, v.dtype) else torch.float32
    out_dtype = v.dtype
    w, u, k, v = (x.to(compute) for x in (w, u, k, v))
    # Direction 0 reads the tokens left to right (sums over i < t), direction 1 right to left.
    keys = torch.stack([k, k.flip(1)]).unbind(2)  # T tensors of (2, batch, C)
    values = torch.stack([v, v.flip(1)]).unbind(2)

    # The state before the first token is the empty sum: ratio 0, log-denominator -inf.
    log_den = torch.full_like(keys[0], float("-inf"))
    ratio = torch.zeros_like(values[0])
    log_dens, ratios = [log_den], [ratio]
    for k_t, v_t in zip(keys[:-1], values[:-1]):  # the last token is never "before" anything
        log_den = torch.logaddexp(log_den - w, k_t)
        ratio = torch.lerp(ratio, v_t, torch.exp(k_t - log_den))
        log_dens.append(log_den)
        ratios.append(ratio)
    log_dens_t = torch.stack(log_dens, dim=2)  # (2, batch, T, C)
    ratios_t = torch.stack(ratios, dim=2)

    # Output = softmax-weighted mix of the left sum, the right sum and the token itself. The three
    # candidates are stacked on the leading axis: softmax over a trailing axis of size 3 is ~8x slower.
    logits = torch.stack([log_dens_t[0], log_dens_t[1].flip(1), u + k])
    mixed = torch.stack([ratios_t[0], ratios_t[1].flip(1), v])
    return (torch.softmax(logits, dim=0) * mixed).sum(dim=0).to(out_dtype)
