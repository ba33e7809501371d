"""The causal WKV as a Triton GPU kernel (inference), with state in and out.

One program owns a block of channels of one batch element (adjacent channels are adjacent in
the (batch, T, C) layout, so every per-step load is one coalesced row segment) and walks over T
once with RWKV-4's state (a, b, p) in registers: the sums of the tokens so far are e^p (a, b),
p their largest exponent. Each step forms the output from the state and the token's own term,
then advances the state, both rescaled to the larger exponent so that nothing overflows. The
empty state is (0, 0, -1e38), as in the other backends.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# 32 channels = one warp: loads of 128 bytes per step (see bi_wkv's triton backend).
BLOCK_C = 32
EMPTY_P = -1e38


@triton.jit
def _wkv_fwd(w_ptr, u_ptr, k_ptr, v_ptr, y_ptr, state_in_ptr, state_out_ptr, T, C,
             HAS_STATE_IN: tl.constexpr, HAS_STATE_OUT: tl.constexpr, BLOCK_C: tl.constexpr):
    batch = tl.program_id(0)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = channels < C
    decay = tl.load(w_ptr + channels, mask=mask, other=0.0).to(tl.float32)
    first = tl.load(u_ptr + channels, mask=mask, other=0.0).to(tl.float32)
    row = batch.to(tl.int64) * T * C + channels  # element (batch, 0, channels)
    state_row = batch.to(tl.int64) * 3 * C + channels  # element (batch, 0, channels) of a state

    if HAS_STATE_IN:
        a = tl.load(state_in_ptr + state_row, mask=mask, other=0.0)
        b = tl.load(state_in_ptr + state_row + C, mask=mask, other=0.0)
        p = tl.load(state_in_ptr + state_row + 2 * C, mask=mask, other=EMPTY_P)
    else:
        a = tl.zeros((BLOCK_C,), dtype=tl.float32)
        b = tl.zeros((BLOCK_C,), dtype=tl.float32)
        p = tl.full((BLOCK_C,), EMPTY_P, dtype=tl.float32)
    for t in range(T):
        at = row + t * C
        key = tl.load(k_ptr + at, mask=mask, other=0.0).to(tl.float32)
        value = tl.load(v_ptr + at, mask=mask, other=0.0).to(tl.float32)
        # Output: the state (the sums over i < t) against the token itself, e^{u + k}.
        self_logit = first + key
        top = tl.maximum(p, self_logit)
        state_scale = tl.exp(p - top)
        self_scale = tl.exp(self_logit - top)
        out = (state_scale * a + self_scale * value) / (state_scale * b + self_scale)
        tl.store(y_ptr + at, out.to(y_ptr.dtype.element_ty), mask=mask)
        # Advance: S <- e^{-w} S + e^{k} (v, 1).
        decayed = p - decay
        top = tl.maximum(decayed, key)
        state_scale = tl.exp(decayed - top)
        self_scale = tl.exp(key - top)
        a = state_scale * a + self_scale * value
        b = state_scale * b + self_scale
        p = top
    if HAS_STATE_OUT:
        tl.store(state_out_ptr + state_row, a, mask=mask)
        tl.store(state_out_ptr + state_row + C, b, mask=mask)
        tl.store(state_out_ptr + state_row + 2 * C, p, mask=mask)


def wkv_triton(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None = None,
    return_state: bool = False,
    block_c: int = BLOCK_C,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """w, u: (C,); k, v: (batch, T, C); state: (batch, 3, C) or None.

    Returns (batch, T, C) in v's dtype, and with ``return_state`` the fp32 (batch, 3, C) state.
    ``block_c`` (a power of two) exists so that the interpreter tests can cover several channel
    blocks and a ragged last block at tiny C.
    """
    w, u, k, v = (x.contiguous() for x in (w, u, k, v))
    batch, T, C = k.shape
    y = torch.empty_like(v)
    state_in = None if state is None else state.to(torch.float32).contiguous()
    state_out = torch.empty(batch, 3, C, dtype=torch.float32, device=k.device) if return_state else None
    grid = (batch, triton.cdiv(C, block_c))
    # An absent state is passed as y: the kernel never touches it (HAS_STATE_* are compile-time).
    _wkv_fwd[grid](w, u, k, v, y, y if state_in is None else state_in, y if state_out is None else state_out,
                   T, C, HAS_STATE_IN=state_in is not None, HAS_STATE_OUT=state_out is not None,
                   BLOCK_C=block_c, num_warps=1)
    return (y, state_out) if return_state else y
