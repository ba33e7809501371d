"""The Triton selective scan (chunked over time) and the Triton backward passes of selective_scan
and bi_wkv, against the fp64 references.

On CPU these run under the Triton interpreter (conftest sets TRITON_INTERPRET=1) at tiny shapes,
with chunks of 4 steps so that a dozen steps cross several chunk boundaries; on a CUDA machine
(TRITON_INTERPRET=0) the same tests run the compiled kernels with their real chunk size.

Tolerances: the kernels compute in fp32 and the references in fp64. Over these few dozen steps
(decays <= 1) the fp32 rounding stays near 1e-6 relative (measured); 1e-4 leaves room for GPU
reduction orders and atomics while a lost chunk carry or a wrong term is off by O(1).
"""
from __future__ import annotations

import pytest
import torch

from effviz.kernels import available_backends, bi_wkv, selective_scan
from effviz.kernels.bi_wkv.reference import bi_wkv_reference

pytestmark = pytest.mark.skipif("triton" not in available_backends(), reason="triton unavailable")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RTOL, ATOL = 1e-4, 1e-4


@pytest.fixture
def chunk(monkeypatch) -> int:
    """The scan's chunk size for this test: 4 under the interpreter, the shipped one on a GPU."""
    from effviz.kernels.selective_scan import triton_backend

    if DEVICE == "cpu":
        monkeypatch.setattr(triton_backend, "CHUNK", 4)
    return triton_backend.CHUNK


