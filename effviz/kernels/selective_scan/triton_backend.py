"""Selective scan as Triton GPU kernels: a forward parallel over time chunks, and its backward.

The recurrence h_t = a_t h_{t-1} + b_t (a_t = exp(delta_t A), b_t = delta_t u_t B_t, per channel d
and state n) is associative in the pairs (a, b): (a1, b1) then (a2, b2) is (a1 a2, a2 b1 + b2).
The sequence is cut into chunks of ``CHUNK`` steps and the work split in three launches:

1. ``_chunk_ends``, one program per (batch, channel, chunk): the chunk's (CHUNK, N) tile of pairs is
   combined by ``tl.associative_scan`` (log-depth, not CHUNK dependent steps), giving the state the
   chunk ends in when it starts from zero, E_c, and its total decay P_c = prod_t a_t.
2. ``_pass_across_chunks``: the short sequential part, one program per block of rows walking the
   chunks: H_c = P_{c-1} H_{c-1} + E_{c-1}, the state entering chunk c (H_0 = h0 or zero).
3. ``_chunk_outputs``, one program per (batch, channel, chunk) again: H_c folded into the first
   pair (b_0 <- b_0 + a_0 H_c), one more scan gives every state h_t, and y_t = C_t . h_t.

Grid: batch * dim * ceil(L / CHUNK) programs, e.g. 384 * 4 = 1536 for one Vim-Ti image (L=197),
against 6 for a kernel that gives each program 64 channels and walks L. When L <= CHUNK, steps
1-2 are skipped (H_0 is h0), the tile shrinks to the next power of two >= L, and
the scan is one launch. This is why no separate sequential kernel is kept: a single chunk is
already the short-L case, with a log-depth scan instead of L dependent steps. (Under the CPU
interpreter, though, ``tl.associative_scan`` runs element by element in Python, so these kernels
are much slower there than a sequential one: the tests keep to tiny shapes and chunks.)

The backward runs the same three launches on the state gradient g_t = dL/dh_t, which obeys the
reversed recurrence g_t = a_{t+1} g_{t+1} + dy_t C_t (g_{L-1} gets dL/d(last state) too):
``_chunk_grad_ends`` scans each chunk backwards from zero, ``_pass_across_chunks`` carries the
gradient from chunk to chunk (last to first), and ``_chunk_grads`` rebuilds each chunk's states from
the H_c saved by the forward, scans g with the carry folded into its last pair, and forms

    du_t = delta_t sum_n g B_t            ddelta_t = sum_n g (A a_t h_{t-1} + u_t B_t)
    dA   = sum_t g delta_t a_t h_{t-1}   dB_t = sum_d g delta_t u_t    dC_t = sum_d h_t dy_t
    dh0  = a_0 g_0

with a_t h_{t-1} = h_t - b_t, so no shifted copy of the states is needed. dA, dB and dC are sums
over programs (channels, chunks), accumulated with fp32 atomic adds, as mamba_ssm's CUDA backward
does for dB and dC. Training memory: the inputs plus the (batch, dim, L/CHUNK, N) chunk states.

``_state_update`` is the one-step form for streaming: one program per block of channels reads the
state, does the whole step (bias, softplus, D skip, gate) and writes the state back in place.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# 64 steps x N=16 states is a 1024-element tile per program: enough work per program to hide its
# launch, and chunks short enough that one Vim-Ti image (L=197) still gives 4 per channel.
CHUNK = 64
# Rows (batch x channel) per program of the across-chunk pass.
PASS_ROWS = 32


@triton.jit
def _combine(a_first, b_first, a_then, b_then):
    """Step (a_first, b_first) followed by (a_then, b_then): h -> a_then (a_first h + b_first) + b_then."""
    return a_first * a_then, a_then * b_first + b_then


@triton.jit
def _chunk_steps(chunk, L, REVERSE: tl.constexpr, CHUNK: tl.constexpr):
    """Rows of a chunk's tile: their scan step, the token each reads (L-1-step when reversed), and
    whether the step exists (the last chunk may be short)."""
    step = chunk * CHUNK + tl.arange(0, CHUNK)
    if REVERSE:
        t = L - 1 - step
    else:
        t = step
    return step, t, step < L


@triton.jit
def _chunk_pairs(u_ptr, delta_ptr, A_ptr, B_ptr, row, batch, channel, t, valid, L, N,
                 BLOCK_N: tl.constexpr):
    """The (CHUNK, BLOCK_N) tiles a = exp(delta A), b = delta u B of one channel, with delta and u.

    Missing steps and padded states load delta = 0 and B = 0, which makes their pair (1, 0): the
    identity, so they pass every state through unchanged.
    """
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    dt = tl.load(delta_ptr + row * L + t, mask=valid, other=0.0).to(tl.float32)
    ut = tl.load(u_ptr + row * L + t, mask=valid, other=0.0).to(tl.float32)
    A = tl.load(A_ptr + channel * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    Bt = tl.load(B_ptr + batch * N * L + offs_n[None, :] * L + t[:, None],
                 mask=valid[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
    decay = tl.exp(dt[:, None] * A[None, :])
    drive = (dt * ut)[:, None] * Bt
    return decay, drive, dt, ut, A, Bt


@triton.jit
def _row_of(tile, rows, which):
    """Row ``which`` of a (CHUNK, BLOCK_N) tile as a (BLOCK_N,) vector."""
    return tl.sum(tl.where(rows[:, None] == which, tile, 0.0), axis=0)


@triton.jit
def _chunk_ends(u_ptr, delta_ptr, A_ptr, B_ptr, ends_ptr, decays_ptr, dim, L, N, n_chunks,
                REVERSE: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # batch * dim + channel
    chunk = tl.program_id(1)
    batch, channel = row // dim, row % dim
    _, t, valid = _chunk_steps(chunk, L, REVERSE, CHUNK)
    decay, drive, _, _, _, _ = _chunk_pairs(u_ptr, delta_ptr, A_ptr, B_ptr, row, batch, channel, t, valid,
                                            L, N, BLOCK_N)
    total_decay, states = tl.associative_scan((decay, drive), 0, _combine)
    rows = tl.arange(0, CHUNK)
    offs_n = tl.arange(0, BLOCK_N)
    at = (row * n_chunks + chunk) * N + offs_n
    tl.store(ends_ptr + at, _row_of(states, rows, CHUNK - 1), mask=offs_n < N)
    tl.store(decays_ptr + at, _row_of(total_decay, rows, CHUNK - 1), mask=offs_n < N)


@triton.jit
def _pass_across_chunks(ends_ptr, decays_ptr, first_ptr, entering_ptr, n_rows, N, n_chunks,
                        HAS_FIRST: tl.constexpr, BACKWARD: tl.constexpr,
                        BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    """x_entering(c) = x; x <- decay_c x + end_c over the chunks, first to last (or last to first
    with BACKWARD), from x = ``first`` (or zero)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    offs_n = tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (offs_n < N)[None, :]
    if HAS_FIRST:
        x = tl.load(first_ptr + rows[:, None] * N + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    else:
        x = tl.zeros((BLOCK_ROWS, BLOCK_N), dtype=tl.float32)
    for i in range(n_chunks):
        if BACKWARD:
            chunk = n_chunks - 1 - i
        else:
            chunk = i
        at = (rows[:, None] * n_chunks + chunk) * N + offs_n[None, :]
        tl.store(entering_ptr + at, x, mask=mask)
        x = tl.load(decays_ptr + at, mask=mask, other=0.0) * x + tl.load(ends_ptr + at, mask=mask, other=0.0)


@triton.jit
def _chunk_outputs(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, entering_ptr, y_ptr, last_ptr, dim, L, N, n_chunks,
                   REVERSE: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    batch, channel = row // dim, row % dim
    _, t, valid = _chunk_steps(chunk, L, REVERSE, CHUNK)
    decay, drive, _, _, _, _ = _chunk_pairs(u_ptr, delta_ptr, A_ptr, B_ptr, row, batch, channel, t, valid,
                                            L, N, BLOCK_N)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.arange(0, CHUNK)
    h_in = tl.load(entering_ptr + (row * n_chunks + chunk) * N + offs_n, mask=mask_n, other=0.0)
    drive = tl.where(rows[:, None] == 0, drive + decay * h_in[None, :], drive)
    _, states = tl.associative_scan((decay, drive), 0, _combine)
    Ct = tl.load(C_ptr + batch * N * L + offs_n[None, :] * L + t[:, None],
                 mask=valid[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
    tl.store(y_ptr + row * L + t, tl.sum(states * Ct, axis=1), mask=valid)
    if chunk == n_chunks - 1:
        # Missing steps are identities, so the tile's last row is the state after step L-1.
        tl.store(last_ptr + row * N + offs_n, _row_of(states, rows, CHUNK - 1), mask=mask_n)


@triton.jit
def _next_decay(delta_ptr, row, t, step, L, A, REVERSE: tl.constexpr, CHUNK: tl.constexpr):
    """a_{step+1} for every row of the tile, 1 where the next step is outside the chunk (its
    contribution arrives as the carry instead)."""
    rows = tl.arange(0, CHUNK)
    has_next = (rows < CHUNK - 1) & (step + 1 < L)
    if REVERSE:
        t_next = t - 1
    else:
        t_next = t + 1
    dt_next = tl.load(delta_ptr + row * L + t_next, mask=has_next, other=0.0).to(tl.float32)
    return tl.exp(dt_next[:, None] * A[None, :])


@triton.jit
def _chunk_grad_ends(delta_ptr, A_ptr, C_ptr, dy_ptr, ends_ptr, decays_ptr, dim, L, N, n_chunks,
                     REVERSE: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    batch, channel = row // dim, row % dim
    step, t, valid = _chunk_steps(chunk, L, REVERSE, CHUNK)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.arange(0, CHUNK)
    dt = tl.load(delta_ptr + row * L + t, mask=valid, other=0.0).to(tl.float32)
    A = tl.load(A_ptr + channel * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    dyt = tl.load(dy_ptr + row * L + t, mask=valid, other=0.0).to(tl.float32)
    Ct = tl.load(C_ptr + batch * N * L + offs_n[None, :] * L + t[:, None],
                 mask=valid[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
    decay_next = _next_decay(delta_ptr, row, t, step, L, A, REVERSE, CHUNK)
    _, grads = tl.associative_scan((decay_next, dyt[:, None] * Ct), 0, _combine, reverse=True)
    at = (row * n_chunks + chunk) * N + offs_n
    # What the chunk hands to the state before it: a_first g_first, and how a carry into its last
    # state reaches there: the product of all its decays.
    tl.store(ends_ptr + at, _row_of(tl.exp(dt[:, None] * A[None, :]) * grads, rows, 0), mask=mask_n)
    tl.store(decays_ptr + at, tl.exp(tl.sum(dt, axis=0) * A), mask=mask_n)


@triton.jit
def _chunk_grads(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, dy_ptr, entering_ptr, carries_ptr,
                 du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dh0_ptr, dim, L, N, n_chunks,
                 REVERSE: tl.constexpr, HAS_DH0: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    batch, channel = row // dim, row % dim
    step, t, valid = _chunk_steps(chunk, L, REVERSE, CHUNK)
    decay, drive, dt, ut, A, Bt = _chunk_pairs(u_ptr, delta_ptr, A_ptr, B_ptr, row, batch, channel, t, valid,
                                               L, N, BLOCK_N)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    mask_tn = valid[:, None] & mask_n[None, :]
    rows = tl.arange(0, CHUNK)
    at = (row * n_chunks + chunk) * N + offs_n
    h_in = tl.load(entering_ptr + at, mask=mask_n, other=0.0)
    _, states = tl.associative_scan((decay, tl.where(rows[:, None] == 0, drive + decay * h_in[None, :], drive)),
                                    0, _combine)
    dyt = tl.load(dy_ptr + row * L + t, mask=valid, other=0.0).to(tl.float32)
    bc_offs = batch * N * L + offs_n[None, :] * L + t[:, None]
    Ct = tl.load(C_ptr + bc_offs, mask=mask_tn, other=0.0).to(tl.float32)
    carry = tl.load(carries_ptr + at, mask=mask_n, other=0.0)
    # The carry enters at the tile's last row; missing steps have a_next = 1 and dy = 0, so it
    # reaches the last real step unchanged.
    local = dyt[:, None] * Ct
    local = tl.where(rows[:, None] == CHUNK - 1, local + carry[None, :], local)
    decay_next = _next_decay(delta_ptr, row, t, step, L, A, REVERSE, CHUNK)
    _, grads = tl.associative_scan((decay_next, local), 0, _combine, reverse=True)

    grad_B = tl.sum(grads * Bt, axis=1)
    grad_decay_arg = grads * (states - drive)  # dL/d(delta A): g a_t h_{t-1}
    tl.store(du_ptr + row * L + t, dt * grad_B, mask=valid)
    tl.store(ddelta_ptr + row * L + t, tl.sum(grad_decay_arg * A[None, :], axis=1) + ut * grad_B, mask=valid)
    tl.atomic_add(dA_ptr + channel * N + offs_n, tl.sum(grad_decay_arg * dt[:, None], axis=0), mask=mask_n)
    tl.atomic_add(dB_ptr + bc_offs, grads * (dt * ut)[:, None], mask=mask_tn)
    tl.atomic_add(dC_ptr + bc_offs, states * dyt[:, None], mask=mask_tn)
    if HAS_DH0:
        if chunk == 0:
            tl.store(dh0_ptr + row * N + offs_n, _row_of(decay * grads, rows, 0), mask=mask_n)


def _launch_forward(u, delta, A, B, C, h0, reverse: bool, chunk: int) -> tuple[torch.Tensor, ...]:
    """y (batch, dim, L), the last state (batch, dim, N) and the state entering every chunk
    (batch, dim, n_chunks, N), all fp32, from contiguous inputs."""
    batch, dim, length = u.shape
    n_state = A.shape[1]
    n_chunks = triton.cdiv(length, chunk)
    block_n = triton.next_power_of_2(n_state)
    grid = (batch * dim, n_chunks)
    entering = u.new_empty(batch, dim, n_chunks, n_state, dtype=torch.float32)
    if n_chunks == 1:
        entering[:, :, 0] = 0.0 if h0 is None else h0
    else:
        ends, decays = torch.empty_like(entering), torch.empty_like(entering)
        _chunk_ends[grid](u, delta, A, B, ends, decays, dim, length, n_state, n_chunks,
                          REVERSE=reverse, CHUNK=chunk, BLOCK_N=block_n)
        # Without h0 the pass never reads its pointer: any tensor will do.
        _pass_across_chunks[(triton.cdiv(batch * dim, PASS_ROWS),)](
            ends, decays, u if h0 is None else h0, entering, batch * dim, n_state, n_chunks,
            HAS_FIRST=h0 is not None, BACKWARD=False, BLOCK_ROWS=PASS_ROWS, BLOCK_N=block_n)
    y = u.new_empty(batch, dim, length, dtype=torch.float32)
    last = u.new_empty(batch, dim, n_state, dtype=torch.float32)
    _chunk_outputs[grid](u, delta, A, B, C, entering, y, last, dim, length, n_state, n_chunks,
                         REVERSE=reverse, CHUNK=chunk, BLOCK_N=block_n)
    return y, last, entering


class SelectiveScanTriton(torch.autograd.Function):
    """The chunked forward saves only the state entering each chunk; the backward rebuilds the
    states inside each chunk from it (one more scan per chunk) instead of storing all L of them."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, reverse: bool, chunk: int):
        dtypes = [t.dtype for t in (u, delta, A, B, C)] + [None if h0 is None else h0.dtype]
        u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
        h0 = None if h0 is None else h0.contiguous()
        y, last, entering = _launch_forward(u, delta, A, B, C, h0, reverse, chunk)
        ctx.save_for_backward(u, delta, A, B, C, entering)
        ctx.reverse, ctx.chunk, ctx.dtypes = reverse, chunk, dtypes
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A, B, C, entering = ctx.saved_tensors
        batch, dim, length = u.shape
        n_state = A.shape[1]
        n_chunks = entering.shape[2]
        block_n = triton.next_power_of_2(n_state)
        grid = (batch * dim, n_chunks)
        meta = dict(REVERSE=ctx.reverse, CHUNK=ctx.chunk, BLOCK_N=block_n)
        dy = u.new_zeros(batch, dim, length, dtype=torch.float32) if dy is None else dy.float().contiguous()
        # carries[c]: dL/d(state at the end of chunk c) through everything after the chunk.
        carries = torch.empty_like(entering)
        if n_chunks == 1:
            carries[:, :, 0] = 0.0 if dlast is None else dlast
        else:
            ends, decays = torch.empty_like(entering), torch.empty_like(entering)
            _chunk_grad_ends[grid](delta, A, C, dy, ends, decays, dim, length, n_state, n_chunks, **meta)
            _pass_across_chunks[(triton.cdiv(batch * dim, PASS_ROWS),)](
                ends, decays, u if dlast is None else dlast.float().contiguous(), carries, batch * dim, n_state,
                n_chunks, HAS_FIRST=dlast is not None, BACKWARD=True, BLOCK_ROWS=PASS_ROWS, BLOCK_N=block_n)
        du = torch.empty(batch, dim, length, dtype=torch.float32, device=u.device)
        ddelta = torch.empty_like(du)
        dA = torch.zeros(dim, n_state, dtype=torch.float32, device=u.device)
        dB = torch.zeros(batch, n_state, length, dtype=torch.float32, device=u.device)
        dC = torch.zeros_like(dB)
        want_dh0 = ctx.needs_input_grad[5]
        dh0 = u.new_empty(batch, dim, n_state, dtype=torch.float32) if want_dh0 else None
        _chunk_grads[grid](u, delta, A, B, C, dy, entering, carries, du, ddelta, dA, dB, dC,
                           du if dh0 is None else dh0, dim, length, n_state, n_chunks, HAS_DH0=want_dh0, **meta)
        grads = [g.to(dtype) for g, dtype in zip((du, ddelta, dA, dB, dC), ctx.dtypes)]
        return (*grads, None if dh0 is None else dh0.to(ctx.dtypes[5]), None, None)


def scan_triton(u, delta, A, B, C, reverse: bool = False, h0=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``reference.scan_reference``; any float dtype in, fp32 out; autograd gives
    the gradients of u, delta, A, B, C and h0 (in their dtypes).

    ``CHUNK`` is read at each call, so that the interpreter tests can set a small power of two and
    cross several chunk boundaries at tiny L.
    """
    # A sequence shorter than a chunk gets a tile just long enough: no scan steps over padding
    # (streaming calls of a few tokens, and the interpreter, which scans element by element).
    chunk = min(CHUNK, triton.next_power_of_2(u.shape[-1]))
    return SelectiveScanTriton.apply(u, delta, A, B, C, h0, reverse, chunk)


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
