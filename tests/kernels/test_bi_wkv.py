"""bi_wkv (Vision-RWKV's bidirectional WKV): every backend against the O(T²) reference."""
from __future__ import annotations

import pytest
import torch

from effviz.kernels import available_backends, bi_wkv, native
from effviz.kernels.bi_wkv import IMPLS
from effviz.kernels.bi_wkv.reference import bi_wkv_reference
from effviz.kernels.bi_wkv.torch_backend import bi_wkv_torch

BACKENDS = [b for b in available_backends() if b in IMPLS]
FAST_BACKENDS = [b for b in BACKENDS if b != "reference"]
# Backends quick enough on CPU for longer sequences (the Triton interpreter is ms per step).
CPU_SPEED_BACKENDS = [b for b in FAST_BACKENDS if b != "triton"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOLERANCE = {  # (rtol, atol), DESIGN.md §4
    torch.float32: (6e-4, 2e-3),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (3e-2, 5e-2),
}
# (batch, T, C): a single token, two tokens, odd T, batch > 1; small enough for the interpreter.
SHAPES = [(1, 1, 3), (1, 2, 4), (2, 7, 5), (3, 9, 8)]
# Several C blocks of the cpu kernel (16 channels) with a ragged last one, T not a power of two.
LONGER_SHAPES = [(2, 50, 37), (1, 129, 16), (3, 33, 20)]


def skip_unsupported(backend: str, dtype: torch.dtype) -> None:
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton CPU interpreter has no bf16 arithmetic")


def make_inputs(batch, T, C, dtype=torch.float32, key_scale=1.0, decay_scale=1.0, seed=0):
    """w is drawn around 0, so some channels have negative decay (weights that grow with distance)."""
    gen = torch.Generator().manual_seed(seed)
    w = decay_scale * torch.randn(C, generator=gen)
    u = torch.randn(C, generator=gen)
    k = key_scale * torch.randn(batch, T, C, generator=gen)
    v = torch.randn(batch, T, C, generator=gen)
    return tuple(x.to(dtype) for x in (w, u, k, v))


def expected(w, u, k, v, dtype=torch.float64):
    """The reference on the same (possibly low-precision) inputs, upcast."""
    return bi_wkv_reference(*(x.to(dtype) for x in (w, u, k, v)))


def assert_close(actual, want, dtype):
    rtol, atol = TOLERANCE[dtype]
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.to(want.dtype), want, rtol=rtol, atol=atol)


def test_reference_matches_the_formula_written_out():
    """The reference's softmax form against the sums of the docstring, term by term."""
    w, u, k, v = make_inputs(2, 6, 3, torch.float64, decay_scale=0.5)
    want = torch.empty_like(v)
    for b in range(2):
        for t in range(6):
            for c in range(3):
                weights = torch.stack([
                    torch.exp(u[c] + k[b, i, c]) if i == t else torch.exp(-(abs(t - i) - 1) * w[c] + k[b, i, c])
                    for i in range(6)
                ])
                want[b, t, c] = (weights * v[b, :, c]).sum() / weights.sum()
    torch.testing.assert_close(bi_wkv(*(x.float() for x in (w, u, k, v)), backend="reference").double(), want,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bi_wkv_reference(w, u, k, v), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(backend, dtype, shape):
    skip_unsupported(backend, dtype)
    w, u, k, v = make_inputs(*shape, dtype)
    assert_close(bi_wkv(w, u, k, v, backend=backend), expected(w, u, k, v), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_low_precision_inputs(dtype):
    """fp16/bf16 inputs: fp32 math inside, the output rounded once to the input dtype."""
    w, u, k, v = make_inputs(2, 7, 5, dtype)
    assert_close(bi_wkv(w, u, k, v, backend="reference"), expected(w, u, k, v), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_inputs(backend):
    """float64 is accepted (for gradient checks); fp32-math backends meet the fp32 tolerance."""
    w, u, k, v = make_inputs(2, 7, 5, torch.float64)
    out = bi_wkv(w, u, k, v, backend=backend)
    assert out.dtype == torch.float64
    exact = backend in ("reference", "torch")
    rtol, atol = (1e-12, 1e-12) if exact else TOLERANCE[torch.float32]
    torch.testing.assert_close(out, expected(w, u, k, v), rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", CPU_SPEED_BACKENDS)
@pytest.mark.parametrize("shape", LONGER_SHAPES)
def test_longer_sequences_match_reference(backend, shape):
    w, u, k, v = make_inputs(*shape, decay_scale=0.3)
    assert_close(bi_wkv(w, u, k, v, backend=backend), expected(w, u, k, v), torch.float32)


@pytest.mark.parametrize("backend", [b for b in ("cpu", "torch", "triton") if b in FAST_BACKENDS])
def test_mixed_input_dtypes(backend):
    """Model parameters in fp32 with low-precision activations: the output takes v's dtype."""
    dtype = torch.float16 if backend == "triton" else torch.bfloat16
    w, u, k, v = make_inputs(2, 5, 6)
    k, v = k.to(dtype), v.to(dtype)
    assert_close(bi_wkv(w, u, k, v, backend=backend), expected(w, u, k, v), dtype)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_non_contiguous_inputs(backend):
    w, u, k, v = make_inputs(2, 6, 5)
    k_strided = k.transpose(1, 2).contiguous().transpose(1, 2)
    v_strided = torch.stack([v, -v], dim=-1)[..., 0]
    assert not k_strided.is_contiguous() and not v_strided.is_contiguous()
    assert_close(bi_wkv(w, u, k_strided, v_strided, backend=backend), expected(w, u, k, v), torch.float32)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("key_scale, decay_scale", [(60.0, 1.0), (1.0, 20.0), (60.0, 20.0)])
def test_large_keys_and_decays_stay_finite(backend, key_scale, decay_scale):
    """|k| up to ~180 and |w|·T up to ~400: e^x of either overflows fp32 without max-stabilising."""
    w, u, k, v = make_inputs(2, 9, 8, key_scale=key_scale, decay_scale=decay_scale, seed=1)
    k[0, 0] = 88.0  # e^88 > fp32 max
    k[1, -1] = -88.0
    assert (w > 0).any() and (w < 0).any()
    out = bi_wkv(w, u, k, v, backend=backend)
    assert torch.isfinite(out).all()
    assert_close(out, expected(w, u, k, v), torch.float32)


@pytest.mark.parametrize("backend", CPU_SPEED_BACKENDS)
def test_long_sequence_with_growing_weights(backend):
    """Negative w over T=300: logits reach 300·|w| (beyond exp's fp32 range), compared in float64."""
    w, u, k, v = make_inputs(1, 300, 4, key_scale=10.0)
    w = torch.tensor([-1.0, -0.5, 0.5, 1.0])
    out = bi_wkv(w, u, k, v, backend=backend)
    assert torch.isfinite(out).all()
    assert_close(out, expected(w, u, k, v), torch.float32)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 2, 2), (2, 7, 5)])
@pytest.mark.parametrize("key_scale", [1.0, 30.0])
def test_torch_gradients_match_reference(shape, key_scale):
    w, u, k, v = (x.requires_grad_() for x in make_inputs(*shape, torch.float64, key_scale=key_scale))
    upstream = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    # materialize_grads: at T=1 the torch backend never touches w (its gradient is 0 either way).
    want = torch.autograd.grad(bi_wkv_reference(w, u, k, v), (w, u, k, v), upstream, materialize_grads=True)
    got = torch.autograd.grad(bi_wkv_torch(w, u, k, v), (w, u, k, v), upstream, materialize_grads=True)
    for name, g, r in zip("wukv", got, want):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10, msg=f"gradient of {name}")


