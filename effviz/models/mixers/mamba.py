"""Mamba mixers: Vision Mamba's bidirectional one ("bimamba v2", hustvl/Vim) and the causal one of
the original Mamba, which streams.

In Vim one shared input projection feeds a forward and a backward Mamba branch, each with its own
causal depthwise conv, projections, A and D. The backward branch runs the same kernels with
``reverse=True`` instead of flipping the sequence twice.

Two paths compute the same bimamba forward. The readable one composes ``causal_conv1d`` and
``selective_scan`` per branch and serves training and every backend. For inference on the ``cpu``
backend (no autograd, fp32 CPU tensors) ``BiMamba`` takes the fused one: one C call for both
branches' convs (one per chunk of ``FUSED_CHUNK`` tokens in a longer sequence), x_proj as one
matmul per branch, one C call for dt_proj, both scans, their sum, the gate and the averaging
(``kernels.mamba_inner``), writing over z. That is 6 ops per block
instead of ~30, and no (batch, d_inner, L) delta, y or sum tensor at all. The causal mixer is one forward branch:
its state, the conv's last inputs and the scan's (d_inner, d_state) state, is all it needs to go on
from one chunk of a stream to the next.
"""
from __future__ import annotations

import functools
import math
import os

import torch
from torch import nn

from ...kernels import causal_conv1d, native, selective_scan
from ...kernels.dispatch import BACKENDS
from ...kernels.mamba_inner import Branch, mamba_conv_cpu, mamba_inner_cpu
from ..layers import TokenLayout

# Tests and A/B benchmarks turn the fused inference path off to compare it with the readable one.
FUSED_INFERENCE = True
# Longer sequences than this make their conv outputs a chunk of this many tokens at a time on the
# fused path (Vim-Ti at 1248 px: 6,085 tokens, whose two conv outputs would be 19 MB beside the
# 19 MB input projection). Up to it (Vim-Ti to 496 px) the whole conv output is kept and read once.
FUSED_CHUNK = 1024


@functools.cache
def _fused_backend(env_backend: str | None) -> bool:
    """Whether the cpu backend is the one ``selective_scan`` would pick for fp32 CPU inputs, given
    $EFFVIZ_BACKEND: set to cpu, or unset/unknown (the default is cpu when the library builds)."""
    if env_backend in BACKENDS and env_backend != "cpu":
        return False
    return native.available()


def use_fused_inference(hidden: torch.Tensor, module: nn.Module) -> bool:
    """True for eager inference on the cpu backend: no autograd, fp32 CPU input and weights. A
    graph being compiled takes the readable path, whose kernels are registered torch ops."""
    if not FUSED_INFERENCE or torch.compiler.is_compiling() or hidden.device.type != "cpu" \
            or hidden.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in module.parameters())):
        return False
    return module.in_proj.weight.dtype == torch.float32 and _fused_backend(os.environ.get("EFFVIZ_BACKEND") or None)


