"""Sliding-window (local) attention, the sparse-attention baseline: O(N·w) time and memory."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layers import TokenLayout
from .attention import Attention


class WindowAttention(Attention):
    """Softmax attention in which each token attends only to the tokens at most ``radius``
    positions away (Longformer's sliding window, Beltagy et al., arXiv:2004.05150), so its cost
    grows as N·(2·radius + 1) instead of N².

    The window is 1-D, over the sequence order, which for a picture is raster order: a window of
    radius r reaches about r / (patches per row) rows above and below a patch, and a patch at the
    end of a row sees the start of the next one. It works unchanged for any modality.

    The class token is global, as in Longformer: it attends to every token, and every token
    attends to it besides its window. The head reads the class token, which with a window alone
    would see only the patches near it (the first rows, for DeiT's first-position token).
    Distances are counted between the other tokens, as if the class token was not in the
    sequence. A distillation token (AST) is not global: it gets a window like a patch.

    Computed in blocks of ``radius`` queries (fewer when the sequence is shorter): block b attends
    to key blocks b-1, b and b+1, which hold every key within reach, plus the class token, through
    SDPA with a mask for the exact window. Nothing (N, N)-sized is ever formed.
    """

    def __init__(self, dim: int, num_heads: int, radius: int):
        super().__init__(dim, num_heads, impl="sdpa")
        if radius < 1:
            raise ValueError(f"window radius must be at least 1, got {radius}")
        self.radius = radius

    def allowed(self, length: int, cls_index: int | None) -> torch.Tensor:
        """(length, length) boolean: which key each query attends to. The dense definition of
        the window, for inspection and tests; ``forward`` never builds it."""
        pos = torch.arange(length)
        local = pos if cls_index is None else pos - (pos > cls_index).long()
        allowed = (local[:, None] - local[None, :]).abs() <= self.radius
        if cls_index is not None:
            allowed[cls_index, :] = allowed[:, cls_index] = True
        return allowed

    def forward(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        q, k, v = self.heads(x)
        cls = layout.cls_index
        if cls is None:
            return self.merge(self._windowed(q, k, v))

        def without_cls(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t[:, :, :cls], t[:, :, cls + 1:]], dim=2)

        patches = self._windowed(without_cls(q), without_cls(k), without_cls(v),
                                 k[:, :, cls:cls + 1], v[:, :, cls:cls + 1])
        cls_out = F.scaled_dot_product_attention(q[:, :, cls:cls + 1], k, v)
        return self.merge(torch.cat([patches[:, :, :cls], cls_out, patches[:, :, cls:]], dim=2))

    def _windowed(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  global_k: torch.Tensor | None = None, global_v: torch.Tensor | None = None) -> torch.Tensor:
        """Each of the (batch, heads, n, head_dim) queries over the keys within ``radius`` of it,
        and over the global keys (batch, heads, g, head_dim) if given."""
        batch, heads, n, head_dim = q.shape
        block = min(self.radius, n)
        blocks = -(-n // block)
        pad = blocks * block - n

        def key_windows(t: torch.Tensor) -> torch.Tensor:
            # One block of padding before, the ragged end and one block after, so every query
            # block has three key blocks: (batch, heads, blocks, 3 * block, head_dim).
            padded = F.pad(t, (0, 0, block, pad + block))
            return padded.unfold(2, 3 * block, block).transpose(-1, -2)

        queries = F.pad(q, (0, 0, 0, pad)).view(batch, heads, blocks, block, head_dim)
        keys, values = key_windows(k), key_windows(v)
        query_pos = torch.arange(blocks * block, device=q.device).view(blocks, block, 1)
        key_pos = (torch.arange(blocks, device=q.device).view(blocks, 1, 1) * block - block
                   + torch.arange(3 * block, device=q.device).view(1, 1, 3 * block))
        # Padded queries (past n) are less than one block, so less than radius, from the last key:
        # no row of the mask is empty.
        mask = ((query_pos - key_pos).abs() <= self.radius) & (key_pos >= 0) & (key_pos < n)
        if global_k is not None:
            extra = (batch, heads, blocks, global_k.shape[2], head_dim)
            keys = torch.cat([keys, global_k[:, :, None].expand(extra)], dim=3)
            values = torch.cat([values, global_v[:, :, None].expand(extra)], dim=3)
            mask = torch.cat([mask, mask.new_ones(blocks, block, global_k.shape[2])], dim=2)
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)
        return out.reshape(batch, heads, blocks * block, head_dim)[:, :, :n]
