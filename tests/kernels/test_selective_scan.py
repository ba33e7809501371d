"""Every selective_scan backend against the reference recurrence."""
import pytest
import torch
import torch.nn.functional as F

from effviz.kernels import available_backends, selective_scan
from effviz.kernels.selective_scan import IMPLS
from effviz.kernels.selective_scan.reference import scan_reference

TOL = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}
FAST = [b for b in ("torch", "cpu", "triton") if b in available_backends()]


def make_inputs(batch, dim, length, n_state, dtype=torch.float32, seed=0, extras=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    inputs = dict(
        u=r(batch, dim, length),
        delta=r(batch, dim, length).abs() * 0.5,  # Mamba's delta is positive (softplus)
        A=-torch.exp(r(dim, n_state) * 0.5),  # Mamba keeps A negative: A = -exp(A_log)
        B=r(batch, n_state, length),
        C=r(batch, n_state, length),
    )
    if extras:
        inputs.update(D=r(dim), z=r(batch, dim, length), delta_bias=r(dim) * 0.1)
    return {k: v.to(dtype) for k, v in inputs.items()}


def full_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False):
    """The whole op from the reference recurrence, in fp32: the definition the API must match."""
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    y, last = scan_reference(u, delta, A, B, C, reverse=reverse)
    if D is not None:
        y = y + D.float()[:, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    return y, last


def triton_inputs_ok(backend, dtype, length, dim):
    # The Triton interpreter on CPU has no bf16 arithmetic and takes milliseconds per step.
    return backend != "triton" or torch.cuda.is_available() or (dtype != torch.bfloat16 and length * dim <= 200)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", [(1, 3, 1, 4), (2, 5, 7, 16), (1, 4, 33, 8), (3, 2, 300, 16), (1, 1, 129, 3), (2, 19, 40, 16)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("extras", [False, True])
def test_matches_reference_fp32(backend, shape, reverse, extras):
    batch, dim, length, n_state = shape
    if not triton_inputs_ok(backend, torch.float32, length, dim):
        pytest.skip("too long for the Triton interpreter on CPU")
    x = make_inputs(*shape, extras=extras)
    kw = dict(reverse=reverse, delta_softplus=extras)
    want_y, want_last = full_reference(**x, **kw)
    y, last = selective_scan(**x, **kw, return_last_state=True, backend=backend)
    assert y.shape == (batch, dim, length) and last.shape == (batch, dim, n_state)
    torch.testing.assert_close(y, want_y, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(last, want_last, rtol=6e-4, atol=2e-3)


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(backend, dtype):
    shape = (2, 4, 19, 16)
    if not triton_inputs_ok(backend, dtype, 19, 4):
        pytest.skip("no bf16 arithmetic in the Triton interpreter")
    x = make_inputs(*shape, dtype=dtype)
    want, _ = full_reference(**x, delta_softplus=True)
    y = selective_scan(**x, delta_softplus=True, backend=backend)
    assert y.dtype == dtype
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y.float(), want, rtol=rtol, atol=atol)


def test_reverse_equals_flipped_forward():
    x = make_inputs(2, 3, 50, 16, extras=False)
    flipped = {k: (v.flip(-1) if v.dim() == 3 else v) for k, v in x.items()}
    y_rev = selective_scan(**x, reverse=True, backend="torch")
    y_fwd = selective_scan(**flipped, backend="torch")
    torch.testing.assert_close(y_rev, y_fwd.flip(-1))


def test_long_sequence_is_finite_and_matches():
    """Long L with strong decays: the chunked path never builds (B, D, L, N) and stays exact."""
    x = make_inputs(1, 8, 1000, 16, extras=False)
    x["delta"] = x["delta"].abs() * 4  # decays down to exp(-40) per step
    want, _ = full_reference(**x)
    for backend in FAST:
        if backend == "triton" and not torch.cuda.is_available():
            continue
        got = selective_scan(**x, backend=backend)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=6e-4, atol=2e-3)


