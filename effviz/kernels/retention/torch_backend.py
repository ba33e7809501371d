"""Retention in pure PyTorch, in its three equivalent forms; any device, autograd-capable.

- parallel: the masked (T, T) matmul. O(T²) time and memory; the form used for training.
- recurrent: a state S (dk, dv) per head, S ← γS + k_nᵀv_n, o_n = q_n S. O(T) but one tiny step
  per token, so Python-loop bound; it is the form used for token-by-token decoding.
- chunk: the sequence cut into chunks of C tokens. Inside a chunk the parallel form runs as one
  batched matmul; across chunks a state carries the past. Only decays γ^j with 0 ≤ j ≤ C are
  ever formed, so nothing under- or overflows however long the sequence is.

Every form takes an ``initial_state`` S₋₁ (batch, heads, dk, dv) and, with ``return_state``,
also returns S_{T−1} (see ``reference.retention``); without them the forms run as before.

All math is fp32 whatever the input dtype, except fp64 inputs, which stay fp64 (the exactness
checks of ``effviz.inspect`` compare in fp64); results are in the math's dtype (the caller casts).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_SIZE = 64


def _causal_decay(log_gamma: torch.Tensor, size: int) -> torch.Tensor:
    """(heads, size, size) mask D[n, m] = γ^(n−m) for n ≥ m, else 0."""
    pos = torch.arange(size, device=log_gamma.device)
    distance = pos[:, None] - pos[None, :]
    # Exponentiate only non-negative distances: γ^(negative) can overflow, and an inf in a
    # masked-out entry still poisons the gradient.
    decay = torch.exp(distance.clamp(min=0) * log_gamma[:, None, None])
    return torch.where(distance >= 0, decay, 0.0)


def _compute(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v in the math's dtype: fp64 when q is fp64, else fp32."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _start_state(q: torch.Tensor, v: torch.Tensor, initial_state: torch.Tensor | None) -> torch.Tensor:
    """S₋₁ in the math's dtype: the given state, or zeros."""
    if initial_state is None:
        return q.new_zeros(q.shape[0], q.shape[1], q.shape[-1], v.shape[-1])
    return initial_state.to(q.dtype)


def _advance(state: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_gamma: torch.Tensor) -> torch.Tensor:
    """The state after the n tokens of k, v: γ^n S + Σ_j γ^(n−1−j) k_jᵀ v_j (no negative powers)."""
    length = k.shape[-2]
    to_end = torch.exp((length - 1 - torch.arange(length, device=k.device)) * log_gamma[:, None])
    return torch.exp(length * log_gamma)[:, None, None] * state + (k * to_end[..., None]).transpose(-1, -2) @ v


def retention_parallel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor,
    initial_state: torch.Tensor | None = None, return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    q, k, v = _compute(q, k, v)
    log_gamma = gamma.to(q.dtype).log()
    length = q.shape[-2]
    out = (q @ k.transpose(-1, -2) * _causal_decay(log_gamma, length)) @ v
    if initial_state is not None:
        # γ^(n+1) q_n S₋₁: what the state before the sequence adds to token n.
        from_start = torch.exp((torch.arange(length, device=q.device) + 1) * log_gamma[:, None])
        out = out + from_start[..., None] * (q @ initial_state.to(q.dtype))
    if not return_state:
        return out
    return out, _advance(_start_state(q, v, initial_state), k, v, log_gamma)


def retention_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor,
    initial_state: torch.Tensor | None = None, return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    q, k, v = _compute(q, k, v)
    batch, heads, length, dk = q.shape
    decay = gamma.to(q.dtype).view(1, heads, 1, 1)
    state = _start_state(q, v, initial_state)
    out = q.new_empty(batch, heads, length, v.shape[-1])
    for t in range(length):
        # The state is replaced, not updated in place, so autograd keeps every step's state.
        state = torch.addcmul(decay * state, k[:, :, t, :, None], v[:, :, t, None, :])
        out[:, :, t] = (q[:, :, t, None, :] @ state).squeeze(-2)
    return (out, state) if return_state else out


def retention_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor, chunk_size: int = CHUNK_SIZE,
    initial_state: torch.Tensor | None = None, return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise form; ``chunk_size`` is a parameter so tests can cross chunk boundaries cheaply."""
    q, k, v = _compute(q, k, v)
    batch, heads, length, dk = q.shape
    dv = v.shape[-1]
    # The last chunk's real tokens, before padding: the final state advances over these only.
    last_start = (length - 1) // chunk_size * chunk_size if length else 0
    k_last, v_last = k[..., last_start:, :], v[..., last_start:, :]
    # Zero-pad to whole chunks: padded keys and values add nothing to the state, and the
    # padded query rows are cut off at the end.
    pad = -length % chunk_size
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    chunks = (length + pad) // chunk_size
    q = q.reshape(batch, heads, chunks, chunk_size, dk)
    k = k.reshape(batch, heads, chunks, chunk_size, dk)
    v = v.reshape(batch, heads, chunks, chunk_size, dv)

    log_gamma = gamma.to(q.dtype).log()
    pos = torch.arange(chunk_size, device=q.device)
    per_head = log_gamma[:, None]  # (heads, 1)
    intra_decay = _causal_decay(log_gamma, chunk_size)[:, None]  # (heads, 1, C, C)
    # γ^(i+1): from the state before the chunk to token i of the chunk.
    query_decay = torch.exp((pos + 1) * per_head)[:, None, :, None]
    # γ^(C−1−j): from token j to the end of its chunk.
    key_decay = torch.exp((chunk_size - 1 - pos) * per_head)[:, None, :, None]
    # γ^C: across one whole chunk.
    chunk_decay = torch.exp(chunk_size * log_gamma)[:, None, None]

    out = (q @ k.transpose(-1, -2) * intra_decay) @ v

    # What each chunk adds to the state, all chunks at once; then the short scan over chunks.
    chunk_states = (k * key_decay).transpose(-1, -2) @ v  # (batch, heads, chunks, dk, dv)
    state = _start_state(q, v, initial_state)
    states_before = [state]
    for c in range(chunks - 1):
        state = torch.addcmul(chunk_states[:, :, c], chunk_decay, state)
        states_before.append(state)
    out = out + (q * query_decay) @ torch.stack(states_before, dim=2)
    out = out.reshape(batch, heads, chunks * chunk_size, dv)[:, :, :length]
    if not return_state:
        return out
    # Not γ^C S + the padded chunk's state: the padding would decay the state pad steps too far.
    return out, _advance(state, k_last, v_last, log_gamma)


FORMS = {"parallel": retention_parallel, "recurrent": retention_recurrent, "chunk": retention_chunk}
