"""Token mixers and channel mixers, by config name. Every mixer maps (batch, L, D) -> (batch, L, D)
and takes the sequence's ``TokenLayout``."""
from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from ..layers import Mlp


def build_mixer(cfg: ModelConfig, layer_idx: int) -> nn.Module:
    """The token mixer of block ``layer_idx``: the config's mixer, or its schedule's for a hybrid."""
    kind = cfg.block_mixers()[layer_idx]
    if cfg.causal:
        return _build_causal_mixer(cfg, kind, layer_idx)
    if kind == "mamba":
        from .mamba import BiMamba

        return BiMamba(cfg.embed_dim, cfg.d_state, cfg.expand, cfg.d_conv)
    if kind == "rwkv":
        from .rwkv import SpatialMix

        return SpatialMix(cfg.embed_dim, layer_idx, cfg.depth)
    if kind == "retention":
        from .retention import MultiScaleRetention

        return MultiScaleRetention(cfg.embed_dim, cfg.num_heads)
    if kind == "window_attention":
        from .window_attention import WindowAttention

        return WindowAttention(cfg.embed_dim, cfg.num_heads, cfg.window_radius)
    from .attention import Attention

    return Attention(cfg.embed_dim, cfg.num_heads, cfg.attn_impl)


def _build_causal_mixer(cfg: ModelConfig, kind: str, layer_idx: int) -> nn.Module:
    """The streaming form of a mixer: causal, with a ``step(x, state) -> (y, state)``."""
    if kind == "mamba":
        from .mamba import Mamba

        return Mamba(cfg.embed_dim, cfg.d_state, cfg.expand, cfg.d_conv)
    if kind == "rwkv":
        from .rwkv import TimeMix

        return TimeMix(cfg.embed_dim, layer_idx, cfg.depth)
    if kind == "retention":
        from .retention import MultiScaleRetention

        return MultiScaleRetention(cfg.embed_dim, cfg.num_heads)  # causal by definition
    from .attention import Attention

    return Attention(cfg.embed_dim, cfg.num_heads, cfg.attn_impl, causal=True)


def build_channel_mixer(cfg: ModelConfig, layer_idx: int) -> nn.Module | None:
    hidden = int(cfg.embed_dim * cfg.mlp_ratio)
    if cfg.channel_mixer == "mlp":
        return Mlp(cfg.embed_dim, hidden)
    if cfg.channel_mixer == "moe":
        from .moe import MoeMlp

        return MoeMlp(cfg.embed_dim, hidden, cfg.moe_experts, cfg.moe_top_k, cfg.moe_capacity_factor,
                      cfg.moe_balance_weight)
    if cfg.channel_mixer == "rwkv" and cfg.causal:
        from .rwkv import TimeShiftChannelMix

        return TimeShiftChannelMix(cfg.embed_dim, hidden, layer_idx, cfg.depth)
    if cfg.channel_mixer == "rwkv":
        from .rwkv import ChannelMix

        return ChannelMix(cfg.embed_dim, hidden, layer_idx, cfg.depth)
    if cfg.channel_mixer is None:
        return None
    raise ValueError(f"unknown channel mixer {cfg.channel_mixer!r}")
