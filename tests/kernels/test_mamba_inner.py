"""The fused cpu inference path of the Mamba mixers against the readable one (causal_conv1d +
selective_scan per branch), and the kernels' validation and thread pool."""
import threading

import pytest
import torch
import torch.nn.functional as F

from effviz.kernels import native, selective_scan
from effviz.kernels.mamba_inner import Branch, mamba_conv_cpu, mamba_inner_cpu
from effviz.models import create_model
from effviz.models.mixers import mamba

pytestmark = pytest.mark.skipif(not native.available(), reason="the native library does not build here")

REL_TOL = 1e-5  # of the largest output: fp32 with the kernels' polynomial exp and softplus


def assert_close_rel(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = want.abs().max()
    assert scale > 0
    err = (got - want).abs().max() / scale
    assert err <= REL_TOL, f"max error {err:.2e} of the largest output"


def bimamba(dim: int, d_state: int = 16, seed: int = 0) -> mamba.BiMamba:
    """A BiMamba with trained-looking, not initial, A, D and dt: every parameter random."""
    torch.manual_seed(seed)
    m = mamba.BiMamba(dim, d_state=d_state).eval()
    with torch.no_grad():
        for branch in (m.fwd, m.bwd):
            branch.A_log.add_(torch.randn_like(branch.A_log) * 0.3)
            branch.D.normal_()
            branch.dt_proj.bias.add_(torch.randn_like(branch.dt_proj.bias) * 0.5)
    return m


def both_paths(module, *args, monkeypatch):
    with torch.no_grad():
        monkeypatch.setattr(mamba, "FUSED_INFERENCE", False)
        readable = module(*args)
        monkeypatch.setattr(mamba, "FUSED_INFERENCE", True)
        fused = module(*args)
    return fused, readable


@pytest.mark.parametrize("batch, length", [(1, 1), (1, 197), (3, 7), (2, 65), (2, 131)])
@pytest.mark.parametrize("d_state", [16, 5])  # 16: the vectorised scan; 5: the plain loops
@pytest.mark.parametrize("chunk", [mamba.FUSED_CHUNK, 16])  # 16: u made by chunks, recomputed in the scan
def test_bimamba_fused_equals_readable(batch, length, d_state, chunk, monkeypatch):
    monkeypatch.setattr(mamba, "FUSED_CHUNK", chunk)
    m = bimamba(32, d_state)
    hidden = torch.randn(batch, length, 32, generator=torch.Generator().manual_seed(1))
    fused, readable = both_paths(m, hidden, None, monkeypatch=monkeypatch)
    assert fused.shape == readable.shape == (batch, length, 32)
    assert_close_rel(fused, readable)


@pytest.mark.parametrize("length", [1, 131])
def test_bimamba_fused_equals_readable_with_a_ragged_channel_group(length, monkeypatch):
    """d_inner = 40: two full groups of 16 channels and one of 8 on the channels-across-lanes path."""
    m = bimamba(20)
    hidden = torch.randn(2, length, 20, generator=torch.Generator().manual_seed(3))
    fused, readable = both_paths(m, hidden, None, monkeypatch=monkeypatch)
    assert_close_rel(fused, readable)


def test_whole_vim_model_fused_equals_readable(monkeypatch):
    """A vim-tiny-shaped model (bimamba v2, middle class token, RMSNorm), smaller: features of
    a batch of two non-square images."""
    torch.manual_seed(0)
    model = create_model("vim-tiny", embed_dim=64, depth=3).eval()
    image = torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(2))  # 3x5 patches + class token
    fused, readable = both_paths(model.forward_features, image, monkeypatch=monkeypatch)
    assert_close_rel(fused, readable)


def branch_params(dim: int, rank: int, d_state: int, seed: int) -> Branch:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return Branch(r(dim, 4) * 0.5, r(dim), r(rank + 2 * d_state, dim) * 0.3, r(dim, rank) * 0.5, r(dim) * 0.5,
                  r(dim, d_state) * 0.5, r(dim))