def scan_inputs(batch: int, dim: int, length: int, n_state: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """fp64 inputs of the whole op, A negative and delta positive after softplus, as in Mamba."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    return dict(u=r(batch, dim, length), delta=r(batch, dim, length) * 0.5 - 1.0, A=-torch.exp(r(dim, n_state) * 0.5),
                B=r(batch, n_state, length), C=r(batch, n_state, length), D=r(dim), z=r(batch, dim, length),
                delta_bias=r(dim) * 0.1, initial_state=r(batch, dim, n_state))


def run_scan(x: dict[str, torch.Tensor], backend: str, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return selective_scan(**x, delta_softplus=True, reverse=reverse, return_last_state=True, backend=backend)


# (batch, dim, whole chunks, extra steps, N, reverse, initial state): one step; exactly one chunk;
# one step into a second chunk; several chunks with a ragged last one and N not a power of two.
FORWARD_CASES = [
    (2, 2, 0, 1, 4, False, True),
    (1, 3, 1, 0, 4, True, False),
    (2, 2, 1, 1, 8, True, True),
    (1, 2, 3, 2, 5, False, True),
]


@pytest.mark.parametrize("batch, dim, whole, extra, n_state, reverse, with_h0", FORWARD_CASES)
def test_chunked_scan_forward(chunk, batch, dim, whole, extra, n_state, reverse, with_h0):
    x = scan_inputs(batch, dim, whole * chunk + extra, n_state)
    if not with_h0:
        del x["initial_state"]
    want_y, want_last = run_scan(x, "reference", reverse)
    with torch.no_grad():
        y, last = run_scan({k: v.float().to(DEVICE) for k, v in x.items()}, "triton", reverse)
    torch.testing.assert_close(y.cpu().double(), want_y, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(last.cpu().double(), want_last, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("batch, dim, whole, extra, n_state, reverse", [
    (2, 2, 2, 3, 5, False),  # three chunks, the gradient carried back across two boundaries
    (1, 2, 0, 3, 4, True),   # a single, partial chunk
])
def test_scan_gradients_match_reference(chunk, batch, dim, whole, extra, n_state, reverse):
    """Every differentiable input of the op (the scan's own and the PyTorch-side delta bias, D and
    gate), through both outputs."""
    length = whole * chunk + extra
    x = scan_inputs(batch, dim, length, n_state)
    g = torch.Generator().manual_seed(1)
    weight_y = torch.randn(batch, dim, length, generator=g, dtype=torch.float64)
    weight_last = torch.randn(batch, dim, n_state, generator=g, dtype=torch.float64)

    def grads(inputs: dict[str, torch.Tensor], backend: str) -> list[torch.Tensor]:
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        y, last = run_scan(leaves, backend, reverse)
        loss = (y.double() * weight_y.to(y.device)).sum() + (last.double() * weight_last.to(y.device)).sum()
        return [t.cpu().double() for t in torch.autograd.grad(loss, list(leaves.values()))]

    want = grads(x, "reference")
    got = grads({k: v.float().to(DEVICE) for k, v in x.items()}, "triton")
    for name, a, b in zip(x, got, want):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.skipif(DEVICE != "cuda", reason="a thousand steps are minutes under the interpreter")
@pytest.mark.parametrize("reverse", [False, True])
def test_long_sequence_on_gpu(reverse):
    """16 chunks of 64, Vim-like channel count: the compiled kernels' atomics and across-chunk
    passes at a real size. The repo's fp32 tolerance: rounding now accumulates over 1000 steps."""
    x = {k: v.cuda() for k, v in scan_inputs(2, 48, 1000, 16).items()}
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    want_y, want_last = run_scan(leaves, "reference", reverse)
    want = torch.autograd.grad(want_y.sum() + want_last.sum(), list(leaves.values()))
    leaves = {k: v.float().requires_grad_() for k, v in x.items()}
    y, last = run_scan(leaves, "triton", reverse)
    got = torch.autograd.grad(y.sum() + last.sum(), list(leaves.values()))
    torch.testing.assert_close(y.double(), want_y.detach(), rtol=6e-4, atol=2e-3)
    for name, a, b in zip(x, got, want):
        torch.testing.assert_close(a.double(), b, rtol=6e-4, atol=2e-3, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("batch, T, C, block_c, key_scale", [
    (2, 5, 6, 4, 8.0),  # two channel blocks, the second ragged; keys of +-20 stress the log-space sums
    (1, 1, 3, 32, 1.0),  # one token: only its own weight
])
def test_bi_wkv_gradients_match_reference(batch, T, C, block_c, key_scale):
    from effviz.kernels.bi_wkv.triton_backend import bi_wkv_triton

    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(C, generator=g, dtype=torch.float64), torch.randn(C, generator=g, dtype=torch.float64),
              key_scale * torch.randn(batch, T, C, generator=g, dtype=torch.float64),
              torch.randn(batch, T, C, generator=g, dtype=torch.float64)]
    weight = torch.randn(batch, T, C, generator=g, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in inputs]
    want_y = bi_wkv_reference(*leaves)
    want = torch.autograd.grad((want_y * weight).sum(), leaves)
    leaves = [t.float().to(DEVICE).requires_grad_() for t in inputs]
    y = bi_wkv_triton(*leaves, block_c=block_c)
    got = torch.autograd.grad((y.double() * weight.to(DEVICE)).sum(), leaves)
    torch.testing.assert_close(y.cpu().double(), want_y.detach(), rtol=RTOL, atol=ATOL)
    for name, a, b in zip("wukv", got, want):
        torch.testing.assert_close(a.cpu().double(), b, rtol=RTOL, atol=ATOL, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.skipif(DEVICE != "cuda", reason="the default backend picks triton only for CUDA tensors")
def test_default_backend_trains_on_triton_on_cuda(caplog, monkeypatch):
    """With gradients needed on a GPU, the dispatcher now picks the Triton kernels, not torch's loops."""
    from effviz.kernels import dispatch

    monkeypatch.setattr(dispatch, "_logged", set())  # it logs each choice once per process
    x = {k: v.float().cuda().requires_grad_() for k, v in scan_inputs(1, 4, 70, 16).items()}
    with caplog.at_level("INFO", logger="effviz.kernels"):
        y = selective_scan(**x, delta_softplus=True)
        y.sum().backward()
        out = bi_wkv(x["D"], x["delta_bias"], x["u"].transpose(1, 2), x["z"].transpose(1, 2))
        out.sum().backward()
    assert all(t.grad is not None for t in x.values())
    assert "selective_scan: using the triton backend on cuda" in caplog.text
    assert "bi_wkv: using the triton backend on cuda" in caplog.text
