"""Mixture-of-experts channel mixer (V-MoE, Riquelme et al., arXiv:2106.05974; Switch
Transformer, Fedus et al., arXiv:2101.03961): every token goes through k of E MLP experts, so
parameters grow with E while the compute per token grows only with k."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Mlp, TokenLayout


class MoeMlp(nn.Module):
    """Top-k routing over ``num_experts`` MLPs, each taking at most its capacity of tokens.

    Routing: a bias-free linear router gives each token a softmax over the experts; the token goes
    to its ``top_k`` most probable ones, and its output is their outputs weighted by those
    probabilities. The weights are not renormalised over the k chosen, as in Switch and V-MoE:
    with k = 1 the probability then still carries a gradient to the router.

    Capacity: an expert takes at most ceil(capacity_factor · tokens · k / E) tokens per forward,
    counted over the whole batch. Assignments are served choice by choice (every token's first
    choice before any second choice), then in token order, as in GShard and V-MoE; one past its
    expert's capacity is dropped. A token whose assignments are all dropped comes out as zero, so
    the block's residual stream carries it past unchanged. Dropping depends on the other tokens of
    the batch, so in inference too a token's output can depend on what it is batched with.

    Compute: each expert gathers the tokens given to it, runs its MLP on them alone and
    scatter-adds the weighted result back; a loop over experts, none over tokens. A forward costs
    the router plus k expert MLPs per token routed (dropped ones cost nothing), never E, and
    ``torch.utils.flop_counter`` counts exactly that.

    Load balancing: each forward sets ``balance_loss`` = balance_weight · E · Σ_e f_e · P_e
    (Switch), f_e the share of the k · tokens assignments that chose expert e (before capacity)
    and P_e the mean router probability of e. It equals balance_weight when routing is uniform and
    grows as it concentrates on a few experts, which would then drop tokens; only P_e carries a
    gradient. ``EffvizModel.auxiliary_loss`` sums it over the blocks for the training loss.
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int, capacity_factor: float,
                 balance_weight: float):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be between 1 and num_experts ({num_experts}), got {top_k}")
        if capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be positive, got {capacity_factor}")
        self.top_k, self.capacity_factor, self.balance_weight = top_k, capacity_factor, balance_weight
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.experts = nn.ModuleList(Mlp(dim, hidden) for _ in range(num_experts))
        self.balance_loss: torch.Tensor | None = None  # set by every forward

    def capacity(self, tokens: int) -> int:
        """How many of ``tokens`` tokens one expert takes at most."""
        return math.ceil(self.capacity_factor * tokens * self.top_k / len(self.experts))

    def forward(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        count, num_experts = tokens.shape[0], len(self.experts)
        probs = self.router(tokens).float().softmax(dim=-1)  # (tokens, E)
        gates, choices = probs.topk(self.top_k, dim=-1)  # (tokens, k), best first
        # One row per assignment, choice-major: all first choices, then all second choices...
        expert_of, gate_of = choices.T.reshape(-1), gates.T.reshape(-1)
        token_of = torch.arange(count, device=x.device).repeat(self.top_k)
        chose = F.one_hot(expert_of, num_experts)  # (k * tokens, E)
        place_in_queue = (chose.cumsum(dim=0) * chose).sum(dim=-1) - 1
        served = place_in_queue < self.capacity(count)

        share = chose.float().mean(dim=0)  # f_e: no gradient, as in Switch
        self.balance_loss = self.balance_weight * num_experts * (share * probs.mean(dim=0)).sum()

        out = torch.zeros_like(tokens)
        for index, expert in enumerate(self.experts):
            mine = served & (expert_of == index)
            rows = token_of[mine]
            # Also run for an expert given no tokens: an empty MLP costs nothing, and its
            # parameters get zero gradients instead of none.
            out.index_add_(0, rows, expert(tokens[rows], layout) * gate_of[mine, None].to(x.dtype))
        return out.view(x.shape)
