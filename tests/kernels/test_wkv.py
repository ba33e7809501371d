"""wkv (RWKV-4's causal WKV): every backend against the O(T²) reference, with and without a state,
chunked against one pass, and the reference against an RWKV-4 style step loop."""
from __future__ import annotations

import math

import pytest
import torch

from effviz.kernels import available_backends, native, wkv, wkv_initial_state
from effviz.kernels.wkv import IMPLS
from effviz.kernels.wkv.reference import wkv_reference
from effviz.kernels.wkv.torch_backend import wkv_torch

BACKENDS = [b for b in available_backends() if b in IMPLS]
FAST_BACKENDS = [b for b in BACKENDS if b != "reference"]
# Backends quick enough on CPU for longer sequences (the Triton interpreter is ms per step).
CPU_SPEED_BACKENDS = [b for b in BACKENDS if b != "triton"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOLERANCE = {  # (rtol, atol): fp32 as mamba_ssm's tests, fp16/bf16 for outputs rounded to them
    torch.float32: (6e-4, 2e-3),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (3e-2, 5e-2),
}
# (batch, T, C): a single token, two tokens, odd T, batch > 1; small enough for the interpreter.
SHAPES = [(1, 1, 3), (1, 2, 4), (2, 7, 5), (3, 9, 8)]


def skip_unsupported(backend: str, dtype: torch.dtype) -> None:
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton CPU interpreter has no bf16 arithmetic")


def make_inputs(batch, T, C, dtype=torch.float32, key_range=3.0, seed=0):
    """w uniform in [0, 5] with one channel exactly 0 (no decay); k uniform in ±key_range."""
    gen = torch.Generator().manual_seed(seed)
    w = 5 * torch.rand(C, generator=gen)
    w[0] = 0.0
    u = torch.randn(C, generator=gen)
    k = key_range * (2 * torch.rand(batch, T, C, generator=gen) - 1)
    v = torch.randn(batch, T, C, generator=gen)
    return tuple(x.to(dtype) for x in (w, u, k, v))


def make_state(batch, C, key_range=3.0, seed=1):
    """The fp32 state after 5 earlier tokens, as the reference computes it."""
    w, u, k, v = make_inputs(batch, 5, C, torch.float64, key_range, seed)
    return wkv_reference(w, u, k, v, return_state=True)[1].float()


def expected(w, u, k, v, state=None):
    """The reference on the same (possibly low-precision) inputs, in float64."""
    return wkv_reference(*(x.double() for x in (w, u, k, v)), None if state is None else state.double(),
                         return_state=True)


def assert_close(actual, want, dtype):
    rtol, atol = TOLERANCE[dtype]
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.to(want.dtype), want, rtol=rtol, atol=atol)


def rwkv4_step_loop(w, u, k, v, state=None):
    """RWKV-4's inference loop (its RNN mode), written independently of the op's code: w enters
    as time_decay = -w, and (aa, bb, pp) start at (0, 0, -1e38) as in the RWKV-4 repository."""
    batch, T, C = k.shape
    time_decay, time_first = -w, u
    if state is None:
        aa, bb, pp = torch.zeros(batch, C, dtype=k.dtype), torch.zeros(batch, C, dtype=k.dtype), \
            torch.full((batch, C), -1e38, dtype=k.dtype)
    else:
        aa, bb, pp = state.unbind(1)
    out = torch.empty_like(v)
    for t in range(T):
        kk, vv = k[:, t], v[:, t]
        ww = time_first + kk
        qq = torch.maximum(pp, ww)
        e1, e2 = torch.exp(pp - qq), torch.exp(ww - qq)
        out[:, t] = (e1 * aa + e2 * vv) / (e1 * bb + e2)
        ww = pp + time_decay
        qq = torch.maximum(ww, kk)
        e1, e2 = torch.exp(ww - qq), torch.exp(kk - qq)
        aa, bb, pp = e1 * aa + e2 * vv, e1 * bb + e2, qq
    return out, torch.stack([aa, bb, pp], dim=1)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("key_range", [3.0, 30.0])
def test_reference_matches_rwkv4_step_loop(with_state, key_range):
    w, u, k, v = make_inputs(2, 9, 6, torch.float64, key_range)
    state = make_state(2, 6, key_range).double() if with_state else None
    want_out, want_state = rwkv4_step_loop(w, u, k, v, state)
    out, new_state = wkv_reference(w, u, k, v, state, return_state=True)
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new_state, want_state, rtol=1e-12, atol=1e-12)


