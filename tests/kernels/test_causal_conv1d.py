"""causal_conv1d (depthwise, causal, optionally reversed): every backend against the reference."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from effviz.kernels import available_backends, causal_conv1d
from effviz.kernels.causal_conv1d import IMPLS

BACKENDS = [b for b in available_backends() if b in IMPLS]
FAST_BACKENDS = [b for b in BACKENDS if b != "reference"]
TOLERANCE = {  # (rtol, atol), DESIGN.md §4
    torch.float32: (6e-4, 2e-3),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (3e-2, 5e-2),
}
# L: one step, shorter than / equal to / just past K=4, odd, and past one triton L-block (128).
LENGTHS = [1, 3, 4, 5, 17, 130]
TAPS = [1, 2, 4]
BATCH, DIM = 2, 6


def make_inputs(length, taps, dtype=torch.float32, dim=DIM, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, dim, length, generator=gen).to(dtype)
    weight = torch.randn(dim, taps, generator=gen).to(dtype)
    bias = torch.randn(dim, generator=gen).to(dtype)
    return x, weight, bias


def expected(x, weight, bias, activation, reverse):
    """The fp32 reference on the same (possibly low-precision) inputs upcast."""
    bias = None if bias is None else bias.float()
    return causal_conv1d(x.float(), weight.float(), bias, activation, reverse, backend="reference")


def definition(x, weight, bias, activation, reverse):
    """The op as the brief defines it, flips and all, independent of every backend."""
    if reverse:
        return definition(x.flip(-1), weight, bias, activation, False).flip(-1)
    taps = weight.shape[1]
    y = F.conv1d(F.pad(x, (taps - 1, 0)), weight[:, None, :], bias, groups=x.shape[1])
    return F.silu(y) if activation == "silu" else y


@pytest.mark.parametrize("length, taps, use_bias, activation, reverse", list(itertools.product(
    LENGTHS, TAPS, [True, False], [None, "silu"], [False, True])))
def test_reference_matches_definition(length, taps, use_bias, activation, reverse):
    x, weight, bias = make_inputs(length, taps)
    bias = bias if use_bias else None
    got = causal_conv1d(x, weight, bias, activation, reverse, backend="reference")
    torch.testing.assert_close(got, definition(x, weight, bias, activation, reverse))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("length, taps, use_bias, activation, reverse", list(itertools.product(
    LENGTHS, TAPS, [True, False], [None, "silu"], [False, True])))
def test_fp32_matches_reference(backend, length, taps, use_bias, activation, reverse):
    x, weight, bias = make_inputs(length, taps)
    bias = bias if use_bias else None
    got = causal_conv1d(x, weight, bias, activation, reverse, backend=backend)
    assert got.shape == x.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected(x, weight, bias, activation, reverse), rtol=6e-4, atol=2e-3)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
# The Triton interpreter evaluates exp in numpy, which warns where it saturates to inf (as on GPU).
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_silu_over_a_wide_range(backend):
    """Pre-activations from about -200 to 200: the SiLU's exp saturating at both ends."""
    x = torch.linspace(-50, 50, 3 * 37).reshape(1, 3, 37)
    weight, bias = torch.full((3, 4), 1.0), torch.tensor([-5.0, 0.0, 5.0])
    got = causal_conv1d(x, weight, bias, "silu", False, backend=backend)
    torch.testing.assert_close(got, definition(x, weight, bias, "silu", False), rtol=6e-4, atol=2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("length, reverse", [(1, False), (17, True), (130, False)])
@pytest.mark.parametrize("weight_fp32", [False, True])
def test_low_precision_matches_reference(backend, dtype, length, reverse, weight_fp32):
    """Vim may keep conv weights in fp32 while activations are fp16/bf16."""
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton CPU interpreter has no bf16 arithmetic")
    x, weight, bias = make_inputs(length, 4, dtype)
    if weight_fp32:
        weight, bias = weight.float(), bias.float()
    got = causal_conv1d(x, weight, bias, "silu", reverse, backend=backend)
    assert got.dtype == dtype
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), expected(x, weight, bias, "silu", reverse), rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_strided_input_and_channel_blocks(backend, reverse):
    """x as Vim produces it, (batch, L, D) transposed to (batch, D, L), with D spanning several
    triton channel blocks; and a weight that is a non-contiguous view."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(BATCH, 130, 40, generator=gen).transpose(1, 2)
    weight = torch.randn(4, 40, generator=gen).t()
    bias = torch.randn(40, generator=gen)
    got = causal_conv1d(x, weight, bias, "silu", reverse, backend=backend)
    want = expected(x.contiguous(), weight.contiguous(), bias, "silu", reverse)
    torch.testing.assert_close(got, want, rtol=6e-4, atol=2e-3)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_torch_backend_gradients_match_reference(reverse, activation):
    x, weight, bias = make_inputs(9, 4, seed=5)
    grad_y = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    grads = {}
    for backend in ("reference", "torch"):
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        y = causal_conv1d(*leaves, activation, reverse, backend=backend)
        (y * grad_y).sum().backward()
        grads[backend] = [t.grad for t in leaves]
    for got, want in zip(grads["torch"], grads["reference"]):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=6e-4, atol=2e-3)


def test_default_backend_with_gradients_is_torch():
    x, weight, bias = make_inputs(5, 4)
    x.requires_grad_()
    causal_conv1d(x, weight, bias, "silu").sum().backward()
    assert x.grad is not None and x.grad.abs().max() > 0


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton not available")
def test_triton_refuses_inputs_that_need_gradients():
    x, weight, _ = make_inputs(5, 4)
    with pytest.raises(ValueError, match="inference-only"):
        causal_conv1d(x, weight.requires_grad_(), backend="triton")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(x=torch.zeros(6, 5), weight=torch.ones(6, 4)), "x"),
        (dict(x=torch.zeros(2, 6, 5, dtype=torch.int64), weight=torch.ones(6, 4)), "x"),
        (dict(x=torch.zeros(2, 6, 5), weight=torch.ones(5, 4)), "weight"),
        (dict(x=torch.zeros(2, 6, 5), weight=torch.ones(6, 1, 4)), "weight"),
        (dict(x=torch.zeros(2, 6, 5), weight=torch.ones(6, 0)), "weight"),
        (dict(x=torch.zeros(2, 6, 5), weight=torch.ones(6, 4), bias=torch.ones(5)), "bias"),
        (dict(x=torch.zeros(2, 6, 5), weight=torch.ones(6, 4), activation="relu"), "activation"),
        (dict(x=torch.zeros(2, 6, 5), weight=torch.ones(6, 4), activation=True), "activation"),
        (dict(x=torch.zeros(2, 6, 5), weight=torch.ones(6, 4), backend="fast"), "backend"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        causal_conv1d(**kwargs)


@pytest.mark.parametrize("reverse", [False, True])
def test_float64_stays_float64_by_default(reverse):
    """fp64 inputs are computed in fp64 (effviz.inspect's exactness checks rely on it), on the
    default backend and the reference alike, matching the definition far below fp32's resolution."""
    x, weight, bias = make_inputs(17, 4, torch.float64)
    want = definition(x, weight, bias, "silu", reverse)
    for backend in (None, "reference"):
        out = causal_conv1d(x, weight, bias, "silu", reverse, backend=backend)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
