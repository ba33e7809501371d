"""retention: every form and backend against the readable reference (DESIGN.md §4 tolerances)."""
import math

import pytest
import torch

from effviz.kernels import available_backends, retention
from effviz.kernels.retention import reference, torch_backend

TOLERANCES = {  # (rtol, atol)
    torch.float32: (6e-4, 2e-3),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (3e-2, 5e-2),
}
MODES = ("parallel", "recurrent", "chunk")
# One head that forgets fast and one that remembers ~1000 tokens: the two extremes of decay.
GAMMAS = (0.5, 0.999)

needs_triton = pytest.mark.skipif("triton" not in available_backends(), reason="triton not importable")


def make_inputs(batch, length, dk, dv, gammas=GAMMAS, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    heads = len(gammas)
    # Keys scaled as the model scales them, so outputs stay O(sqrt(tokens remembered)).
    q = torch.randn(batch, heads, length, dk, generator=gen).to(dtype)
    k = (torch.randn(batch, heads, length, dk, generator=gen) / math.sqrt(dk)).to(dtype)
    v = torch.randn(batch, heads, length, dv, generator=gen).to(dtype)
    return q, k, v, torch.tensor(gammas)


def assert_matches_reference(out, q, k, v, gamma):
    """Compare with the fp32 reference run on the same (possibly low-precision) inputs, upcast."""
    assert out.dtype == v.dtype
    want = reference.retention(q.float(), k.float(), v.float(), gamma.float())
    rtol, atol = TOLERANCES[out.dtype]
    torch.testing.assert_close(out.float(), want, rtol=rtol, atol=atol)


# --- the three forms of the torch backend ---------------------------------------------------


@pytest.mark.parametrize("length", [1, 7, 63, 64, 65, 130])
def test_modes_agree_with_each_other_and_reference(length):
    q, k, v, gamma = make_inputs(batch=2, length=length, dk=8, dv=6)
    outs = {mode: retention(q, k, v, gamma, mode=mode, backend="torch") for mode in MODES}
    for mode, out in outs.items():
        assert out.shape == (2, 2, length, 6), mode
        assert_matches_reference(out, q, k, v, gamma)
    rtol, atol = TOLERANCES[torch.float32]
    torch.testing.assert_close(outs["chunk"], outs["recurrent"], rtol=rtol, atol=atol)
    torch.testing.assert_close(outs["chunk"], outs["parallel"], rtol=rtol, atol=atol)


@pytest.mark.parametrize("length", [15, 16, 17, 50])
def test_torch_chunk_with_small_chunks(length):
    q, k, v, gamma = make_inputs(batch=2, length=length, dk=5, dv=7, gammas=(0.5, 0.9, 0.999))
    assert_matches_reference(torch_backend.retention_chunk(q, k, v, gamma, chunk_size=16), q, k, v, gamma)


def test_long_sequence_stays_finite():
    # γ^2048 underflows and γ^-2048 overflows: a form that exponentiated whole-sequence
    # distances (or divided by cumulative decays) would give zeros or NaN here.
    q, k, v, gamma = make_inputs(batch=1, length=2048, dk=4, dv=4)
    out = retention(q, k, v, gamma, mode="chunk", backend="torch")
    assert torch.isfinite(out).all()
    assert_matches_reference(out, q, k, v, gamma)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_low_precision_inputs(mode, dtype):
    q, k, v, gamma = make_inputs(batch=2, length=70, dk=8, dv=8, dtype=dtype)
    out = retention(q, k, v, gamma, mode=mode, backend="torch")
    assert_matches_reference(out, q, k, v, gamma)


@pytest.mark.parametrize("mode", MODES)
def test_empty_sequence(mode):
    q, k, v, gamma = make_inputs(batch=2, length=0, dk=4, dv=3)
    assert retention(q, k, v, gamma, mode=mode, backend="torch").shape == (2, 2, 0, 3)


def test_output_follows_v_dtype():
    q, k, v, gamma = make_inputs(batch=1, length=9, dk=4, dv=4)
    out = retention(q, k, v.half(), gamma, backend="torch")
    assert out.dtype == torch.float16


def test_default_backend_on_cpu_matches_reference():
    q, k, v, gamma = make_inputs(batch=2, length=65, dk=4, dv=4)
    assert_matches_reference(retention(q, k, v, gamma), q, k, v, gamma)


@pytest.mark.parametrize("mode", MODES)
def test_torch_gradients_match_reference(mode):
    inputs = make_inputs(batch=2, length=70, dk=4, dv=3, gammas=(0.5, 0.95))
    weights = torch.randn(2, 2, 70, 3, generator=torch.Generator().manual_seed(1))

    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in inputs]
        (fn(*leaves) * weights).sum().backward()
        return [t.grad for t in leaves]

    # backend=None with gradients needed must pick the torch backend.
    got = grads(lambda q, k, v, g: retention(q, k, v, g, mode=mode))
    want = grads(reference.retention)
    for name, g_got, g_want in zip(("q", "k", "v", "gamma"), got, want):
        torch.testing.assert_close(g_got, g_want, rtol=6e-4, atol=2e-3, msg=lambda m: f"d{name}: {m}")


