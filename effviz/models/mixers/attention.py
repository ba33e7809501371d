"""Softmax attention, the O(N^2) baseline (DeiT, AST), and its causal form, which streams with a
key-value cache that grows with every token."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import TokenLayout


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    ``impl="sdpa"`` uses torch's fused scaled_dot_product_attention (memory-efficient kernels where
    available); ``impl="eager"`` materialises the (L, L) attention matrix, as the papers' baselines
    did, so users can see both costs.
    """

    def __init__(self, dim: int, num_heads: int, impl: str = "sdpa", causal: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        if impl not in ("sdpa", "eager"):
            raise ValueError(f"unknown attention impl {impl!r}")
        self.num_heads, self.impl, self.causal = num_heads, impl, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # Xavier, not the backbone's truncated normal 0.02: at that scale the attention logits start
        # with a spread of ~0.04, every token attends uniformly, and a small model trained for a few
        # epochs leaves that state late (bundled DeiT, 2-epoch CIFAR run: 46.8%, with Xavier 48.9%).
        nn.init.xavier_uniform_(self.qkv.weight)
        self.qkv.weight._no_reinit = True

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of (batch, L, dim) tokens, each (batch, heads, L, head_dim)."""
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def merge(self, heads_out: torch.Tensor) -> torch.Tensor:
        """(batch, heads, L, head_dim) mixed values -> the (batch, L, dim) output."""
        batch, heads, length, head_dim = heads_out.shape
        return self.proj(heads_out.transpose(1, 2).reshape(batch, length, heads * head_dim))

    def forward(self, x: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
        q, k, v = self.heads(x)
        return self.merge(self._attend(q, k, v))

    def step(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Causal attention over the next chunk (batch, L, dim) of a stream: its queries see every
        key so far. The cache, the keys and values of all earlier tokens (each (batch, heads,
        tokens, head_dim)), grows by L tokens."""
        if not self.causal:
            raise ValueError("only causal attention streams: a bidirectional token needs the keys that follow it")
        q, k, v = self.heads(x)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        return self.merge(self._attend(q, k, v)), (k, v)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Softmax attention of q over k, v; causal: query i is the (keys - queries + i)-th token."""
        mask = None
        if self.causal:  # a query sees its own key and every earlier one
            queries, keys = q.shape[2], k.shape[2]
            mask = torch.arange(keys, device=q.device) <= torch.arange(keys - queries, keys, device=q.device)[:, None]
        if self.impl == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(dim=-1) @ v