def scan_by_reference(x: torch.Tensor, branch: Branch, reverse: bool) -> torch.Tensor:
    """One branch from the readable ops, on the reference backends, without the gate."""
    u = F.silu(F.conv1d(F.pad(x.flip(-1) if reverse else x, (3, 0)), branch.conv_weight[:, None], branch.conv_bias,
                        groups=x.shape[1]))
    u = u.flip(-1) if reverse else u
    rank = branch.dt_weight.shape[1]
    n_state = branch.A_log.shape[1]
    dt, B, C = torch.einsum("od,bdl->bol", branch.x_proj_weight, u).split([rank, n_state, n_state], dim=1)
    delta = torch.einsum("dr,brl->bdl", branch.dt_weight, dt)
    return selective_scan(u, delta, -torch.exp(branch.A_log), B, C, D=branch.D, delta_bias=branch.dt_bias,
                          delta_softplus=True, reverse=reverse, backend="reference")


def run_kernels(x, z, branches, scale):
    u = mamba_conv_cpu(x, branches)
    xdbl = tuple(u[k].transpose(1, 2) @ br.x_proj_weight.t() for k, br in enumerate(branches))
    return mamba_inner_cpu(u, tuple(t.contiguous() for t in xdbl), branches, z=z, scale=scale)


@pytest.mark.parametrize("directions", ["forward", "both"])
def test_kernels_follow_their_formula(directions):
    """out = scale * silu(z) * sum of the branches' scans (forward, then backward in time), each
    branch's dt_proj, softplus and D skip included; x a channel slice, as the mixer passes it."""
    batch, dim, length = 2, 24, 45
    xz = torch.randn(batch, 2 * dim, length, generator=torch.Generator().manual_seed(3))
    x, z = xz.chunk(2, dim=1)
    branches = (branch_params(dim, 3, 16, 4), branch_params(dim, 3, 16, 5))[: 1 if directions == "forward" else 2]
    want = sum(scan_by_reference(x, br, reverse=k == 1) for k, br in enumerate(branches)) * F.silu(z) * 0.5
    assert_close_rel(run_kernels(x, z, branches, 0.5), want)


