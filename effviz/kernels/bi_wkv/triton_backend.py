"""Bi-WKV as a Triton GPU kernel (inference).

One program owns a block of channels of one batch element: adjacent channels are adjacent in
the (batch, T, C) layout, so every per-step load is one coalesced row segment. It walks over T
twice with the running sum in registers, in the normalised form of ``torch_backend``
(``ratio`` = numerator / denominator, ``log_den`` = log denominator; empty sum = (0, -inf)).

The forward pass (sums over i < t) stores its state for every t in fp32 scratch, and the
backward pass (sums over i > t) reads it back to form the output. The alternative, recomputing
the left sum inside the backward pass, would cost either O(T²) work or running the recurrence
in reverse, S_t = e^{w} (S_{t+1} - e^{k_t} v_t), which subtracts nearly equal numbers and
grows by e^{w} per step; two fp32 values of scratch per element are cheap next to that.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# 32 channels = one warp: loads of 128 bytes per step, and enough programs to fill a GPU at
# ViT widths (C=192 gives 6 per image) without idle lanes.
BLOCK_C = 32


@triton.jit
def _add_token(ratio, log_den, decay, key, value):
    """The running sum after one more token: S <- e^{-w} S + e^{k} (v, 1), normalised form."""
    decayed = log_den - decay
    larger = tl.maximum(decayed, key)
    # |difference| >= 0, so the exp never overflows; a -inf (empty) side gives exp(-inf) = 0.
    new_log_den = larger + tl.log(1.0 + tl.exp(-tl.abs(decayed - key)))
    ratio = ratio + tl.exp(key - new_log_den) * (value - ratio)
    return ratio, new_log_den


@triton.jit
def _bi_wkv_fwd(w_ptr, u_ptr, k_ptr, v_ptr, y_ptr, left_ratio_ptr, left_log_den_ptr, T, C,
                BLOCK_C: tl.constexpr):
    batch = tl.program_id(0)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = channels < C
    decay = tl.load(w_ptr + channels, mask=mask, other=0.0).to(tl.float32)
    first = tl.load(u_ptr + channels, mask=mask, other=0.0).to(tl.float32)
    row = batch.to(tl.int64) * T * C + channels  # element (batch, 0, channels)

    ratio = tl.zeros((BLOCK_C,), dtype=tl.float32)
    log_den = tl.full((BLOCK_C,), float("-inf"), dtype=tl.float32)
    for t in range(T):
        at = row + t * C
        tl.store(left_ratio_ptr + at, ratio, mask=mask)
        tl.store(left_log_den_ptr + at, log_den, mask=mask)
        key = tl.load(k_ptr + at, mask=mask, other=0.0).to(tl.float32)
        value = tl.load(v_ptr + at, mask=mask, other=0.0).to(tl.float32)
        ratio, log_den = _add_token(ratio, log_den, decay, key, value)

    ratio = tl.zeros((BLOCK_C,), dtype=tl.float32)  # from here on: the sum over i > t
    log_den = tl.full((BLOCK_C,), float("-inf"), dtype=tl.float32)
    for step in range(T):
        at = row + (T - 1 - step) * C
        key = tl.load(k_ptr + at, mask=mask, other=0.0).to(tl.float32)
        value = tl.load(v_ptr + at, mask=mask, other=0.0).to(tl.float32)
        left_ratio = tl.load(left_ratio_ptr + at, mask=mask, other=0.0)
        left_log_den = tl.load(left_log_den_ptr + at, mask=mask, other=float("-inf"))
        # Softmax over three candidates: left sum, right sum and the token itself (never empty).
        self_logit = first + key
        top = tl.maximum(tl.maximum(left_log_den, log_den), self_logit)
        left_weight = tl.exp(left_log_den - top)
        right_weight = tl.exp(log_den - top)
        self_weight = tl.exp(self_logit - top)
        out = (left_weight * left_ratio + right_weight * ratio + self_weight * value) / (
            left_weight + right_weight + self_weight
        )
        tl.store(y_ptr + at, out.to(y_ptr.dtype.element_ty), mask=mask)
        ratio, log_den = _add_token(ratio, log_den, decay, key, value)


def bi_wkv_triton(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  block_c: int = BLOCK_C) -> torch.Tensor:
    """w, u: (C,); k, v: (batch, T, C) -> (batch, T, C) in v's dtype; fp32 math.

    ``block_c`` (a power of two) exists so that the interpreter tests can cover several channel
    blocks and a ragged last block at tiny C.
    """
    w, u, k, v = (x.contiguous() for x in (w, u, k, v))
    batch, T, C = k.shape
    y = torch.empty_like(v)
    left_ratio = torch.empty(batch, T, C, dtype=torch.float32, device=k.device)
    left_log_den = torch.empty_like(left_ratio)
    grid = (batch, triton.cdiv(C, block_c))
    _bi_wkv_fwd[grid](w, u, k, v, y, left_ratio, left_log_den, T, C, BLOCK_C=block_c, num_warps=1)
    return y