def test_reference_matches_the_formula_written_out():
    """The docstring's sums term by term, the earlier tokens included as the state's meaning."""
    w, u, k, v = make_inputs(1, 10, 3, torch.float64)
    _, state = wkv_reference(w, u, k[:, :4], v[:, :4], return_state=True)
    out = wkv_reference(w, u, k[:, 4:], v[:, 4:], state)
    for t in range(4, 10):
        for c in range(3):
            weights = torch.stack([torch.exp(-(t - 1 - i) * w[c] + k[0, i, c]) for i in range(t)]
                                  + [torch.exp(u[c] + k[0, t, c])])
            want = (weights * v[0, : t + 1, c]).sum() / weights.sum()
            torch.testing.assert_close(out[0, t - 4, c], want, rtol=1e-12, atol=1e-12)
    # The state after token 3: e^p (a, b) = Σ_{i<=3} e^{-(3-i)w + k_i} (v_i, 1).
    weights = torch.exp(-(3 - torch.arange(4.0, dtype=torch.float64))[:, None] * w + k[0, :4])
    a, b, p = state[0]
    torch.testing.assert_close(torch.exp(p) * a, (weights * v[0, :4]).sum(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.exp(p) * b, weights.sum(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p, (-(3 - torch.arange(4.0, dtype=torch.float64))[:, None] * w + k[0, :4]).amax(0))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_reference(backend, dtype, shape, with_state):
    skip_unsupported(backend, dtype)
    w, u, k, v = make_inputs(*shape, dtype)
    state = make_state(shape[0], shape[2]) if with_state else None
    out, new_state = wkv(w, u, k, v, state, return_state=True, backend=backend)
    want_out, want_state = expected(w, u, k, v, state)
    assert_close(out, want_out, dtype)
    assert_close(new_state, want_state, torch.float32)
    assert torch.equal(wkv(w, u, k, v, state, backend=backend), out)  # the state is optional output


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("with_state", [False, True])
def test_large_keys_and_decays_stay_finite(backend, with_state):
    """k in ±30 and w up to 5 over T=12: e^{k} spans e^60, e^{-wT} reaches e^-60."""
    w, u, k, v = make_inputs(2, 12, 8, key_range=30.0, seed=2)
    k[0, 0] = 30.0
    k[1, -1] = -30.0
    state = make_state(2, 8, key_range=30.0) if with_state else None
    out, new_state = wkv(w, u, k, v, state, return_state=True, backend=backend)
    assert torch.isfinite(out).all() and torch.isfinite(new_state).all()
    want_out, want_state = expected(w, u, k, v, state)
    assert_close(out, want_out, torch.float32)
    assert_close(new_state, want_state, torch.float32)


@pytest.mark.parametrize("backend", CPU_SPEED_BACKENDS)
def test_longer_sequence_matches_reference(backend):
    """Several cpu channel blocks (16 channels) with a ragged last one, T not a power of two."""
    w, u, k, v = make_inputs(2, 150, 37, key_range=30.0)
    out, new_state = wkv(w, u, k, v, return_state=True, backend=backend)
    want_out, want_state = expected(w, u, k, v)
    assert_close(out, want_out, torch.float32)
    assert_close(new_state, want_state, torch.float32)


def run_in_chunks(w, u, k, v, chunk, backend):
    """The sequence in chunks of ``chunk`` tokens, each starting from the previous one's state."""
    outs, state = [], None
    for start in range(0, k.shape[1], chunk):
        out, state = wkv(w, u, k[:, start:start + chunk], v[:, start:start + chunk], state,
                         return_state=True, backend=backend)
        outs.append(out)
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk", [1, 7, 64, 30])  # 30 does not divide 70
def test_chunked_equals_one_pass(backend, chunk):
    # The interpreter walks T at milliseconds per step: a tiny shape there.
    shape = (1, 70, 3) if backend == "triton" else (2, 70, 20)
    w, u, k, v = make_inputs(*shape, key_range=30.0)
    out, state = wkv(w, u, k, v, return_state=True, backend=backend)
    chunked_out, chunked_state = run_in_chunks(w, u, k, v, chunk, backend)
    assert_close(chunked_out, out, torch.float32)
    assert_close(chunked_state, state, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_state_is_no_state(backend):
    """wkv_initial_state and a state with p = -inf both mean: no tokens before."""
    w, u, k, v = make_inputs(2, 5, 4)
    want_out, want_state = wkv(w, u, k, v, return_state=True, backend=backend)
    infinite = wkv_initial_state(2, 4)
    infinite[:, 2] = -math.inf
    for state in (wkv_initial_state(2, 4), infinite):
        out, new_state = wkv(w, u, k, v, state, return_state=True, backend=backend)
        assert_close(out, want_out, torch.float32)
        assert_close(new_state, want_state, torch.float32)


def test_initial_state():
    state = wkv_initial_state(2, 3)
    assert state.shape == (2, 3, 3) and state.dtype == torch.float32
    assert (state[:, :2] == 0).all() and (state[:, 2] == -1e38).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_inputs(backend):
    """float64 is accepted (for gradient checks); fp32-math backends meet the fp32 tolerance."""
    w, u, k, v = make_inputs(2, 7, 5, torch.float64)
    state = make_state(2, 5).double()
    out, new_state = wkv(w, u, k, v, state, return_state=True, backend=backend)
    assert out.dtype == torch.float64
    exact = backend in ("reference", "torch")
    rtol, atol = (1e-12, 1e-12) if exact else TOLERANCE[torch.float32]
    want_out, want_state = expected(w, u, k, v, state)
    torch.testing.assert_close(out, want_out, rtol=rtol, atol=atol)
    torch.testing.assert_close(new_state.double(), want_state, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", [b for b in ("cpu", "torch", "triton") if b in FAST_BACKENDS])
def test_mixed_input_dtypes(backend):
    """Model parameters in fp32 with low-precision activations: the output takes v's dtype."""
    dtype = torch.float16 if backend == "triton" else torch.bfloat16
    w, u, k, v = make_inputs(2, 5, 6)
    k, v = k.to(dtype), v.to(dtype)
    assert_close(wkv(w, u, k, v, backend=backend), expected(w, u, k, v)[0], dtype)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_non_contiguous_inputs(backend):
    w, u, k, v = make_inputs(2, 6, 5)
    state = make_state(2, 5)
    k_strided = k.transpose(1, 2).contiguous().transpose(1, 2)
    v_strided = torch.stack([v, -v], dim=-1)[..., 0]
    state_strided = state.transpose(1, 2).contiguous().transpose(1, 2)
    assert not (k_strided.is_contiguous() or v_strided.is_contiguous() or state_strided.is_contiguous())
    out, new_state = wkv(w, u, k_strided, v_strided, state_strided, return_state=True, backend=backend)
    want_out, want_state = expected(w, u, k, v, state)
    assert_close(out, want_out, torch.float32)
    assert_close(new_state, want_state, torch.float32)


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 7, 5)])
@pytest.mark.parametrize("key_range", [3.0, 30.0])
@pytest.mark.parametrize("with_state", [False, True])
def test_torch_gradients_match_reference(shape, key_range, with_state):
    """Gradients of the outputs and of the returned state, for w, u, k, v and the given state."""
    w, u, k, v = make_inputs(*shape, torch.float64, key_range)
    state = make_state(shape[0], shape[2], key_range).double() if with_state else None
    inputs = tuple(x.requires_grad_() for x in (w, u, k, v) + ((state,) if with_state else ()))
    gen = torch.Generator().manual_seed(3)
    up_out = torch.randn(shape, dtype=torch.float64, generator=gen)
    # The state's p is returned as data, so it gets an upstream gradient too.
    up_state = torch.randn(shape[0], 3, shape[2], dtype=torch.float64, generator=gen)

    def loss(fn):
        out, new_state = fn(*inputs[:4], inputs[4] if with_state else None, return_state=True)
        return (out * up_out).sum() + (new_state * up_state).sum()

    want = torch.autograd.grad(loss(wkv_reference), inputs)
    got = torch.autograd.grad(loss(wkv_torch), inputs)
    for name, g, r in zip(["w", "u", "k", "v", "state"], got, want):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10, msg=f"gradient of {name}")