def test_torch_gradcheck():
    inputs = tuple(x.requires_grad_() for x in make_inputs(2, 4, 3, torch.float64))
    assert torch.autograd.gradcheck(bi_wkv_torch, inputs)


def test_default_backend_supports_autograd_in_fp32():
    """With grad-requiring inputs the dispatcher must pick a differentiable backend."""
    w, u, k, v = (x.requires_grad_() for x in make_inputs(2, 5, 4, key_scale=30.0))
    bi_wkv(w, u, k, v).square().sum().backward()
    refs = tuple(x.detach().clone().requires_grad_() for x in (w, u, k, v))
    bi_wkv_reference(*refs).square().sum().backward()
    for x, r in zip((w, u, k, v), refs):
        torch.testing.assert_close(x.grad, r.grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("backend", [b for b in ("cpu",) if b in BACKENDS])  # triton has a backward
def test_inference_only_backends_refuse_gradients(backend):
    w, u, k, v = make_inputs(1, 3, 4)
    k.requires_grad_()
    with pytest.raises(ValueError, match="inference-only"):
        bi_wkv(w, u, k, v, backend=backend)
    with torch.no_grad():  # the same call is fine when no graph is recorded
        assert_close(bi_wkv(w, u, k, v, backend=backend), expected(w, u, k.detach(), v), torch.float32)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="native library not built")
def test_cpu_result_does_not_depend_on_thread_count(monkeypatch):
    w, u, k, v = make_inputs(3, 20, 40)  # 9 work units of (batch, 16 channels)
    results = []
    for threads in (1, 2, 5, 64):
        monkeypatch.setattr(native, "num_threads", lambda threads=threads: threads)
        results.append(bi_wkv(w, u, k, v, backend="cpu"))
    for out in results[1:]:
        assert torch.equal(out, results[0])


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton unavailable")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("C", [6, 8])
def test_triton_several_channel_blocks(dtype, C):
    """block_c=4: two programs per batch element, the second ragged when C=6."""
    from effviz.kernels.bi_wkv.triton_backend import bi_wkv_triton

    w, u, k, v = make_inputs(2, 5, C, dtype, key_scale=5.0)
    assert_close(bi_wkv_triton(w, u, k, v, block_c=4), expected(w, u, k, v), dtype)


def test_default_backend_matches_reference():
    w, u, k, v = make_inputs(2, 7, 5)
    assert_close(bi_wkv(w, u, k, v), expected(w, u, k, v), torch.float32)


@pytest.mark.parametrize(
    "change, name",
    [
        (lambda w, u, k, v: (w, u, k[0], v), "k"),
        (lambda w, u, k, v: (w, u, k, v[:, :-1]), "v"),
        (lambda w, u, k, v: (w[:-1], u, k, v), "w"),
        (lambda w, u, k, v: (w, u.reshape(1, -1), k, v), "u"),
        (lambda w, u, k, v: (w, u, k.to(torch.int32), v), "k"),
        (lambda w, u, k, v: (w, u, k, v.to(torch.int64)), "v"),
        (lambda w, u, k, v: (w.tolist(), u, k, v), "w"),
        (lambda w, u, k, v: (w, u, k[:, :0], v[:, :0]), "k"),
    ],
)
def test_bad_inputs_name_the_argument(change, name):
    args = change(*make_inputs(2, 3, 4))
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        bi_wkv(*args)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        bi_wkv(*make_inputs(1, 2, 3), backend="cuda")
