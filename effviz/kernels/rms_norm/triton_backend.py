"""RMSNorm with a residual add as one Triton kernel (inference).

One program normalises a block of rows, each row held whole in registers: x and the residual are
read once, and new_residual and out are written once, which is the least memory traffic the op
allows. Several short rows share a program so that each still moves a few thousand elements.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# A whole row lives in registers as fp32; beyond this the kernel would spill, so it refuses.
MAX_ROW = 16384
# Elements per program: enough in flight per SM without spilling registers.
ELEMENTS_PER_PROGRAM = 4096


@triton.jit
def _rms_norm_fwd(x_ptr, res_ptr, w_ptr, out_ptr, new_res_ptr, n_rows, D,
                  x_row_stride, res_row_stride, eps,
                  HAS_RESIDUAL: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < n_rows)[:, None] & (cols < D)[None, :]
    rows = rows.to(tl.int64)  # rows * stride can pass 2^31 elements on large inputs
    total = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        total += tl.load(res_ptr + rows[:, None] * res_row_stride + cols[None, :], mask=mask,
                         other=0.0).to(tl.float32)
    out_offsets = rows[:, None] * D + cols[None, :]
    tl.store(new_res_ptr + out_offsets, total.to(new_res_ptr.dtype.element_ty), mask=mask)
    inv_rms = 1.0 / tl.sqrt(tl.sum(total * total, axis=1) / D + eps)
    weight = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    out = total * inv_rms[:, None] * weight[None, :]
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """View as (rows, D) with unit column stride, copying only when no such view exists."""
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def rms_norm_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor | None,
    eps: float,
    residual_in_fp32: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``reference.rms_norm_reference``; the last dim must be <= MAX_ROW."""
    D = x.shape[-1]
    if D > MAX_ROW:
        raise ValueError(f"x: the triton rms_norm keeps a row in registers, so D must be <= {MAX_ROW}, got {D}")
    x_rows = _rows(x)
    res_rows = _rows(residual) if residual is not None else x_rows  # unread when HAS_RESIDUAL is off
    n_rows = x_rows.shape[0]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    residual_dtype = torch.float32 if residual_in_fp32 else x.dtype
    new_residual = torch.empty(x.shape, dtype=residual_dtype, device=x.device)
    if n_rows == 0:
        return out, new_residual
    block_d = triton.next_power_of_2(D)
    block_rows = min(max(1, ELEMENTS_PER_PROGRAM // block_d), triton.next_power_of_2(n_rows))
    num_warps = min(max(block_rows * block_d // 512, 1), 8)
    grid = (triton.cdiv(n_rows, block_rows),)
    _rms_norm_fwd[grid](x_rows, res_rows, weight.contiguous(), out, new_residual, n_rows, D,
                        x_rows.stride(0), res_rows.stride(0), eps,
                        HAS_RESIDUAL=residual is not None, BLOCK_ROWS=block_rows, BLOCK_D=block_d,
                        num_warps=num_warps)
    return out, new_residual
