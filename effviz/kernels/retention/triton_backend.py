"""Chunkwise retention as a Triton kernel (inference only).

One program per (batch·head, dv block) walks the sequence chunk by chunk, keeping the state
S (dk, dv block) in registers, so q, k and v are read once (per dv block) and the output
written once. Per chunk of C tokens, with i, j positions inside the chunk:

    o_i = Σ_{j≤i} γ^(i−j) (q_i·k_j) v_j  +  γ^(i+1) q_i S        (intra-chunk + the past)
    S  ← γ^C S + Σ_j γ^(C−1−j) k_jᵀ v_j

Only γ^j for 0 ≤ j ≤ C is formed, so long sequences neither underflow nor overflow. The last
chunk may be short (n < C tokens): its state update uses γ^n and γ^(n−1−j), so the final state
is S_{T−1} exactly. S starts from the initial state when there is one (streaming) and is stored
at the end when asked for.

Only the chunk form is implemented here: the parallel form needs the whole (T, T) score
matrix, which does not fit in one program's registers, and the recurrent form (C = 1) cannot use
tl.dot, which needs every dimension ≥ 16. Both are what the chunk form computes anyway; the
torch backend has them for comparison.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK_SIZE = 64
MAX_BLOCK_DV = 64


@triton.jit
def _retention_chunk_kernel(
    q_ptr, k_ptr, v_ptr, gamma_ptr, out_ptr, initial_ptr, final_ptr,
    heads, length, dk, dv,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_ob, stride_oh, stride_ot, stride_od,
    CHUNK: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    HAS_INITIAL: tl.constexpr,
    STORE_FINAL: tl.constexpr,
):
    dv_block = tl.program_id(0)
    batch_head = tl.program_id(1)
    b = batch_head // heads
    h = batch_head % heads

    log_gamma = tl.log(tl.load(gamma_ptr + h).to(tl.float32))
    pos = tl.arange(0, CHUNK)
    distance = pos[:, None] - pos[None, :]
    causal = distance >= 0
    # Exponent 0 where masked: γ^(negative) could overflow before tl.where discards it.
    intra_decay = tl.where(causal, tl.exp(tl.where(causal, distance, 0).to(tl.float32) * log_gamma), 0.0)
    query_decay = tl.exp((pos + 1).to(tl.float32) * log_gamma)

    dk_cols = tl.arange(0, BLOCK_DK)
    dv_cols = dv_block * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dk_ok = dk_cols < dk
    dv_ok = dv_cols < dv
    q_base = q_ptr + b * stride_qb + h * stride_qh
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    out_base = out_ptr + b * stride_ob + h * stride_oh
    # The states are contiguous fp32 (batch, heads, dk, dv).
    state_offsets = batch_head * dk * dv + dk_cols[:, None] * dv + dv_cols[None, :]
    state_mask = dk_ok[:, None] & dv_ok[None, :]

    if HAS_INITIAL:
        state = tl.load(initial_ptr + state_offsets, mask=state_mask, other=0.0)
    else:
        state = tl.zeros((BLOCK_DK, BLOCK_DV), dtype=tl.float32)
    for start in range(0, length, CHUNK):
        rows = start + pos
        rows_ok = rows < length
        # Rows past the end load as zeros: they add nothing to scores or state.
        q = tl.load(
            q_base + rows[:, None] * stride_qt + dk_cols[None, :] * stride_qd,
            mask=rows_ok[:, None] & dk_ok[None, :], other=0.0,
        ).to(tl.float32)
        k_t = tl.load(  # kᵀ (dk, C), loaded transposed so both matmuls below use it as is
            k_base + dk_cols[:, None] * stride_kd + rows[None, :] * stride_kt,
            mask=dk_ok[:, None] & rows_ok[None, :], other=0.0,
        ).to(tl.float32)
        v = tl.load(
            v_base + rows[:, None] * stride_vt + dv_cols[None, :] * stride_vd,
            mask=rows_ok[:, None] & dv_ok[None, :], other=0.0,
        ).to(tl.float32)

        scores = tl.dot(q, k_t, input_precision=DOT_PRECISION) * intra_decay
        out = tl.dot(scores, v, input_precision=DOT_PRECISION)
        out += tl.dot(q * query_decay[:, None], state, input_precision=DOT_PRECISION)
        tl.store(
            out_base + rows[:, None] * stride_ot + dv_cols[None, :] * stride_od,
            out.to(out_ptr.dtype.element_ty),
            mask=rows_ok[:, None] & dv_ok[None, :],
        )
        # n real tokens in this chunk (C except perhaps the last): γ^(n−1−j) from token j to the
        # chunk's last real token, γ^n across the chunk. Exponent 0 past n, where k is zero.
        n = tl.minimum(length - start, CHUNK)
        key_decay = tl.exp(tl.maximum(n - 1 - pos, 0).to(tl.float32) * log_gamma)
        chunk_decay = tl.exp(n.to(tl.float32) * log_gamma)
        state = state * chunk_decay + tl.dot(k_t * key_decay[None, :], v, input_precision=DOT_PRECISION)
    if STORE_FINAL:
        tl.store(final_ptr + state_offsets, state, mask=state_mask)


def retention_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor, chunk_size: int = CHUNK_SIZE,
    initial_state: torch.Tensor | None = None, return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise retention; returns (batch, heads, T, dv) in v's dtype, and with
    ``return_state`` also S_{T−1} (batch, heads, dk, dv) in fp32. ``initial_state`` S₋₁ as in
    ``reference.retention`` (None = zeros).

    ``chunk_size`` (a power of two ≥ 16, the tl.dot minimum) is a parameter so tests under the
    interpreter can cross chunk boundaries with tiny sequences.
    """
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= 16, got {chunk_size}")
    batch, heads, length, dk = q.shape
    dv = v.shape[-1]
    out = torch.empty(batch, heads, length, dv, dtype=v.dtype, device=v.device)
    final = torch.empty(batch, heads, dk, dv, dtype=torch.float32, device=v.device) if return_state else out
    initial = initial_state.to(torch.float32).contiguous() if initial_state is not None else out
    block_dk = max(16, triton.next_power_of_2(dk))
    block_dv = min(MAX_BLOCK_DV, max(16, triton.next_power_of_2(dv)))
    # fp32 inputs get exact fp32 products. fp16/bf16 values are exact in tf32 (same or fewer
    # mantissa bits, wider exponent), so tf32 tensor cores lose nothing on them; only the
    # decayed scores and the state are rounded, within the half-precision tolerances.
    exact = torch.float32 in (q.dtype, k.dtype, v.dtype)
    grid = (triton.cdiv(dv, block_dv), batch * heads)
    _retention_chunk_kernel[grid](
        q, k, v, gamma, out, initial, final,  # out stands in for the states it does not read or write
        heads, length, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        CHUNK=chunk_size,
        BLOCK_DK=block_dk,
        BLOCK_DV=block_dv,
        DOT_PRECISION="ieee" if exact else "tf32",
        HAS_INITIAL=initial_state is not None,
        STORE_FINAL=return_state,
    )
    return (out, final) if return_state else out
