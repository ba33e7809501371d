"""Streaming selective scan: a sequence in chunks (initial_state) or token by token
(selective_state_update) gives the outputs and final state of one pass, on every backend."""
import pytest
import torch
import torch.nn.functional as F

from effviz.kernels import available_backends, selective_scan, selective_state_update
from effviz.kernels.selective_scan.reference import scan_reference

from .test_selective_scan import make_inputs

BACKENDS = available_backends()  # reference, torch, and cpu / triton (interpreter) where they run
FP32 = dict(rtol=6e-4, atol=2e-3)
ON_GPU = torch.cuda.is_available()


def shapes_for(backend):
    """(batch, dim, L, N): L > 64 so that chunks of 64 really cut the sequence; N = 16 takes the C
    kernel's AVX2 path, N = 5 its generic one. The Triton interpreter gets tiny shapes."""
    if backend == "triton" and not ON_GPU:
        return [(1, 3, 20, 8)]
    return [(2, 3, 70, 16), (1, 4, 70, 5)]


def spans(length, chunk, reverse):
    """[start, end) of each chunk in the order a stream delivers them."""
    out = [(s, min(s + chunk, length)) for s in range(0, length, chunk)]
    return out[::-1] if reverse else out


def random_state(batch, dim, n_state, seed=1, dtype=torch.float32):
    return torch.randn(batch, dim, n_state, generator=torch.Generator().manual_seed(seed)).to(dtype)


def full_reference(u, delta, A, B, C, D, z, delta_bias, reverse, h0=None):
    """The whole op in fp32 from the reference recurrence, with softplus: what every backend must give."""
    delta = F.softplus(delta.float() + delta_bias.float()[:, None])
    y, last = scan_reference(u.float(), delta, A.float(), B.float(), C.float(), reverse=reverse, h0=h0)
    return (y + D.float()[:, None] * u.float()) * F.silu(z.float()), last


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk", [1, 7, 64, 13])  # 13 divides none of the lengths
@pytest.mark.parametrize("reverse", [False, True])
def test_chunks_give_one_pass(backend, chunk, reverse):
    for shape in shapes_for(backend):
        x = make_inputs(*shape)
        kw = dict(delta_softplus=True, reverse=reverse, return_last_state=True, backend=backend)
        want_y, want_last = selective_scan(**x, **kw)
        y, state = torch.empty_like(want_y), None
        for start, end in spans(shape[2], chunk, reverse):
            part = {k: (v[..., start:end] if v.dim() == 3 else v) for k, v in x.items()}
            y[..., start:end], state = selective_scan(**part, **kw, initial_state=state)
        torch.testing.assert_close(y, want_y, **FP32)
        torch.testing.assert_close(state, want_last, **FP32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.float16])
def test_initial_state_matches_reference(backend, reverse, state_dtype):
    for shape in shapes_for(backend):
        x = make_inputs(*shape)
        h0 = random_state(shape[0], shape[1], shape[3], dtype=state_dtype)
        want_y, want_last = full_reference(**x, reverse=reverse, h0=h0.float())
        y, last = selective_scan(**x, delta_softplus=True, reverse=reverse, return_last_state=True,
                                 backend=backend, initial_state=h0)
        torch.testing.assert_close(y, want_y, **FP32)
        torch.testing.assert_close(last, want_last, **FP32)


def test_zero_initial_state_is_no_state():
    x = make_inputs(2, 3, 30, 16)
    for backend in BACKENDS:
        if backend == "triton" and not ON_GPU:
            continue
        without = selective_scan(**x, backend=backend)
        with_zeros = selective_scan(**x, backend=backend, initial_state=torch.zeros(2, 3, 16))
        torch.testing.assert_close(with_zeros, without, rtol=0, atol=0)


