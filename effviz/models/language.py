"""A causal language model on the shared backbone: the modality table's text row.

    token ids (batch, L) -> embedding -> causal blocks (the backbone's ``Block`` with the causal
    mixers the streaming transcriber uses) -> final norm -> next-token logits on every token

No position embedding: the recurrences of Mamba, RWKV and RetNet and the transformer's causal
mask order the tokens (a causal transformer without one still learns positions, Haviv et al.,
arXiv 2203.16634), and a benchmark over token length then has no trained length to resize an
embedding from. Every layer is causal or per-token, so the logits at position t never depend on
the tokens after t. ``forward`` reads the whole sequence in one pass, each mixer in its parallel
or chunked form: what a prompt costs, not token-by-token decoding.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbone import Block, _init_weights
from .config import ModelConfig
from .layers import AddNorm


class LanguageModel(nn.Module):
    """``forward(tokens)``: (batch, L) integer ids below ``config.num_classes`` (the vocabulary)
    -> (batch, L, num_classes) logits of the next token."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.modalities != ("text",) or not config.causal:
            raise ValueError("a LanguageModel is built from a causal text config (modalities=('text',), causal=True)")
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.num_classes, cfg.embed_dim)
        # RWKV normalises the embeddings before the first block (its ln0), as Vision-RWKV does.
        self.input_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if cfg.input_norm else None
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.norm_f = AddNorm(cfg.embed_dim, cfg.norm, cfg.norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes, bias=False)
        self.apply(_init_weights)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"expected (batch, length) integer token ids, got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.numel() and not 0 <= int(tokens.min()) <= int(tokens.max()) < self.config.num_classes:
            raise ValueError(f"token ids must lie in 0..{self.config.num_classes - 1}")
        h = self.embed(tokens)
        if self.input_norm is not None:
            h = self.input_norm(h)
        residual = None
        for block in self.blocks:
            h, residual = block(h, residual, None)
        return self.head(self.norm_f(h, residual)[0])