@pytest.mark.parametrize("length", [150, 3, 1])  # 3, 1: shorter than the conv's 4 taps
@pytest.mark.parametrize("d_state", [16, 5])  # 16: the vectorised scan; 5: the plain loops
def test_scan_recomputing_u_from_x_equals_reading_it(length, d_state):
    """The scan given the conv's input x recomputes each block's u with the conv kernel's own
    arithmetic: the same outputs, bit for bit, as reading u; the conv over a range of steps is
    that range of the whole conv."""
    xz = torch.randn(3, 2 * 16, length, generator=torch.Generator().manual_seed(8))
    x, z = xz.chunk(2, dim=1)
    branches = (branch_params(16, 2, d_state, 9), branch_params(16, 2, d_state, 10))
    u = mamba_conv_cpu(x, branches)
    for start, stop in ((0, length), (0, 1), (length // 4, length // 2 + 1), (length - 1, length), (1, 1)):
        assert torch.equal(mamba_conv_cpu(x, branches, start, stop), u[..., start:stop])
    xdbl = tuple((u[k].transpose(1, 2) @ br.x_proj_weight.t()).contiguous() for k, br in enumerate(branches))
    for nbranch in (1, 2):
        read = mamba_inner_cpu(u[:nbranch], xdbl[:nbranch], branches[:nbranch], z=z, scale=0.5)
        recomputed = mamba_inner_cpu(None, xdbl[:nbranch], branches[:nbranch], z=z, scale=0.5, x=x)
        assert torch.equal(read, recomputed)


def test_output_may_overwrite_the_gate():
    x, z = torch.randn(2, 2 * 16, 33).chunk(2, dim=1)
    branches = (branch_params(16, 2, 16, 6), branch_params(16, 2, 16, 7))
    u = mamba_conv_cpu(x, branches)
    xdbl = tuple((u[k].transpose(1, 2) @ br.x_proj_weight.t()).contiguous() for k, br in enumerate(branches))
    separate = mamba_inner_cpu(u, xdbl, branches, z=z, scale=0.5)
    in_place = mamba_inner_cpu(u, xdbl, branches, z=z, out=z, scale=0.5)
    assert in_place.data_ptr() == z.data_ptr()
    assert torch.equal(in_place, separate)


def test_one_and_two_threads_give_identical_results(monkeypatch):
    m = bimamba(32)
    hidden = torch.randn(3, 77, 32)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 5):  # 5: more tasks than the machine has cores
            torch.set_num_threads(threads)
            with torch.no_grad():
                results.append(m(hidden, None))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_concurrent_calls_from_python_threads_are_correct():
    """ctypes releases the GIL: calls from several threads share the pool (or run inline)."""
    m = bimamba(32)
    inputs = [torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with torch.no_grad():
        want = [m(h, None) for h in inputs]
    got = [None] * len(inputs)

    def work(i):
        with torch.no_grad():
            for _ in range(5):
                got[i] = m(inputs[i], None)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_fused_path_is_chosen_only_for_cpu_inference(monkeypatch):
    m = bimamba(16)
    hidden = torch.randn(1, 5, 16)
    monkeypatch.delenv("EFFVIZ_BACKEND", raising=False)
    assert not mamba.use_fused_inference(hidden, m)  # eval mode alone: autograd still tracks the weights
    m.requires_grad_(False)
    assert mamba.use_fused_inference(hidden, m)  # frozen weights, no input gradient: nothing to track
    m.requires_grad_(True)
    with torch.no_grad():
        assert mamba.use_fused_inference(hidden, m)
        assert not mamba.use_fused_inference(hidden.double(), m)
        monkeypatch.setenv("EFFVIZ_BACKEND", "torch")
        assert not mamba.use_fused_inference(hidden, m)
        monkeypatch.setenv("EFFVIZ_BACKEND", "cpu")
        assert mamba.use_fused_inference(hidden, m)


def test_training_takes_the_readable_path_and_gets_gradients():
    m = bimamba(16).train()
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    assert not mamba.use_fused_inference(hidden, m)
    m(hidden, None).square().sum().backward()
    assert hidden.grad is not None and m.fwd.dt_proj.weight.grad.abs().sum() > 0


def test_validation_errors_name_the_input():
    x, z = torch.randn(2, 32, 20).chunk(2, dim=1)
    branches = (branch_params(16, 2, 16, 0), branch_params(16, 2, 16, 1))
    u = mamba_conv_cpu(x, branches)
    xdbl = tuple((u[k].transpose(1, 2) @ br.x_proj_weight.t()).contiguous() for k, br in enumerate(branches))
    with pytest.raises(ValueError, match=r"xdbl\[1\] must have shape \(2, 20, 34\)"):
        mamba_inner_cpu(u, (xdbl[0], xdbl[1][:, :19]), branches, z=z)
    with pytest.raises(ValueError, match="float32"):
        mamba_inner_cpu(u.double(), xdbl, branches, z=z)
    with pytest.raises(ValueError, match="z must be contiguous"):
        mamba_inner_cpu(u, xdbl, branches, z=z.transpose(1, 2).contiguous().transpose(1, 2))
    with pytest.raises(ValueError, match="1 or 2"):
        mamba_inner_cpu(u, xdbl, branches * 2, z=z)
    with pytest.raises(ValueError, match=r"dt_weight\[0\] must have shape \(16, 2\)"):
        mamba_inner_cpu(u, xdbl, (branches[0]._replace(dt_weight=torch.randn(17, 2)), branches[1]), z=z)
    with pytest.raises(ValueError, match=r"conv_weight\[1\] must be \(dim, K\) or \(dim, 1, K\)"):
        mamba_conv_cpu(x, (branches[0], branches[1]._replace(conv_weight=torch.randn(16, 2, 4))))
    with pytest.raises(ValueError, match="exactly one of them must be given"):
        mamba_inner_cpu(u, xdbl, branches, z=z, x=x)
    with pytest.raises(ValueError, match=r"steps \[5, 21\) are not within the sequence's 20"):
        mamba_conv_cpu(x, branches, 5, 21)
    with pytest.raises(ValueError, match="different kernel sizes"):
        mamba_conv_cpu(x, (branches[0], branches[1]._replace(conv_weight=torch.randn(16, 3))))
