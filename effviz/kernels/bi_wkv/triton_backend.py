"""Bi-WKV as Triton GPU kernels, forward and backward.

One program owns a block of channels of one batch element: adjacent channels are adjacent in
the (batch, T, C) layout, so every per-step load is one coalesced row segment. It walks over T
twice with the running sum in registers, in the normalised form of ``torch_backend``
(``ratio`` = numerator / denominator, ``log_den`` = log denominator; empty sum = (0, -inf)).

The forward pass (sums over i < t) stores its state for every t in fp32 scratch, and the
backward pass (sums over i > t) reads it back to form the output. The alternative, recomputing
the left sum inside the backward pass, would cost either O(T²) work or running the recurrence
in reverse, S_t = e^{w} (S_{t+1} - e^{k_t} v_t), which subtracts nearly equal numbers and
grows by e^{w} per step; two fp32 values of scratch per element are cheap next to that.

Gradients (``_bi_wkv_bwd``), with p_{t,i} the softmax weight of token i at position t, l_{t,i} its
logit and y_t the output (per channel):

    dv_i = Σ_t p_{t,i} dy_t                      dk_i = v_i dv_i - Σ_t p_{t,i} dy_t y_t
    du   = Σ_t p_{t,t} dy_t (v_t - y_t)          dw   = -Σ_t dy_t Σ_{i≠t} p_{t,i} (|t-i|-1) (v_i - y_t)

dw needs the distance-weighted sums D' = Σ (t-1-i) e^{l_{t,i}} and N' = Σ (t-1-i) e^{l_{t,i}} v_i; a
token further back is one step further per step, so D'_{t+1} = e^{-w} (D'_t + D_t), carried as
D'/D (the mean distance) and N'/D next to ``ratio``. The sums over t of dv and dk are running sums
too: for i < t, p_{t,i} = e^{k_i} e^{-(t-1-i)w} e^{-Z_t} (Z_t: position t's log normaliser), which is
the forward's running sum with key -Z_t and values dy_t, dy_t y_t, walked the other way. Its
log-denominator plus k_i is log Σ_t p_{t,i} <= log T, so the products never overflow.

Three walks per program: left to right storing the left sums (4 fp32 values per element), right to
left forming y, Z, du, dw and the i < t halves of dv, dk (written over the left sums, no longer
needed), left to right adding the i > t halves and the token's own term.
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


@triton.jit
def _add_token_with_distances(ratio, log_den, mean_dist, dist_ratio, decay, key, value):
    """``_add_token`` that also carries D'/D (``mean_dist``) and N'/D (``dist_ratio``)."""
    new_ratio, new_log_den = _add_token(ratio, log_den, decay, key, value)
    # e^{-w} D_old / D_new, the share of the old tokens, each now one step further away.
    kept = tl.exp(log_den - decay - new_log_den)
    return new_ratio, new_log_den, kept * (mean_dist + 1.0), kept * (dist_ratio + ratio)


@triton.jit
def _add_token_two_values(ratio_a, ratio_b, log_den, decay, key, value_a, value_b):
    """``_add_token`` for two running averages that share their weights (and log-denominator)."""
    ratio_a, new_log_den = _add_token(ratio_a, log_den, decay, key, value_a)
    ratio_b = ratio_b + tl.exp(key - new_log_den) * (value_b - ratio_b)
    return ratio_a, ratio_b, new_log_den


@triton.jit
def _bi_wkv_bwd(w_ptr, u_ptr, k_ptr, v_ptr, dy_ptr, dk_ptr, dv_ptr, dw_ptr, du_ptr,
                slot0_ptr, slot1_ptr, slot2_ptr, slot3_ptr, T, C, BLOCK_C: tl.constexpr):
    batch = tl.program_id(0)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = channels < C
    decay = tl.load(w_ptr + channels, mask=mask, other=0.0).to(tl.float32)
    first = tl.load(u_ptr + channels, mask=mask, other=0.0).to(tl.float32)
    row = batch.to(tl.int64) * T * C + channels
    zeros = tl.zeros((BLOCK_C,), dtype=tl.float32)
    empty = tl.full((BLOCK_C,), float("-inf"), dtype=tl.float32)

    # Walk 1, left to right: the sums over i < t, with their distance moments.
    ratio, log_den, mean_dist, dist_ratio = zeros, empty, zeros, zeros
    for t in range(T):
        at = row + t * C
        tl.store(slot0_ptr + at, ratio, mask=mask)
        tl.store(slot1_ptr + at, log_den, mask=mask)
        tl.store(slot2_ptr + at, mean_dist, mask=mask)
        tl.store(slot3_ptr + at, dist_ratio, mask=mask)
        key = tl.load(k_ptr + at, mask=mask, other=0.0).to(tl.float32)
        value = tl.load(v_ptr + at, mask=mask, other=0.0).to(tl.float32)
        ratio, log_den, mean_dist, dist_ratio = _add_token_with_distances(ratio, log_den, mean_dist, dist_ratio,
                                                                          decay, key, value)

    # Walk 2, right to left: y_t, Z_t, du, dw, and Σ_{t' > t} of dv and dk's second term.
    ratio, log_den, mean_dist, dist_ratio = zeros, empty, zeros, zeros
    grad_ratio, grad_y_ratio, grad_log_den = zeros, zeros, empty  # running Σ_{t'} p_{t',i} (dy, dy y)
    du, dw = zeros, zeros
    for step in range(T):
        at = row + (T - 1 - step) * C
        key = tl.load(k_ptr + at, mask=mask, other=0.0).to(tl.float32)
        value = tl.load(v_ptr + at, mask=mask, other=0.0).to(tl.float32)
        grad = tl.load(dy_ptr + at, mask=mask, other=0.0).to(tl.float32)
        left_ratio = tl.load(slot0_ptr + at, mask=mask, other=0.0)
        left_log_den = tl.load(slot1_ptr + at, mask=mask, other=float("-inf"))
        left_mean_dist = tl.load(slot2_ptr + at, mask=mask, other=0.0)
        left_dist_ratio = tl.load(slot3_ptr + at, mask=mask, other=0.0)
        self_logit = first + key
        top = tl.maximum(tl.maximum(left_log_den, log_den), self_logit)
        left_weight = tl.exp(left_log_den - top)
        right_weight = tl.exp(log_den - top)
        self_weight = tl.exp(self_logit - top)
        total = left_weight + right_weight + self_weight
        left_weight, right_weight, self_weight = left_weight / total, right_weight / total, self_weight / total
        out = left_weight * left_ratio + right_weight * ratio + self_weight * value
        log_norm = top + tl.log(total)
        du += grad * self_weight * (value - out)
        dw -= grad * (left_weight * (left_dist_ratio - out * left_mean_dist)
                      + right_weight * (dist_ratio - out * mean_dist))
        share = tl.exp(key + grad_log_den)  # Σ_{t' > t} p_{t',t}
        tl.store(slot0_ptr + at, log_norm, mask=mask)
        tl.store(slot1_ptr + at, out, mask=mask)
        tl.store(slot2_ptr + at, share * grad_ratio, mask=mask)
        tl.store(slot3_ptr + at, share * grad_y_ratio, mask=mask)
        ratio, log_den, mean_dist, dist_ratio = _add_token_with_distances(ratio, log_den, mean_dist, dist_ratio,
                                                                          decay, key, value)
        grad_ratio, grad_y_ratio, grad_log_den = _add_token_two_values(grad_ratio, grad_y_ratio, grad_log_den,
                                                                       decay, -log_norm, grad, grad * out)
    tl.store(du_ptr + batch * C + channels, du, mask=mask)
    tl.store(dw_ptr + batch * C + channels, dw, mask=mask)

    # Walk 3, left to right: add Σ_{t' < t} and the token's own weight p_{t,t}, then dv and dk.
    grad_ratio, grad_y_ratio, grad_log_den = zeros, zeros, empty
    for t in range(T):
        at = row + t * C
        key = tl.load(k_ptr + at, mask=mask, other=0.0).to(tl.float32)
        value = tl.load(v_ptr + at, mask=mask, other=0.0).to(tl.float32)
        grad = tl.load(dy_ptr + at, mask=mask, other=0.0).to(tl.float32)
        log_norm = tl.load(slot0_ptr + at, mask=mask, other=0.0)
        out = tl.load(slot1_ptr + at, mask=mask, other=0.0)
        share = tl.exp(key + grad_log_den)  # Σ_{t' < t} p_{t',t}
        self_weight = tl.exp(first + key - log_norm)
        dv = tl.load(slot2_ptr + at, mask=mask, other=0.0) + share * grad_ratio + self_weight * grad
        grad_y = tl.load(slot3_ptr + at, mask=mask, other=0.0) + share * grad_y_ratio + self_weight * grad * out
        tl.store(dv_ptr + at, dv, mask=mask)
        tl.store(dk_ptr + at, value * dv - grad_y, mask=mask)
        grad_ratio, grad_y_ratio, grad_log_den = _add_token_two_values(grad_ratio, grad_y_ratio, grad_log_den,
                                                                       decay, -log_norm, grad, grad * out)


def _forward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_c: int) -> torch.Tensor:
    """The forward launch on contiguous inputs."""
    batch, T, C = k.shape
    y = torch.empty_like(v)
    left_ratio = torch.empty(batch, T, C, dtype=torch.float32, device=k.device)
    left_log_den = torch.empty_like(left_ratio)
    grid = (batch, triton.cdiv(C, block_c))
    _bi_wkv_fwd[grid](w, u, k, v, y, left_ratio, left_log_den, T, C, BLOCK_C=block_c, num_warps=1)
    return y


class BiWKVTriton(torch.autograd.Function):
    """Saves only the inputs: the backward walks recompute the running sums it needs."""

    @staticmethod
    def forward(ctx, w, u, k, v, block_c: int):
        w, u, k, v = (x.contiguous() for x in (w, u, k, v))
        ctx.save_for_backward(w, u, k, v)
        ctx.block_c = block_c
        return _forward(w, u, k, v, block_c)

    @staticmethod
    def backward(ctx, dy):
        w, u, k, v = ctx.saved_tensors
        batch, T, C = k.shape
        dy = dy.contiguous()
        slots = [torch.empty(batch, T, C, dtype=torch.float32, device=k.device) for _ in range(4)]
        dk, dv = torch.empty_like(slots[0]), torch.empty_like(slots[0])
        # Per batch element, summed below: no atomics, and the same sum order every run.
        dw = torch.empty(batch, C, dtype=torch.float32, device=k.device)
        du = torch.empty_like(dw)
        grid = (batch, triton.cdiv(C, ctx.block_c))
        _bi_wkv_bwd[grid](w, u, k, v, dy, dk, dv, dw, du, *slots, T, C, BLOCK_C=ctx.block_c, num_warps=1)
        return dw.sum(0).to(w.dtype), du.sum(0).to(u.dtype), dk.to(k.dtype), dv.to(v.dtype), None


def bi_wkv_triton(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  block_c: int = BLOCK_C) -> torch.Tensor:
    """w, u: (C,); k, v: (batch, T, C) -> (batch, T, C) in v's dtype; fp32 math; autograd gives
    the gradients of all four inputs (in their dtypes).

    ``block_c`` (a power of two) exists so that the interpreter tests can cover several channel
    blocks and a ragged last block at tiny C.
    """
    return BiWKVTriton.apply(w, u, k, v, block_c)