@pytest.mark.parametrize("backend", [b for b in FAST if b != "triton"])
def test_extreme_inputs_of_the_fused_epilogues(backend):
    """Pre-softplus deltas from -60 to 60 (softplus is then ~e^x, or x itself), gates from -80 to 80,
    decays down to exp(-16 * 60): the CPU kernel's inlined exp, log1p and SiLU over their whole range."""
    x = make_inputs(2, 6, 70, 16)
    x["delta"] = torch.linspace(-60, 60, 2 * 6 * 70).reshape(2, 6, 70)
    x["z"] = torch.linspace(80, -80, 2 * 6 * 70).reshape(2, 6, 70)
    x["A"] = -torch.arange(1.0, 17.0).repeat(6, 1)
    want, want_last = full_reference(**x, delta_softplus=True)
    got, last = selective_scan(**x, delta_softplus=True, return_last_state=True, backend=backend)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(last, want_last, rtol=6e-4, atol=2e-3)


GRAD_BACKENDS = [b for b in ("torch", "cpu") if b in available_backends()]


@pytest.mark.parametrize("backend", GRAD_BACKENDS)
@pytest.mark.parametrize("n_state", [5, 16])  # 16 takes the C kernel's specialised path
@pytest.mark.parametrize("reverse", [False, True])
def test_gradients_match_reference(backend, n_state, reverse):
    dtype = torch.float64 if backend == "torch" else torch.float32  # the C kernel computes in fp32
    x = make_inputs(2, 3, 150, n_state, dtype=dtype)  # 150 > one chunk: gradients cross chunk edges
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    g = torch.Generator().manual_seed(7)
    weight_y = torch.randn(2, 3, 150, generator=g, dtype=dtype)
    weight_last = torch.randn(2, 3, n_state, generator=g, dtype=dtype)

    def loss(backend):
        y, last = selective_scan(**leaves, delta_softplus=True, reverse=reverse, return_last_state=True,
                                 backend=backend)
        return (y * weight_y).sum() + (last.to(dtype) * weight_last).sum()

    got = torch.autograd.grad(loss(backend), list(leaves.values()))
    want = torch.autograd.grad(loss("reference"), list(leaves.values()))
    rtol, atol = (1e-6, 1e-8) if dtype == torch.float64 else (6e-4, 2e-3)
    for name, a, b in zip(leaves, got, want):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"grad of {name}: {m}")


def test_torch_gradcheck_small():
    x = make_inputs(1, 2, 5, 3, dtype=torch.float64, extras=False)
    args = [x[k].requires_grad_() for k in ("u", "delta", "A", "B", "C")]
    assert torch.autograd.gradcheck(lambda *a: IMPLS["torch"](*a, reverse=True)[0], args)


def test_default_backend_uses_autograd_capable_path_when_training():
    x = make_inputs(1, 2, 9, 4)
    x["u"].requires_grad_()
    y = selective_scan(**x)  # must not pick an inference-only backend
    y.sum().backward()
    assert x["u"].grad is not None and torch.isfinite(x["u"].grad).all()


@pytest.mark.parametrize(
    "name, bad, match",
    [
        ("delta", torch.zeros(1, 2, 4), "delta must have shape"),
        ("A", torch.zeros(3, 4), "A must have shape"),
        ("B", torch.zeros(1, 4, 5), "B must have shape"),
        ("z", torch.zeros(1, 2), "z must have shape"),
        ("D", torch.zeros(2, dtype=torch.int64), "D must have dtype"),
        ("u", [1.0], "u must be a torch.Tensor"),
    ],
)
def test_bad_inputs_name_the_argument(name, bad, match):
    x = make_inputs(1, 2, 3, 4)
    x[name] = bad
    with pytest.raises(ValueError, match=match):
        selective_scan(**x)


def test_unknown_backend_is_a_clear_error():
    x = make_inputs(1, 2, 3, 4)
    with pytest.raises(ValueError, match="unknown backend"):
        selective_scan(**x, backend="cuda-magic")
