"""rms_norm (fused residual add + RMSNorm): every backend against the reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from effviz.kernels import available_backends, rms_norm
from effviz.kernels.rms_norm import IMPLS

BACKENDS = [b for b in available_backends() if b in IMPLS]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOLERANCE = {  # (rtol, atol), DESIGN.md §4
    torch.float32: (6e-4, 2e-3),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (3e-2, 5e-2),
}
# 2-D and 3-D inputs; a single row; D of 1, odd, and not a power of two; enough rows for
# several triton row blocks at D=40 (64 rows per block).
SHAPES = [(1, 8), (7, 33), (2, 5, 24), (3, 50, 40), (4, 1)]


def skip_unsupported(backend: str, dtype: torch.dtype) -> None:
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton CPU interpreter has no bf16 arithmetic")


def make_inputs(shape, dtype, residual_dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(dtype)
    weight = (1 + 0.5 * torch.randn(shape[-1], generator=gen)).to(dtype)
    residual = None if residual_dtype is None else (3 * torch.randn(shape, generator=gen)).to(residual_dtype)
    return x, weight, residual


def expected(x, weight, residual, eps, residual_in_fp32):
    """The fp32 reference on the same (possibly low-precision) inputs upcast."""
    upcast = None if residual is None else residual.float()
    return rms_norm(x.float(), weight.float(), upcast, eps, residual_in_fp32, backend="reference")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("residual_kind", ["none", "fp32", "same"])
@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_matches_reference(backend, dtype, shape, residual_kind, residual_in_fp32):
    skip_unsupported(backend, dtype)
    residual_dtype = {"none": None, "fp32": torch.float32, "same": dtype}[residual_kind]
    x, weight, residual = make_inputs(shape, dtype, residual_dtype)
    out, new_residual = rms_norm(x, weight, residual, 1e-5, residual_in_fp32, backend=backend)
    want_out, want_residual = expected(x, weight, residual, 1e-5, residual_in_fp32)

    assert out.shape == x.shape and out.dtype == dtype
    assert new_residual.shape == x.shape
    assert new_residual.dtype == (torch.float32 if residual_in_fp32 else dtype)
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), want_out, rtol=rtol, atol=atol)
    torch.testing.assert_close(new_residual.float(), want_residual, rtol=rtol, atol=atol)


def test_reference_is_residual_add_then_rms_norm():
    """Anchor the reference to torch's own RMSNorm on the summed stream."""
    x, weight, residual = make_inputs((2, 9, 48), torch.float32, torch.float32)
    out, new_residual = rms_norm(x, weight, residual, eps=1e-3, backend="reference")
    torch.testing.assert_close(new_residual, x + residual)
    torch.testing.assert_close(out, F.rms_norm(x + residual, (48,), weight, eps=1e-3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_eps_is_used(backend):
    """A near-zero row is dominated by eps, so a wrong eps (or none) shows up clearly."""
    x = torch.full((3, 16), 1e-3)
    weight = torch.ones(16)
    out, _ = rms_norm(x, weight, eps=1e-2, backend=backend)
    torch.testing.assert_close(out, x / (1e-6 + 1e-2) ** 0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs(backend):
    """Rows with padding between them (a slice of a wider tensor) and a transposed residual."""
    gen = torch.Generator().manual_seed(1)
    wide = torch.randn(2, 6, 29, generator=gen)
    x = wide[:, :, :24]
    residual = torch.randn(2, 24, 6, generator=gen).transpose(1, 2)
    weight = torch.randn(24, generator=gen)
    out, new_residual = rms_norm(x, weight, residual, backend=backend)
    want_out, want_residual = expected(x.contiguous(), weight, residual.contiguous(), 1e-5, True)
    torch.testing.assert_close(out, want_out, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(new_residual, want_residual)


@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_torch_backend_gradients_match_reference(residual_in_fp32):
    """Gradients reach x, weight and residual through both outputs, as in a Vim block."""
    x, weight, residual = make_inputs((2, 7, 20), torch.float32, torch.float32, seed=3)
    gen = torch.Generator().manual_seed(4)
    grad_out, grad_residual = torch.randn(2, 7, 20, generator=gen), torch.randn(2, 7, 20, generator=gen)
    grads = {}
    for backend in ("reference", "torch"):
        leaves = [t.clone().requires_grad_() for t in (x, weight, residual)]
        out, new_residual = rms_norm(*leaves, 1e-5, residual_in_fp32, backend=backend)
        ((out * grad_out).sum() + (new_residual * grad_residual).sum()).backward()
        grads[backend] = [t.grad for t in leaves]
    for got, want in zip(grads["torch"], grads["reference"]):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=6e-4, atol=2e-3)


def test_default_backend_with_gradients_is_torch():
    x = torch.randn(3, 8, requires_grad=True)
    out, _ = rms_norm(x, torch.ones(8))
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton not available")
def test_triton_refuses_inputs_that_need_gradients():
    x = torch.randn(3, 8, requires_grad=True)
    with pytest.raises(ValueError, match="inference-only"):
        rms_norm(x, torch.ones(8), backend="triton")


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton not available")
def test_triton_refuses_rows_too_long_for_registers():
    from effviz.kernels.rms_norm.triton_backend import MAX_ROW

    with pytest.raises(ValueError, match="x: .*D must be"):
        rms_norm(torch.zeros(1, MAX_ROW + 1), torch.ones(MAX_ROW + 1), backend="triton")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(x=[1.0, 2.0], weight=torch.ones(2)), "x"),
        (dict(x=torch.tensor(1.0), weight=torch.ones(1)), "x"),
        (dict(x=torch.zeros(3, 0), weight=torch.ones(0)), "x"),
        (dict(x=torch.zeros(3, 4, dtype=torch.int64), weight=torch.ones(4)), "x"),
        (dict(x=torch.zeros(3, 4), weight=torch.ones(5)), "weight"),
        (dict(x=torch.zeros(3, 4), weight=torch.ones(1, 4)), "weight"),
        (dict(x=torch.zeros(3, 4), weight=torch.ones(4), residual=torch.zeros(4, 3)), "residual"),
        (dict(x=torch.zeros(3, 4), weight=torch.ones(4), residual=torch.zeros(3, 4).int()), "residual"),
        (dict(x=torch.zeros(3, 4), weight=torch.ones(4), eps=-1.0), "eps"),
        (dict(x=torch.zeros(3, 4), weight=torch.ones(4), eps=float("nan")), "eps"),
        (dict(x=torch.zeros(3, 4), weight=torch.ones(4), backend="cuda"), "backend"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        rms_norm(**kwargs)