@pytest.mark.parametrize("with_state", [False, True])
def test_torch_gradcheck(with_state):
    w, u, k, v = make_inputs(2, 4, 3, torch.float64)
    state = make_state(2, 3).double() if with_state else None
    inputs = tuple(x.requires_grad_() for x in (w, u, k, v) + ((state,) if with_state else ()))

    def fn(*args):
        return wkv_torch(*args[:4], args[4] if with_state else None, return_state=True)

    assert torch.autograd.gradcheck(fn, inputs)


def test_default_backend_supports_autograd_in_fp32():
    """With grad-requiring inputs the dispatcher must pick a differentiable backend."""
    w, u, k, v = (x.requires_grad_() for x in make_inputs(2, 5, 4, key_range=30.0))
    wkv(w, u, k, v).square().sum().backward()
    refs = tuple(x.detach().clone().requires_grad_() for x in (w, u, k, v))
    wkv_reference(*refs).square().sum().backward()
    for x, r in zip((w, u, k, v), refs):
        torch.testing.assert_close(x.grad, r.grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("backend", [b for b in ("cpu", "triton") if b in BACKENDS])
def test_inference_only_backends_refuse_gradients(backend):
    w, u, k, v = make_inputs(1, 3, 4)
    k.requires_grad_()
    with pytest.raises(ValueError, match="inference-only"):
        wkv(w, u, k, v, backend=backend)
    state = make_state(1, 4).requires_grad_()
    with pytest.raises(ValueError, match="inference-only"):
        wkv(w, u, k.detach(), v, state, backend=backend)
    with torch.no_grad():  # the same call is fine when no graph is recorded
        assert_close(wkv(w, u, k, v, backend=backend), expected(w, u, k.detach(), v)[0], torch.float32)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="native library not built")
