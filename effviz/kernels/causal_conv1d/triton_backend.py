"""Causal depthwise conv1d as a Triton kernel (inference).

One program computes a (BLOCK_D, BLOCK_L) tile of one batch element: for each of the K taps it
loads the input tile shifted by that tap, so the K loads overlap and all but the first come from
cache; x is read from memory about once and y written once. Time is the fast axis of the tile,
matching the (batch, D, L) layout, so loads and stores are coalesced. With a streaming state,
the taps that reach before t = 0 read it instead of zeros (a second masked load, compiled only
when HAS_STATE).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _causal_conv1d_fwd(x_ptr, w_ptr, b_ptr, s_ptr, y_ptr, D, L,
                       x_stride_b, x_stride_d, x_stride_l, w_stride_d, w_stride_k,
                       TAPS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr,
                       REVERSE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_b = tl.program_id(0)
    chans = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    times = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = chans < D
    x_rows = x_ptr + pid_b.to(tl.int64) * x_stride_b + chans[:, None].to(tl.int64) * x_stride_d
    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for j in tl.static_range(TAPS):
        # Tap j looks j steps into the past (into the future when REVERSE), zero beyond the ends.
        if REVERSE:
            src = times + j
        else:
            src = times - j
        mask = mask_d[:, None] & ((src >= 0) & (src < L))[None, :]
        xj = tl.load(x_rows + src[None, :] * x_stride_l, mask=mask, other=0.0).to(tl.float32)
        if HAS_STATE and j > 0:  # tap 0 never reaches before t = 0
            # x[src] for src < 0 is state[K-1 + src]; the state is contiguous (batch, D, K-1).
            s_rows = s_ptr + (pid_b * D + chans[:, None]).to(tl.int64) * (TAPS - 1)
            s_mask = mask_d[:, None] & ((src < 0) & (src >= 1 - TAPS))[None, :]
            xj += tl.load(s_rows + (TAPS - 1 + src)[None, :], mask=s_mask, other=0.0).to(tl.float32)
        wj = tl.load(w_ptr + chans * w_stride_d + (TAPS - 1 - j) * w_stride_k, mask=mask_d, other=0.0)
        acc += wj.to(tl.float32)[:, None] * xj
    if HAS_BIAS:
        acc += tl.load(b_ptr + chans, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    y_offsets = (pid_b * D + chans[:, None]).to(tl.int64) * L + times[None, :]
    tl.store(y_ptr + y_offsets, acc.to(y_ptr.dtype.element_ty), mask=mask_d[:, None] & (times < L)[None, :])


def causal_conv1d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
    reverse: bool,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as ``reference.causal_conv1d_reference``; x may be strided (no copy)."""
    batch, dim, length = x.shape
    taps = weight.shape[1]
    y = torch.empty(batch, dim, length, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    block_l = min(128, triton.next_power_of_2(length))
    block_d = min(max(1, 2048 // block_l), triton.next_power_of_2(dim))
    grid = (batch, triton.cdiv(dim, block_d), triton.cdiv(length, block_l))
    b_arg = bias.contiguous() if bias is not None else weight  # unread when HAS_BIAS is off
    s_arg = initial_state.contiguous() if initial_state is not None else weight  # likewise
    _causal_conv1d_fwd[grid](x, weight, b_arg, s_arg, y, dim, length,
                             x.stride(0), x.stride(1), x.stride(2), weight.stride(0), weight.stride(1),
                             TAPS=taps, HAS_BIAS=bias is not None, HAS_STATE=initial_state is not None and taps > 1,
                             SILU=activation == "silu",
                             REVERSE=reverse, BLOCK_D=block_d, BLOCK_L=block_l, num_warps=4)
    return y
