"""retention streaming: chunked with carried state == one pass, in every mode and backend."""
from __future__ import annotations

import math

import pytest
import torch

from effviz.kernels import available_backends, retention
from effviz.kernels.retention import reference

RTOL, ATOL = 6e-4, 2e-3  # fp32, DESIGN.md §4
MODES = ("parallel", "recurrent", "chunk")
GAMMAS = (0.5, 0.97)
# (backend, mode) pairs that exist; the triton kernel is the chunk form only.
CASES = [(b, m) for b in ("reference", "torch") for m in MODES]
if "cpu" in available_backends():
    CASES.append(("cpu", "recurrent"))
if "triton" in available_backends():
    CASES.append(("triton", "chunk"))
# The triton interpreter is slow (and its chunks are 64 tokens): a shorter sequence, still past 64.
LENGTH = {"triton": 70}
needs_triton = pytest.mark.skipif("triton" not in available_backends(), reason="triton not importable")


def make_inputs(length, batch=2, dk=4, dv=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    heads = len(GAMMAS)
    q = torch.randn(batch, heads, length, dk, generator=gen)
    k = torch.randn(batch, heads, length, dk, generator=gen) / math.sqrt(dk)
    v = torch.randn(batch, heads, length, dv, generator=gen)
    state = torch.randn(batch, heads, dk, dv, generator=gen)
    return q, k, v, torch.tensor(GAMMAS), state


def recurrence(q, k, v, gamma, state):
    """The definition token by token, in fp64: S_t = γ S_{t−1} + k_tᵀ v_t, o_t = q_t S_t."""
    q, k, v, gamma, state = (t.double() for t in (q, k, v, gamma, state))
    outs = []
    for t in range(q.shape[-2]):
        state = gamma[:, None, None] * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append(q[:, :, t, None, :] @ state)
    out = torch.cat(outs, dim=-2) if outs else v.new_zeros(v.shape)
    return out.float(), state.float()


@pytest.mark.parametrize("backend, mode", CASES)
@pytest.mark.parametrize("chunk", [1, 7, 64, 45])
def test_chunks_match_one_pass(backend, mode, chunk):
    q, k, v, gamma, state = make_inputs(LENGTH.get(backend, 150))
    whole, whole_state = retention(q, k, v, gamma, mode, backend, initial_state=state, return_state=True)
    outs = []
    for start in range(0, q.shape[-2], chunk):
        part = slice(start, start + chunk)
        out, state = retention(q[:, :, part], k[:, :, part], v[:, :, part], gamma, mode, backend,
                               initial_state=state, return_state=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=-2), whole, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(state, whole_state, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend, mode", CASES)
@pytest.mark.parametrize("length", [0, 1, 5, 70])
def test_with_state_matches_recurrence(backend, mode, length):
    """One pass from a given state against the recurrence; 70 crosses a 64-token chunk and ends
    in a short one, whose padding must not decay the final state."""
    q, k, v, gamma, state = make_inputs(length, seed=1)
    out, final = retention(q, k, v, gamma, mode, backend, initial_state=state, return_state=True)
    want_out, want_final = recurrence(q, k, v, gamma, state)
    assert out.shape == v.shape and final.shape == state.shape and final.dtype == torch.float32
    torch.testing.assert_close(out, want_out, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(final, want_final, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend, mode", CASES)
def test_no_state_is_zero_state(backend, mode):
    q, k, v, gamma, state = make_inputs(20)
    out, final = retention(q, k, v, gamma, mode, backend, return_state=True)
    torch.testing.assert_close(out, retention(q, k, v, gamma, mode, backend))
    torch.testing.assert_close(out, retention(q, k, v, gamma, mode, backend, initial_state=state * 0))
    torch.testing.assert_close(final, recurrence(q, k, v, gamma, state * 0)[1], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mode", MODES)
def test_float64_state_stays_float64(mode):
    q, k, v, gamma, state = (t.double() for t in make_inputs(9))
    out, final = retention(q, k, v, gamma, mode, initial_state=state, return_state=True)
    want_out, want_final = reference.retention(q, k, v, gamma, initial_state=state, return_state=True)
    assert final.dtype == torch.float64
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, want_final, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("with_state", [False, True])
def test_torch_gradients_match_reference(mode, with_state):
    """Training runs without a state; with one, gradients reach the state too."""
    q, k, v, gamma, state = make_inputs(20, seed=2)
    inputs = (q, k, v, gamma, state) if with_state else (q, k, v, gamma)
    weights = torch.randn(v.shape, generator=torch.Generator().manual_seed(3))
    weights_state = torch.randn(state.shape, generator=torch.Generator().manual_seed(4))

    def grads(backend):
        leaves = [t.clone().requires_grad_() for t in inputs]
        initial = leaves[4] if with_state else None
        out, final = retention(*leaves[:4], mode, backend, initial_state=initial, return_state=True)
        ((out * weights).sum() + (final * weights_state).sum()).backward()
        return [t.grad for t in leaves]

    for got, want in zip(grads("torch"), grads("reference")):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


@needs_triton
def test_triton_small_chunks_with_state():
    """16-token kernel chunks: several per call, and calls that end mid-chunk."""
    from effviz.kernels.retention import triton_backend

    q, k, v, gamma, state = make_inputs(40, dk=16, dv=16, seed=5)
    want_out, want_final = recurrence(q, k, v, gamma, state)
    outs = []
    for part in (slice(0, 7), slice(7, 40)):
        out, state = triton_backend.retention_chunk(q[:, :, part], k[:, :, part], v[:, :, part], gamma,
                                                    chunk_size=16, initial_state=state, return_state=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=-2), want_out, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(state, want_final, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "state, match",
    [
        (torch.zeros(2, 2, 4), "initial_state"),
        (torch.zeros(2, 2, 4, 4), "initial_state"),  # dv is 3
        (torch.zeros(1, 2, 4, 3), "initial_state"),
        (torch.zeros(2, 2, 3, 3), "initial_state"),
        (torch.zeros(2, 2, 4, 3, dtype=torch.int32), "initial_state"),
    ],
)
def test_bad_state_shape(state, match):
    q, k, v, gamma, _ = make_inputs(5)
    with pytest.raises(ValueError, match=match):
        retention(q, k, v, gamma, initial_state=state)


@needs_triton
def test_triton_still_refuses_other_modes_with_state():
    q, k, v, gamma, state = make_inputs(5)
    with pytest.raises(ValueError, match="chunk"):
        retention(q, k, v, gamma, mode="recurrent", backend="triton", initial_state=state, return_state=True)


@pytest.mark.skipif("cpu" not in available_backends(), reason="no C compiler")
def test_cpu_is_the_recurrent_form_only_and_leaves_the_state_alone():
    q, k, v, gamma, state = make_inputs(5)
    with pytest.raises(ValueError, match="recurrent"):
        retention(q, k, v, gamma, mode="chunk", backend="cpu", initial_state=state)
    before = state.clone()
    retention(q, k, v, gamma, mode="recurrent", backend="cpu", initial_state=state, return_state=True)
    torch.testing.assert_close(state, before, rtol=0, atol=0)  # the kernel updates a copy