def test_cpu_result_does_not_depend_on_thread_count(monkeypatch):
    w, u, k, v = make_inputs(3, 20, 40)  # 9 work units of (batch, 16 channels)
    state = make_state(3, 40)
    results = []
    for threads in (1, 2, 5, 64):
        monkeypatch.setattr(native, "num_threads", lambda threads=threads: threads)
        results.append(wkv(w, u, k, v, state, return_state=True, backend="cpu"))
    for out, new_state in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(new_state, results[0][1])


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton unavailable")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("C", [6, 8])
def test_triton_several_channel_blocks(dtype, C):
    """block_c=4: two programs per batch element, the second ragged when C=6."""
    from effviz.kernels.wkv.triton_backend import wkv_triton

    w, u, k, v = make_inputs(2, 5, C, dtype, key_range=10.0)
    state = make_state(2, C)
    out, new_state = wkv_triton(w, u, k, v, state, return_state=True, block_c=4)
    want_out, want_state = expected(w, u, k, v, state)
    assert_close(out, want_out, dtype)
    assert_close(new_state, want_state, torch.float32)


def test_default_backend_matches_reference():
    w, u, k, v = make_inputs(2, 7, 5)
    assert_close(wkv(w, u, k, v), expected(w, u, k, v)[0], torch.float32)


@pytest.mark.parametrize(
    "change, name",
    [
        (lambda w, u, k, v, s: (w, u, k[0], v, s), "k"),
        (lambda w, u, k, v, s: (w, u, k, v[:, :-1], s), "v"),
        (lambda w, u, k, v, s: (w[:-1], u, k, v, s), "w"),
        (lambda w, u, k, v, s: (w, u.reshape(1, -1), k, v, s), "u"),
        (lambda w, u, k, v, s: (w, u, k.to(torch.int32), v, s), "k"),
        (lambda w, u, k, v, s: (w.tolist(), u, k, v, s), "w"),
        (lambda w, u, k, v, s: (w, u, k[:, :0], v[:, :0], s), "k"),
        (lambda w, u, k, v, s: (w, u, k, v, s[:, :2]), "state"),
        (lambda w, u, k, v, s: (w, u, k, v, s[:1]), "state"),
        (lambda w, u, k, v, s: (w, u, k, v, s.transpose(1, 2)), "state"),
        (lambda w, u, k, v, s: (w, u, k, v, s.half()), "state"),
        (lambda w, u, k, v, s: (w, u, k, v, s.tolist()), "state"),
    ],
)
def test_bad_inputs_name_the_argument(change, name):
    w, u, k, v, state = change(*make_inputs(2, 3, 4), wkv_initial_state(2, 4))
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        wkv(w, u, k, v, state)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        wkv(*make_inputs(1, 2, 3), backend="cuda")
