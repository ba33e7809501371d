"""The cpu (C) backend's ops as torch custom ops: opcheck of each registration, and torch.compile /
torch.export of the ops and of small models running on them, against eager.

Op-level compiles use the "aot_eager" backend: it runs dynamo (fullgraph=True: a graph break
fails), the fake implementations and AOT autograd, which is all a registration can get wrong,
without inductor's C++ code generation (tens of seconds a graph on this 2-core machine). The
model-level compiles use "inductor", the default, so the ops are known to work in the compiler
that users get.
"""
from __future__ import annotations

import pytest
import torch

from effviz.kernels import (bi_wkv, causal_conv1d, native, retention, rms_norm, selective_scan,
                            selective_state_update, wkv)
from effviz.kernels.bi_wkv.cpu_backend import bi_wkv_cpu
from effviz.kernels.causal_conv1d.cpu_backend import causal_conv1d_cpu
from effviz.kernels.retention.cpu_backend import retention_recurrent_op
from effviz.kernels.rms_norm.cpu_backend import rms_norm_cpu
from effviz.kernels.selective_scan.cpu_backend import selective_scan_op, state_update_cpu
from effviz.kernels.wkv.cpu_backend import wkv_op
from effviz.models import create_model

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the cpu backend is off")

TOL = dict(rtol=1e-5, atol=1e-6)


def randn(*shape: int, grad: bool = False) -> torch.Tensor:
    return torch.randn(*shape).requires_grad_(grad)


def scan_inputs(grad: bool = False) -> tuple[torch.Tensor, ...]:
    """u, delta, A, Bt, Ct for the op (B and C time-major): batch 2, dim 3, L 5, N 4."""
    u, Bt, Ct = randn(2, 3, 5, grad=grad), randn(2, 5, 4, grad=grad), randn(2, 5, 4, grad=grad)
    delta = torch.rand(2, 3, 5).add_(0.1).requires_grad_(grad)
    A = (-torch.rand(3, 4) - 0.5).requires_grad_(grad)
    return u, delta, A, Bt, Ct


def opcheck_cases() -> list[tuple[str, object, tuple]]:
    """(id, op, args) for every registered op; inputs require grad only where the op has autograd."""
    torch.manual_seed(0)
    u, delta, A, Bt, Ct = scan_inputs(grad=True)
    h0 = randn(2, 3, 4, grad=True)
    fused = (*scan_inputs(), None, torch.randn(3), torch.randn(3), torch.randn(2, 3, 5), True, True)
    dy = torch.randn(2, 3, 5)
    k, v, w, u_bonus = torch.randn(2, 6, 8), torch.randn(2, 6, 8), torch.rand(8), torch.randn(8)
    state = torch.randn(2, 3, 8)
    state[:, 1].abs_().add_(1)  # b >= 1 once a token was seen
    q4, k4, v4 = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 3)
    return [
        ("selective_scan_grad", selective_scan_op, (u, delta, A, Bt, Ct, None, None, None, None, False, False)),
        ("selective_scan_h0_reverse_grad", selective_scan_op, (u, delta, A, Bt, Ct, h0, None, None, None, False, True)),
        ("selective_scan_fused", selective_scan_op, fused),
        ("selective_scan_backward", torch.ops.effviz.selective_scan_cpu_backward,
         (*scan_inputs(), torch.randn(2, 3, 4), dy, torch.randn(2, 3, 4), False)),
        ("selective_state_update", state_update_cpu,
         (torch.randn(2, 3, 4), torch.randn(2, 3), torch.rand(2, 3), -torch.rand(3, 4), torch.randn(2, 4),
          torch.randn(2, 4), torch.randn(3), torch.randn(2, 3), torch.randn(3), True)),
        ("causal_conv1d", causal_conv1d_cpu, (torch.randn(2, 3, 7), torch.randn(3, 4), torch.randn(3), "silu", False,
                                              torch.randn(2, 3, 3))),
        ("causal_conv1d_reverse", causal_conv1d_cpu, (torch.randn(2, 3, 7), torch.randn(3, 4), None, None, True, None)),
        ("rms_norm", rms_norm_cpu, (torch.randn(2, 5, 8), torch.randn(8), torch.randn(2, 5, 8), 1e-5, True)),
        ("rms_norm_half", rms_norm_cpu, (torch.randn(2, 5, 8).half(), torch.randn(8), None, 1e-5, False)),
        ("bi_wkv", bi_wkv_cpu, (w, u_bonus, k, v)),
        ("wkv", wkv_op, (w, u_bonus, k, v, None)),
        ("wkv_state", wkv_op, (w, u_bonus, k, v, state)),
        ("retention", retention_recurrent_op, (q4, k4, v4, torch.tensor([0.9, 0.5]), None)),
        ("retention_state", retention_recurrent_op, (q4, k4, v4, torch.tensor([0.9, 0.5]), torch.randn(2, 2, 4, 3))),
    ]


@pytest.mark.parametrize("case", opcheck_cases(), ids=lambda case: case[0])
def test_opcheck(case):
    """Schema (mutations declared), fake implementation, autograd registration and AOT dispatch."""
    _, op, args = case
    torch.library.opcheck(op, args)