# --- triton (under the interpreter on CPU) -----------------------------------------------------


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("length, dk, dv", [(1, 16, 16), (17, 5, 12), (40, 16, 3)])
def test_triton_chunk_kernel(length, dk, dv, dtype):
    from effviz.kernels.retention import triton_backend

    q, k, v, gamma = make_inputs(batch=2, length=length, dk=dk, dv=dv, dtype=dtype)
    out = triton_backend.retention_chunk(q, k, v, gamma, chunk_size=16)
    assert_matches_reference(out, q, k, v, gamma)


@needs_triton
def test_triton_strided_inputs_and_several_dv_blocks(monkeypatch):
    from effviz.kernels.retention import triton_backend

    monkeypatch.setattr(triton_backend, "MAX_BLOCK_DV", 16)  # dv 24 -> two programs per head
    gen = torch.Generator().manual_seed(2)
    # Three different layouts, so a stride mixed up between q, k and v shows: q as the model's
    # projections give it ((batch, T, heads, d) transposed), k contiguous, v a slice of a wider tensor.
    q = torch.randn(2, 33, 2, 8, generator=gen).transpose(1, 2)
    k = torch.randn(2, 2, 33, 8, generator=gen)
    v = torch.randn(2, 2, 33, 40, generator=gen)[..., 8:32]
    gamma = torch.tensor(GAMMAS)
    out = triton_backend.retention_chunk(q, k, v, gamma, chunk_size=16)
    assert_matches_reference(out, q, k, v, gamma)


@needs_triton
def test_triton_through_public_api():
    q, k, v, gamma = make_inputs(batch=1, length=20, dk=4, dv=4)
    assert_matches_reference(retention(q, k, v, gamma, backend="triton"), q, k, v, gamma)


@needs_triton
def test_triton_rejects_other_modes_and_gradients():
    q, k, v, gamma = make_inputs(batch=1, length=4, dk=4, dv=4)
    with pytest.raises(ValueError, match="chunk"):
        retention(q, k, v, gamma, mode="recurrent", backend="triton")
    with pytest.raises(ValueError, match="inference-only"):
        retention(q.requires_grad_(), k, v, gamma, backend="triton")
    from effviz.kernels.retention import triton_backend

    with pytest.raises(ValueError, match="chunk_size"):
        triton_backend.retention_chunk(q, k, v, gamma, chunk_size=8)


@needs_triton
def test_env_override_to_triton_falls_back_for_non_chunk_modes(monkeypatch):
    monkeypatch.setenv("EFFVIZ_BACKEND", "triton")
    q, k, v, gamma = make_inputs(batch=1, length=5, dk=4, dv=4)
    assert_matches_reference(retention(q, k, v, gamma, mode="parallel"), q, k, v, gamma)


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, name",
    [
        (lambda q, k, v, g: (q[0], k, v, g), "q"),
        (lambda q, k, v, g: (q.int(), k, v, g), "q"),
        (lambda q, k, v, g: (q, k[..., :3], v, g), "k"),
        (lambda q, k, v, g: (q, k, v[:, :, :4], g), "v"),
        (lambda q, k, v, g: (q, k, v, g[:1]), "gamma"),
        (lambda q, k, v, g: (q, k, v, torch.tensor([0.5, 1.0])), "gamma"),
        (lambda q, k, v, g: (q, k, v, torch.tensor([0.0, 0.5])), "gamma"),
        (lambda q, k, v, g: (q, k, v, torch.tensor([0.5, float("nan")])), "gamma"),
    ],
)
def test_bad_inputs_name_the_argument(change, name):
    args = change(*make_inputs(batch=1, length=5, dk=4, dv=4))
    with pytest.raises(ValueError, match=name):
        retention(*args)


def test_bad_mode_and_backend():
    q, k, v, gamma = make_inputs(batch=1, length=5, dk=4, dv=4)
    with pytest.raises(ValueError, match="mode"):
        retention(q, k, v, gamma, mode="chunkwise")
    with pytest.raises(ValueError, match="no 'cpu' implementation"):
        retention(q, k, v, gamma, backend="cpu")
    with pytest.raises(ValueError, match="unknown backend"):
        retention(q, k, v, gamma, backend="cuda")


@pytest.mark.parametrize("mode", MODES)
def test_float64_stays_float64_by_default(mode):
    """fp64 inputs are computed in fp64 (effviz.inspect's exactness checks rely on it): the
    default backend matches the fp64 reference far below fp32's resolution."""
    q, k, v, gamma = (t.double() for t in make_inputs(1, 70, 8, 8))
    out = retention(q, k, v, gamma, mode=mode)
    assert out.dtype == torch.float64
    want = reference.retention(q, k, v, gamma)
    assert want.dtype == torch.float64
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