@pytest.mark.parametrize("backend", [b for b in ("torch", "cpu") if b in BACKENDS])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradient_of_the_initial_state(backend, reverse):
    """150 steps > one chunk of the torch backend: the state gradient crosses chunk edges to h0."""
    dtype = torch.float64 if backend == "torch" else torch.float32  # the C kernel computes in fp32
    x = make_inputs(2, 3, 150, 16, dtype=dtype)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    h0 = random_state(2, 3, 16, dtype=dtype).requires_grad_()
    g = torch.Generator().manual_seed(7)
    weight_y = torch.randn(2, 3, 150, generator=g, dtype=dtype)
    weight_last = torch.randn(2, 3, 16, generator=g, dtype=dtype)

    def grads(backend):
        y, last = selective_scan(**leaves, delta_softplus=True, reverse=reverse, return_last_state=True,
                                 backend=backend, initial_state=h0)
        loss = (y * weight_y).sum() + (last.to(dtype) * weight_last).sum()
        return torch.autograd.grad(loss, [h0, *leaves.values()])

    tol = dict(rtol=1e-6, atol=1e-8) if dtype == torch.float64 else FP32
    for name, got, want in zip(["initial_state", *leaves], grads(backend), grads("reference")):
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("extras", [False, True])
def test_token_by_token_gives_one_pass(backend, reverse, extras):
    for shape in shapes_for(backend):
        x = make_inputs(*shape, extras=extras)
        want_y, want_last = selective_scan(**x, delta_softplus=extras, reverse=reverse, return_last_state=True,
                                           backend="reference")
        state = torch.zeros(shape[0], shape[1], shape[3])
        y = torch.empty_like(want_y)
        order = range(shape[2] - 1, -1, -1) if reverse else range(shape[2])
        with torch.no_grad():
            for t in order:
                step = {k: (v[..., t] if v.dim() == 3 else v) for k, v in x.items()}
                y[..., t] = selective_state_update(
                    state, step["u"], step["delta"], step["A"], step["B"], step["C"], step.get("D"), step.get("z"),
                    step.get("delta_bias"), dt_softplus=extras, backend=backend)
        torch.testing.assert_close(y, want_y, **FP32)
        torch.testing.assert_close(state, want_last, **FP32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_update_in_place_on_a_strided_state_and_fp16_inputs(backend):
    """A non-contiguous state (a view into a cache) is still updated in place; y comes back in x's dtype."""
    batch, dim, n_state = 2, 5, 16
    x = {k: v[..., 0] if v.dim() == 3 else v for k, v in make_inputs(batch, dim, 1, n_state).items()}
    h0 = random_state(batch, dim, n_state)
    want_state = h0.clone()
    want_y = selective_state_update(want_state, **_step_args(x), dt_softplus=True, backend="reference")
    cache = h0.transpose(1, 2).contiguous()  # (batch, N, dim) storage
    state = cache.transpose(1, 2)            # a (batch, dim, N) view of it, not contiguous
    half = {k: v.half() for k, v in x.items()}
    y = selective_state_update(state, **_step_args(half), dt_softplus=True, backend=backend)
    assert y.dtype == torch.float16 and y.shape == (batch, dim)
    torch.testing.assert_close(y.float(), want_y, rtol=3e-3, atol=5e-3)
    torch.testing.assert_close(cache.transpose(1, 2), want_state, rtol=3e-3, atol=5e-3)


def _step_args(x):
    return dict(x=x["u"], dt=x["delta"], A=x["A"], B=x["B"], C=x["C"], D=x["D"], z=x["z"], dt_bias=x["delta_bias"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_update_extreme_inputs(backend):
    """Pre-softplus dt from -60 to 60, gates from -80 to 80, decays down to exp(-16 * 60): the C and
    Triton updates' softplus and SiLU over their whole range."""
    batch, dim, n_state = 3, 40, 16
    x = {k: v[..., 0] if v.dim() == 3 else v for k, v in make_inputs(batch, dim, 1, n_state).items()}
    x["delta"] = torch.linspace(-60, 60, batch * dim).reshape(batch, dim)
    x["z"] = torch.linspace(80, -80, batch * dim).reshape(batch, dim)
    x["A"] = -torch.arange(1.0, n_state + 1).repeat(dim, 1)
    want_state, state = random_state(batch, dim, n_state), random_state(batch, dim, n_state)
    want_y = selective_state_update(want_state, **_step_args(x), dt_softplus=True, backend="reference")
    y = selective_state_update(state, **_step_args(x), dt_softplus=True, backend=backend)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, want_y, **FP32)
    torch.testing.assert_close(state, want_state, **FP32)


def test_state_update_refuses_gradients():
    x = {k: v[..., 0] if v.dim() == 3 else v for k, v in make_inputs(1, 2, 1, 4).items()}
    x["A"].requires_grad_()
    with pytest.raises(ValueError, match="inference-only"):
        selective_state_update(torch.zeros(1, 2, 4), **_step_args(x))


def test_bad_initial_state_is_a_clear_error():
    x = make_inputs(1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"initial_state must have shape \(1, 2, 4\)"):
        selective_scan(**x, initial_state=torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match="initial_state must have dtype"):
        selective_scan(**x, initial_state=torch.zeros(1, 2, 4, dtype=torch.int64))


@pytest.mark.parametrize(
    "name, bad, match",
    [
        ("state", torch.zeros(1, 2, 4, dtype=torch.float16), "state must have dtype"),
        ("state", torch.zeros(2, 4), "state must have shape"),
        ("x", torch.zeros(1, 3), r"x must have shape \(1, 2\)"),
        ("dt", torch.zeros(1, 2, 1), "dt must have shape"),
        ("A", torch.zeros(2, 5), r"A must have shape \(2, 4\)"),
        ("B", torch.zeros(1, 4, 1), r"B must have shape \(1, 4\)"),
        ("C", torch.zeros(2, 4), "C must have shape"),
        ("D", torch.zeros(3), "D must have shape"),
        ("z", torch.zeros(1, 2, 1), "z must have shape"),
        ("dt_bias", torch.zeros(2, 1), "dt_bias must have shape"),
    ],
)
def test_state_update_bad_inputs_name_the_argument(name, bad, match):
    x = {k: v[..., 0] if v.dim() == 3 else v for k, v in make_inputs(1, 2, 1, 4).items()}
    args = dict(state=torch.zeros(1, 2, 4), **_step_args(x))
    args[name] = bad
    with pytest.raises(ValueError, match=match):
        selective_state_update(**args)