def channel_major_linear(weight: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """A bias-free linear layer whose output comes out channel-major: (batch, L, in) ->
    (batch, out, L), contiguous. The convs and scans read rows of time; a transposed view of a
    token-major output costs a strided copy in each of them, which at Vim-Ti's 224 px was a tenth
    of the forward. bmm writes this layout directly (torch.matmul computes the token-major
    product and copies it).

    Under autograd the token-major product plus one copy is used instead: the backward of bmm over
    an expanded weight materialises a (batch, out, in) weight gradient per example before summing
    it, which was a fifth of a Vim training step."""
    if torch.is_grad_enabled() and (weight.requires_grad or tokens.requires_grad):
        return torch.nn.functional.linear(tokens, weight).transpose(1, 2).contiguous()
    return torch.bmm(weight.expand(tokens.shape[0], -1, -1), tokens.transpose(1, 2))


class MambaBranch(nn.Module):
    """conv1d + SiLU -> x_proj -> (dt, B, C) -> selective scan with D skip and SiLU(z) gate."""

    def __init__(self, d_inner: int, d_state: int, dt_rank: int, d_conv: int):
        super().__init__()
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner)  # holds (d_inner, 1, k) weights
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        # S4D-real init, A = -(1..N), and dt initialised log-uniform in [1e-3, 1e-1] through the
        # inverse softplus of the bias: the Mamba paper's choices.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        nn.init.uniform_(self.dt_proj.weight, -(dt_rank**-0.5), dt_rank**-0.5)
        dt = torch.exp(torch.rand(d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        for p in (self.A_log, self.D, self.dt_proj.weight, self.dt_proj.bias):
            p._no_reinit = True  # the backbone's generic init must not overwrite these

    def fused_params(self) -> Branch:
        """The parameters the fused cpu kernels read (views, no copies for fp32 weights)."""
        return Branch(self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                      self.dt_proj.bias, self.A_log, self.D)

    def scan_inputs(self, x: torch.Tensor, reverse: bool) -> dict[str, torch.Tensor]:
        """The selective scan's arguments for x (batch, d_inner, L): u (x after the causal conv
        and SiLU), delta (before its bias and softplus), A, B, C, D and delta_bias."""
        u = causal_conv1d(x, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu", reverse=reverse)
        # dt, B and C come out channel-major too, as the scan takes them.
        dt, B, C = channel_major_linear(self.x_proj.weight, u.transpose(1, 2)).split(
            [self.dt_rank, self.d_state, self.d_state], dim=1)
        delta = channel_major_linear(self.dt_proj.weight, dt.transpose(1, 2))
        return dict(u=u, delta=delta, A=-torch.exp(self.A_log.float()), B=B, C=C, D=self.D.float(),
                    delta_bias=self.dt_proj.bias.float())

    def forward(self, x: torch.Tensor, z: torch.Tensor, reverse: bool) -> torch.Tensor:
        """x, z: (batch, d_inner, L) -> (batch, d_inner, L)."""
        return selective_scan(**self.scan_inputs(x, reverse), z=z, delta_softplus=True, reverse=reverse)

    def stream(self, x: torch.Tensor, z: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The forward branch on the next chunk of a stream: x, z (batch, d_inner, L) and the state
        after the previous chunk (None at the start) -> output and the state after this one:
        (the conv's last d_conv - 1 inputs, the scan's (batch, d_inner, d_state) fp32 state)."""
        conv_state, scan_state = state if state is not None else (None, None)
        u, conv_state = causal_conv1d(x, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu",
                                      initial_state=conv_state, return_final_state=True)
        dt, B, C = channel_major_linear(self.x_proj.weight, u.transpose(1, 2)).split(
            [self.dt_rank, self.d_state, self.d_state], dim=1)
        delta = channel_major_linear(self.dt_proj.weight, dt.transpose(1, 2))
        y, scan_state = selective_scan(u, delta, -torch.exp(self.A_log.float()), B, C, D=self.D.float(), z=z,
                                       delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                                       return_last_state=True, initial_state=scan_state)
        return y, (conv_state, scan_state)


class BiMamba(nn.Module):
    def __init__(self, dim: int, d_state: int = 16, expand: int = 2, d_conv: int = 4):
        super().__init__()
        d_inner = expand * dim
        dt_rank = math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.fwd = MambaBranch(d_inner, d_state, dt_rank, d_conv)
        self.bwd = MambaBranch(d_inner, d_state, dt_rank, d_conv)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, hidden: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        if use_fused_inference(hidden, self):
            return self.forward_fused(hidden)
        # x feeds both branches' convs and scans; z gates their outputs. Both (batch, d_inner, L).
        x, z = channel_major_linear(self.in_proj.weight, hidden).chunk(2, dim=1)
        y = self.fwd(x, z, reverse=False).add_(self.bwd(x, z, reverse=True))
        # Vim v2 averages the two directions: halving the (batch, L, dim) output costs half of
        # halving the (batch, d_inner, L) sum.
        return self.out_proj(y.transpose(1, 2)).mul_(0.5)

    def forward_fused(self, hidden: torch.Tensor) -> torch.Tensor:
        """``forward`` for cpu inference, by the fused kernels: (batch, L, dim) -> (batch, L, dim).

        out = out_proj(0.5 * silu(z) * (y_fwd + y_bwd)), each y a branch's scan with its D skip,
        as in ``forward``; the 0.5, the sum and the gate happen in the scan kernel, over z. Up to
        ``FUSED_CHUNK`` tokens the conv outputs u are kept for the scan; a longer sequence's are
        made a chunk at a time for x_proj and recomputed inside the scan, so that the mixer holds
        no (2, batch, d_inner, L) tensor beside its input projection."""
        batch, length = hidden.shape[:2]
        x, z = channel_major_linear(self.in_proj.weight, hidden).chunk(2, dim=1)
        branches = (self.fwd.fused_params(), self.bwd.fused_params())
        if length <= FUSED_CHUNK:
            u = mamba_conv_cpu(x, branches)  # (2, batch, d_inner, L)
            xdbl = tuple(self.token_major_x_proj(u[k], br) for k, br in enumerate(branches))
            y = mamba_inner_cpu(u, xdbl, branches, z=z, out=z, scale=0.5)
        else:
            xdbl = tuple(x.new_empty(batch, length, br.x_proj_weight.shape[0]) for br in branches)
            for start in range(0, length, FUSED_CHUNK):
                stop = min(start + FUSED_CHUNK, length)
                u = mamba_conv_cpu(x, branches, start, stop)
                for k, br in enumerate(branches):
                    xdbl[k][:, start:stop] = self.token_major_x_proj(u[k], br)
            del u  # the scan recomputes it: the last chunk need not be held beside it
            y = mamba_inner_cpu(None, xdbl, branches, z=z, out=z, scale=0.5, x=x)
        return torch.bmm(y.transpose(1, 2), self.out_proj.weight.t().expand(batch, -1, -1))

    @staticmethod
    def token_major_x_proj(u: torch.Tensor, branch: Branch) -> torch.Tensor:
        """x_proj of u (batch, d_inner, T) token-major, (batch, T, R + 2N): each step's B and C are
        contiguous for the scan. bmm reads u's transposed view in place (linear would copy it for
        batch > 1)."""
        return torch.bmm(u.transpose(1, 2), branch.x_proj_weight.t().expand(u.shape[0], -1, -1))


class Mamba(nn.Module):
    """The causal Mamba mixer (Gu & Dao, arXiv 2312.00752): input projection to (x, z), one
    branch, output projection. ``forward`` reads a whole sequence; ``step`` the next chunk of a
    stream, with the state the previous chunk left, and gives the same outputs."""

    def __init__(self, dim: int, d_state: int = 16, expand: int = 2, d_conv: int = 4):
        super().__init__()
        d_inner = expand * dim
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.branch = MambaBranch(d_inner, d_state, math.ceil(dim / 16), d_conv)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, hidden: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
        x, z = channel_major_linear(self.in_proj.weight, hidden).chunk(2, dim=1)
        return self.out_proj(self.branch(x, z, reverse=False).transpose(1, 2))

    def step(self, hidden: torch.Tensor, state: tuple | None) -> tuple[torch.Tensor, tuple]:
        x, z = channel_major_linear(self.in_proj.weight, hidden).chunk(2, dim=1)
        y, state = self.branch.stream(x, z, state)
        return self.out_proj(y.transpose(1, 2)), state