def test_state_update_mutates_state_in_compiled_graph():
    """The in-place state of ``selective_state_update`` is declared, so the compiled graph writes it
    back: two compiled steps leave the state eager leaves."""
    torch.manual_seed(0)
    args = (torch.randn(2, 3), torch.rand(2, 3), -torch.rand(3, 4), torch.randn(2, 4), torch.randn(2, 4))
    eager_state, compiled_state = torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)

    def two_steps(state, x, dt, A, B, C):
        y1 = selective_state_update(state, x, dt, A, B, C, dt_softplus=True, backend="cpu")
        y2 = selective_state_update(state, x * 2, dt, A, B, C, dt_softplus=True, backend="cpu")
        return y1 + y2

    compiled = torch.compile(two_steps, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        want = two_steps(eager_state, *args)
        got = compiled(compiled_state, *args)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(compiled_state, eager_state, **TOL)
    assert eager_state.abs().sum() > 0


def op_calls() -> list[tuple[str, object, tuple]]:
    """(id, function, args): each public op on the cpu backend, as the models call it."""
    torch.manual_seed(0)
    u, delta, A, Bt, Ct = scan_inputs()
    B, C = Bt.transpose(1, 2), Ct.transpose(1, 2)
    D, z, bias = torch.randn(3), torch.randn(2, 3, 5), torch.randn(3)
    k, v, w, bonus = torch.randn(2, 6, 8), torch.randn(2, 6, 8), torch.rand(8), torch.randn(8)
    q4, k4, v4 = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 3)
    return [
        ("selective_scan", lambda *a: selective_scan(*a, D=D, z=z, delta_bias=bias, delta_softplus=True,
                                                     return_last_state=True, backend="cpu"), (u, delta, A, B, C)),
        ("causal_conv1d", lambda x, wt: causal_conv1d(x, wt, bias, "silu", reverse=True, backend="cpu"),
         (torch.randn(2, 3, 7), torch.randn(3, 4))),
        ("rms_norm", lambda x, weight, r: rms_norm(x, weight, r, backend="cpu"),
         (torch.randn(2, 5, 8), torch.randn(8), torch.randn(2, 5, 8))),
        ("bi_wkv", lambda *a: bi_wkv(*a, backend="cpu"), (w, bonus, k, v)),
        ("wkv", lambda *a: wkv(*a, return_state=True, backend="cpu"), (w, bonus, k, v)),
        ("retention", lambda *a: retention(*a, mode="recurrent", return_state=True, backend="cpu"),
         (q4, k4, v4, torch.tensor([0.9, 0.5]))),
    ]


@pytest.mark.parametrize("case", op_calls(), ids=lambda case: case[0])
def test_public_op_compiles_without_graph_break(case):
    """fullgraph=True: the whole public function, checks and backend choice included, is one graph
    around the custom op, and gives eager's result."""
    _, fn, args = case
    with torch.no_grad():
        want = fn(*args)
        got = torch.compile(fn, backend="aot_eager", fullgraph=True)(*args)
    torch.testing.assert_close(got, want, **TOL)


def test_selective_scan_gradients_compile_through_the_c_backward():
    """Under autograd the cpu backend's registered backward (the C kernel) runs in the compiled
    graph and gives eager's gradients, initial state included."""
    torch.manual_seed(0)
    u, delta, A, Bt, Ct = scan_inputs(grad=True)
    B, C = Bt.detach().transpose(1, 2).requires_grad_(), Ct.detach().transpose(1, 2).requires_grad_()
    h0 = randn(2, 3, 4, grad=True)
    inputs = (u, delta, A, B, C, h0)

    def loss(u, delta, A, B, C, h0):
        y, last = selective_scan(u, delta, A, B, C, D=torch.ones(3), delta_softplus=True, initial_state=h0,
                                 return_last_state=True, backend="cpu")
        return y.square().sum() + last.sum()

    want = torch.autograd.grad(loss(*inputs), inputs)
    got = torch.autograd.grad(torch.compile(loss, backend="aot_eager", fullgraph=True)(*inputs), inputs)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, **TOL)


# One model per mixer with a C kernel: Vim (causal_conv1d, selective_scan, rms_norm), Vision-RWKV
# (bi_wkv), ViR (retention; eval mode runs the chunk form, which has no C kernel, so its ops are
# torch's: the model is here because its mixer's checks must not break the graph either).
MODEL_ARCHS = ["vim-tiny", "vrwkv-tiny", "vir-tiny"]


def tiny_model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(arch, depth=2, embed_dim=48, num_classes=10).eval()


@pytest.mark.parametrize("arch", MODEL_ARCHS)
def test_model_compiles_with_inductor(arch, monkeypatch):
    monkeypatch.setenv("EFFVIZ_BACKEND", "cpu")
    model = tiny_model(arch)
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = model(image=image)
        got = torch.compile(model, fullgraph=True)(image=image)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_export_keeps_the_c_ops_in_the_graph(monkeypatch):
    monkeypatch.setenv("EFFVIZ_BACKEND", "cpu")
    model = tiny_model("vim-tiny")
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        exported = torch.export.export(model, (), {"image": image})
        want = model(image=image)
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert {"effviz.selective_scan_cpu.default", "effviz.causal_conv1d_cpu.default",
            "effviz.rms_norm_cpu.default"} <= targets
    torch.testing.assert_close(exported.module()(image=image), want, rtol=1e-4, atol=1e-5)


def test_retention_checks_gamma_in_eager_and_compiled_code():
    """Eager code reads gamma and raises a ValueError; a compiled graph cannot read it while
    tracing, so it asserts in the graph instead, and still refuses a decay outside (0, 1)."""
    q = torch.randn(1, 2, 3, 4)
    bad = torch.tensor([1.5, 0.5])
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        retention(q, q, q, bad)
    compiled = torch.compile(lambda q, gamma: retention(q, q, q, gamma), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, torch.tensor([0.9, 0.5])), retention(q, q, q, torch.tensor([0.9, 0.5])))
    with pytest.raises(RuntimeError, match="strictly between 0 and 1"):
        compiled(q, bad)
