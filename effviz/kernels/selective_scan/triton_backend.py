"""Selective scan forward as a Triton GPU kernel (inference).

One program owns a block of channels of one batch element and walks over time with its
(BLOCK_D, N) state in registers, like the ``cpu`` kernel. Successive time steps of a channel are
adjacent in memory, so the strided per-step loads of u/delta hit lines already in cache.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _scan_fwd(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, y_ptr, last_ptr, dim, L, N,
              REVERSE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d, mask_n = offs_d < dim, offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    rows = (pid_b * dim + offs_d) * L
    bc_base = pid_b * N * L + offs_n * L
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for i in range(L):
        if REVERSE:
            t = L - 1 - i
        else:
            t = i
        dt = tl.load(delta_ptr + rows + t, mask=mask_d, other=0.0).to(tl.float32)
        ut = tl.load(u_ptr + rows + t, mask=mask_d, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + bc_base + t, mask=mask_n, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + bc_base + t, mask=mask_n, other=0.0).to(tl.float32)
        h = tl.exp(dt[:, None] * A) * h + (dt * ut)[:, None] * Bt[None, :]
        yt = tl.sum(h * Ct[None, :], axis=1)
        tl.store(y_ptr + rows + t, yt, mask=mask_d)
    tl.store(last_ptr + (pid_b * dim + offs_d)[:, None] * N + offs_n[None, :], h, mask=mask_dn)


def scan_triton(u, delta, A, B, C, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``reference.scan_reference``; any float dtype in, fp32 out."""
    u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    n_state = A.shape[1]
    y = torch.empty(batch, dim, length, dtype=torch.float32, device=u.device)
    last = torch.empty(batch, dim, n_state, dtype=torch.float32, device=u.device)
    block_d = min(64, triton.next_power_of_2(dim))
    grid = (batch, triton.cdiv(dim, block_d))
    _scan_fwd[grid](u, delta, A, B, C, y, last, dim, length, n_state, REVERSE=reverse,
                    BLOCK_D=block_d, BLOCK_N=triton.next_power_of_2(n_state))
    return y, last
