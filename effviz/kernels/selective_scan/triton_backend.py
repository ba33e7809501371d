"""Selective scan forward as a Triton GPU kernel (inference).

One program owns a block of channels of one batch element and walks over time with its
(BLOCK_D, N) state in registers, like the ``cpu`` kernel. Successive time steps of a channel are
adjacent in memory, so the strided per-step loads of u/delta hit lines already in cache. The
state starts from zeros or, with ``HAS_H0``, from a given initial state.

``_state_update`` is the one-step form for streaming: one program per block of channels reads the
state, does the whole step (bias, softplus, D skip, gate) and writes the state back in place.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _scan_fwd(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, h0_ptr, y_ptr, last_ptr, dim, L, N,
              REVERSE: tl.constexpr, HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d, mask_n = offs_d < dim, offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    rows = (pid_b * dim + offs_d) * L
    bc_base = pid_b * N * L + offs_n * L
    state_offs = (pid_b * dim + offs_d)[:, None] * N + offs_n[None, :]
    if HAS_H0:
        h = tl.load(h0_ptr + state_offs, mask=mask_dn, other=0.0).to(tl.float32)
    else:
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
    tl.store(last_ptr + state_offs, h, mask=mask_dn)


@triton.jit
def _state_update(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, dim, N,
                  HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d, mask_n = offs_d < dim, offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    rows = pid_b * dim + offs_d
    state_offs = rows[:, None] * N + offs_n[None, :]
    h = tl.load(state_ptr + state_offs, mask=mask_dn, other=0.0)
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    Bt = tl.load(B_ptr + pid_b * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    Ct = tl.load(C_ptr + pid_b * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + rows, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + rows, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        # Above 20 softplus(x) equals x in fp32, and exp(x) would overflow further up.
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bt[None, :]
    tl.store(state_ptr + state_offs, h, mask=mask_dn)
    y = tl.sum(h * Ct[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32) * x
    if HAS_Z:
        zt = tl.load(z_ptr + rows, mask=mask_d, other=0.0).to(tl.float32)
        y *= zt * tl.sigmoid(zt)
    tl.store(y_ptr + rows, y, mask=mask_d)


def scan_triton(u, delta, A, B, C, reverse: bool = False, h0=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``reference.scan_reference``; any float dtype in, fp32 out."""
    u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
    h0 = None if h0 is None else h0.contiguous()
    batch, dim, length = u.shape
    n_state = A.shape[1]
    y = torch.empty(batch, dim, length, dtype=torch.float32, device=u.device)
    last = torch.empty(batch, dim, n_state, dtype=torch.float32, device=u.device)
    block_d = min(64, triton.next_power_of_2(dim))
    grid = (batch, triton.cdiv(dim, block_d))
    # Without h0 the kernel never reads its pointer: any tensor will do.
    _scan_fwd[grid](u, delta, A, B, C, u if h0 is None else h0, y, last, dim, length, n_state,
                    REVERSE=reverse, HAS_H0=h0 is not None, BLOCK_D=block_d,
                    BLOCK_N=triton.next_power_of_2(n_state))
    return y, last


def state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus: bool = False) -> torch.Tensor:
    """Same contract as ``reference.state_update_reference`` for an fp32 state; inputs of any float
    dtype; returns fp32 y (batch, dim)."""
    x, dt, A, B, C = (t.contiguous() for t in (x, dt, A, B, C))
    D, z, dt_bias = (None if t is None else t.contiguous() for t in (D, z, dt_bias))
    work = state if state.is_contiguous() else state.contiguous()
    batch, dim = x.shape
    n_state = A.shape[1]
    y = torch.empty(batch, dim, dtype=torch.float32, device=x.device)
    block_d = min(64, triton.next_power_of_2(dim))
    grid = (batch, triton.cdiv(dim, block_d))
    # Absent optional inputs: the kernel never reads their pointers, so x stands in for them.
    _state_update[grid](work, x, dt, A, B, C, x if D is None else D, x if z is None else z,
                        x if dt_bias is None else dt_bias, y, dim, n_state, HAS_D=D is not None,
                        HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
                        BLOCK_D=block_d, BLOCK_N=triton.next_power_of_2(n_state))
    if work is not state:
        state.copy_(work)
    return y
