"""causal_conv1d streaming: chunked with carried state == one pass, on every backend."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from effviz.kernels import available_backends, causal_conv1d
from effviz.kernels.causal_conv1d import IMPLS

BACKENDS = [b for b in available_backends() if b in IMPLS]
RTOL, ATOL = 6e-4, 2e-3  # fp32, DESIGN.md §4
BATCH, DIM = 2, 5
# The triton interpreter is slow: it gets a shorter sequence, still crossing all chunk sizes.
LENGTH = {"triton": 70}


def make_inputs(length, taps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, DIM, length, generator=gen)
    weight = torch.randn(DIM, taps, generator=gen)
    bias = torch.randn(DIM, generator=gen)
    state = torch.randn(BATCH, DIM, taps - 1, generator=gen)
    return x, weight, bias, state


def definition(x, weight, bias, state):
    """The brief's definition: a zero-padded causal conv over [state, x], x's steps kept."""
    taps = weight.shape[1]
    full = torch.cat([state, x], dim=-1)
    y = F.conv1d(F.pad(full, (taps - 1, 0)), weight[:, None, :], bias, groups=DIM)
    return F.silu(y)[..., state.shape[-1]:], full[..., full.shape[-1] - (taps - 1):]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk", [1, 7, 64, 45])
@pytest.mark.parametrize("taps", [1, 4])
def test_chunks_match_one_pass(backend, chunk, taps):
    x, weight, bias, state = make_inputs(LENGTH.get(backend, 150), taps)
    whole, whole_state = causal_conv1d(x, weight, bias, "silu", backend=backend, initial_state=state,
                                       return_final_state=True)
    outs = []
    for start in range(0, x.shape[-1], chunk):
        y, state = causal_conv1d(x[..., start:start + chunk], weight, bias, "silu", backend=backend,
                                 initial_state=state, return_final_state=True)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, dim=-1), whole, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(state, whole_state, rtol=0, atol=0)  # the state is copied inputs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length, taps", [(1, 4), (2, 4), (3, 4), (9, 4), (9, 2), (9, 1)])
def test_with_state_matches_definition(backend, length, taps):
    """Lengths below, at and past K-1, where the state feeds some taps of every step or none."""
    x, weight, bias, state = make_inputs(length, taps, seed=1)
    y, final = causal_conv1d(x, weight, bias, "silu", backend=backend, initial_state=state,
                             return_final_state=True)
    want_y, want_final = definition(x, weight, bias, state)
    assert final.shape == (BATCH, DIM, taps - 1) and final.dtype == x.dtype
    torch.testing.assert_close(y, want_y, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(final, want_final, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_state_is_zero_state(backend):
    x, weight, bias, state = make_inputs(9, 4)
    y, final = causal_conv1d(x, weight, bias, backend=backend, return_final_state=True)
    torch.testing.assert_close(y, causal_conv1d(x, weight, bias, backend=backend, initial_state=state * 0))
    torch.testing.assert_close(final, x[..., -3:], rtol=0, atol=0)
    y, final = causal_conv1d(x[..., :2], weight, bias, backend=backend, return_final_state=True)
    torch.testing.assert_close(final, F.pad(x[..., :2], (1, 0)), rtol=0, atol=0)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
def test_half_precision_state_follows_x(backend):
    x, weight, bias, state = make_inputs(9, 4)
    y, final = causal_conv1d(x.half(), weight, bias, backend=backend, initial_state=state.half(),
                             return_final_state=True)
    assert y.dtype == final.dtype == torch.float16
    want_y, _ = causal_conv1d(x.half().float(), weight, bias, backend="reference",
                              initial_state=state.half().float(), return_final_state=True)
    torch.testing.assert_close(y.float(), want_y, rtol=3e-3, atol=5e-3)


def test_torch_gradients_reach_the_state():
    x, weight, bias, state = make_inputs(6, 4, seed=2)
    grad_y = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    grads = {}
    for backend in ("reference", "torch"):
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias, state)]
        y = causal_conv1d(*leaves[:3], "silu", backend=backend, initial_state=leaves[3])
        (y * grad_y).sum().backward()
        grads[backend] = [t.grad for t in leaves]
    for got, want in zip(grads["torch"], grads["reference"]):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(initial_state=torch.zeros(2, 5, 4)), "initial_state"),  # K-1 = 3 steps, not 4
        (dict(initial_state=torch.zeros(1, 5, 3)), "initial_state"),
        (dict(initial_state=torch.zeros(2, 4, 3)), "initial_state"),
        (dict(initial_state=torch.zeros(2, 5, 3, dtype=torch.int64)), "initial_state"),
        (dict(initial_state=torch.zeros(2, 5, 3), reverse=True), "forward only"),
        (dict(return_final_state=True, reverse=True), "forward only"),
    ],
)
def test_bad_state_arguments(kwargs, match):
    x, weight, _, _ = make_inputs(6, 4)
    with pytest.raises(ValueError, match=match):
        causal_conv1d(x, weight, **kwargs)
