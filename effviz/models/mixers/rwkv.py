"""Vision-RWKV's token mixer (spatial mix) and channel mixer, as in the official VRWKV-T
(OpenGVLab/Vision-RWKV, ``classification/mmcls_custom/models/backbones/vrwkv.py``).

Both start with Q-shift: a quarter of the channels each take the value of the patch to their left,
right, above and below, so every linear projection sees a 3x3-cross neighbourhood for free. Each
projection input is ``x * mu + shift(x) * (1 - mu)`` with its own learned per-channel ``mu``.

Parameter names and shapes are the official ones (``spatial_decay``, ``spatial_mix_k`` ...), so a
checkpoint's ``layers.{i}.att.*`` / ``layers.{i}.ffn.*`` keys map 1:1 onto ``blocks.{i}.mixer.*`` /
``blocks.{i}.ffn.*``. The tiny model has no key norm and no layer scale, so neither exists here.

The causal mixers of a streaming transcriber are RWKV-4's (BlinkDL/RWKV-LM, arXiv 2305.13048):
the same projections and init, but the shift is a token shift (every channel takes the previous
token's value) and the WKV runs over the past only, with a fixed decay (a stream has no length to
divide it by). Their state from one chunk to the next: the last token, and WKV's running sums.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...kernels import bi_wkv, wkv
from ..layers import TokenLayout


def q_shift(x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Shift channel quarters of (batch, h*w, C) tokens by one patch on their (h, w) grid, zero fill.

    Quarter 0 moves right (each patch takes its left neighbour), quarter 1 left, quarter 2 down
    (takes the patch above), quarter 3 up. Quarter i ends at channel C*(i+1)//4 as in the official
    code, so when C is not a multiple of 4 the quarters differ in size and every channel shifts.
    """
    if layout.grid is None:
        raise ValueError(
            "Vision-RWKV's Q-shift needs the 2-D patch grid of the tokens, but this sequence has none "
            "(several modalities in one sequence?); use a mixer without spatial shifts for it"
        )
    h, w = layout.grid
    batch, length, channels = x.shape
    if length != h * w:
        raise ValueError(
            f"Vision-RWKV's Q-shift needs exactly the {h}x{w} grid's {h * w} tokens, got {length} "
            "(a class token in the sequence?)"
        )
    c1, c2, c3 = (channels * i // 4 for i in range(1, 4))
    grid = x.reshape(batch, h, w, channels)
    out = torch.zeros_like(grid)
    out[:, :, 1:, :c1] = grid[:, :, :-1, :c1]
    out[:, :, :-1, c1:c2] = grid[:, :, 1:, c1:c2]
    out[:, 1:, :, c2:c3] = grid[:, :-1, :, c2:c3]
    out[:, :-1, :, c3:] = grid[:, 1:, :, c3:]
    return out.view(batch, length, channels)


def _layer_ratios(layer_idx: int, depth: int) -> tuple[float, float]:
    """The official init's depth schedule: (0 -> 1 over the layers, 1 -> 1/depth over the layers).

    The official code divides by depth - 1 and so cannot build a 1-layer model; we take 0 there.
    """
    return layer_idx / max(depth - 1, 1), 1.0 - layer_idx / depth


def _channel_fraction(dim: int) -> torch.Tensor:
    """(1, 1, dim) tensor of c / dim: the base of the official "fancy" mix init."""
    return (torch.arange(dim, dtype=torch.float32) / dim).view(1, 1, dim)


def _token_mix_init(dim: int, layer_idx: int, depth: int) -> dict[str, nn.Parameter]:
    """The official "fancy" init of a token mixer: decays from -5 (slowest) to 3 across channels,
    sharper in deeper layers; the token's own bonus log(0.3) with a +-0.5 zigzag; mixes closer to
    the unshifted token in deeper layers. Keys: decay, first, mix_k, mix_v, mix_r."""
    rising, falling = _layer_ratios(layer_idx, depth)
    channel_pos = torch.linspace(0, 1, dim)
    zigzag = 0.5 * ((torch.arange(dim) + 1) % 3 - 1).float()
    fraction = _channel_fraction(dim)
    return {
        "decay": nn.Parameter(-5 + 8 * channel_pos ** (0.7 + 1.3 * rising)),
        "first": nn.Parameter(math.log(0.3) + zigzag),
        "mix_k": nn.Parameter(fraction**falling),
        "mix_v": nn.Parameter(fraction**falling + 0.3 * rising),
        "mix_r": nn.Parameter(fraction ** (0.5 * falling)),
    }


class SpatialMix(nn.Module):
    """Q-shift -> k, v, r projections -> Bi-WKV over all tokens -> ``output(sigmoid(r) * wkv)``."""

    def __init__(self, dim: int, layer_idx: int, depth: int):
        super().__init__()
        for name, param in _token_mix_init(dim, layer_idx, depth).items():
            setattr(self, f"spatial_{name}", param)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.output = nn.Linear(dim, dim, bias=False)

    def keys_values(self, x: torch.Tensor, layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """k, v, r of (batch, L, dim) tokens, each (batch, L, dim), computed from the Q-shifted tokens."""
        shifted = q_shift(x, layout)
        # lerp(shifted, x, mu) = x * mu + shifted * (1 - mu), in one pass.
        k = self.key(torch.lerp(shifted, x, self.spatial_mix_k))
        v = self.value(torch.lerp(shifted, x, self.spatial_mix_v))
        r = self.receptance(torch.lerp(shifted, x, self.spatial_mix_r))
        return k, v, r

    def decay_and_bonus(self, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Bi-WKV's (w, u) for a sequence of ``tokens``: divided by the token count, so one set of
        weights spans the whole image at any resolution (the official model does this too)."""
        return self.spatial_decay / tokens, self.spatial_first / tokens

    def forward(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        k, v, r = self.keys_values(x, layout)
        wkv = bi_wkv(*self.decay_and_bonus(x.shape[1]), k, v)
        return self.output(torch.sigmoid(r) * wkv)


class ChannelMix(nn.Module):
    """Q-shift -> ``sigmoid(receptance(xr)) * value(relu(key(xk)) ** 2)``: RWKV's gated squared-ReLU MLP."""

    def __init__(self, dim: int, hidden: int, layer_idx: int, depth: int):
        super().__init__()
        _, falling = _layer_ratios(layer_idx, depth)
        fraction = _channel_fraction(dim)
        self.spatial_mix_k = nn.Parameter(fraction**falling)
        self.spatial_mix_r = nn.Parameter(fraction**falling)
        self.key = nn.Linear(dim, hidden, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        shifted = q_shift(x, layout)
        k = torch.relu(self.key(torch.lerp(shifted, x, self.spatial_mix_k))).square()
        r = self.receptance(torch.lerp(shifted, x, self.spatial_mix_r))
        return torch.sigmoid(r) * self.value(k)


def token_shift(x: torch.Tensor, last: torch.Tensor | None) -> torch.Tensor:
    """(batch, L, C) tokens moved one step later: each takes the previous token's value, the first
    one ``last`` (the previous chunk's last token; zeros at the start of a stream)."""
    first = x.new_zeros(x.shape[0], 1, x.shape[2]) if last is None else last[:, None].to(x.dtype)
    return torch.cat([first, x[:, :-1]], dim=1)


class TimeMix(nn.Module):
    """RWKV-4's causal token mixer: token shift -> k, v, r -> WKV over the past ->
    ``output(sigmoid(r) * wkv)``. The decay rate per channel is ``exp(time_decay)``."""

    def __init__(self, dim: int, layer_idx: int, depth: int):
        super().__init__()
        for name, param in _token_mix_init(dim, layer_idx, depth).items():
            setattr(self, f"time_{name}", param)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.output = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
        k, v, r = self.keys_values(x, token_shift(x, None))
        return self.output(torch.sigmoid(r) * wkv(*self.decay_and_bonus(), k, v))

    def step(self, x: torch.Tensor, state: tuple | None) -> tuple[torch.Tensor, tuple]:
        """Next chunk (batch, L, dim); state: (last token (batch, dim), WKV's (batch, 3, dim) sums)."""
        last, sums = state if state is not None else (None, None)
        k, v, r = self.keys_values(x, token_shift(x, last))
        out, sums = wkv(*self.decay_and_bonus(), k, v, state=sums, return_state=True)
        return self.output(torch.sigmoid(r) * out), (x[:, -1], sums)

    def keys_values(self, x: torch.Tensor, shifted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """k, v, r of (batch, L, dim) tokens given the same tokens shifted one step later."""
        k = self.key(torch.lerp(shifted, x, self.time_mix_k))
        v = self.value(torch.lerp(shifted, x, self.time_mix_v))
        r = self.receptance(torch.lerp(shifted, x, self.time_mix_r))
        return k, v, r

    def decay_and_bonus(self) -> tuple[torch.Tensor, torch.Tensor]:
        """WKV's (w, u): the positive decay rate exp(time_decay), and the bonus."""
        return torch.exp(self.time_decay), self.time_first


class TimeShiftChannelMix(ChannelMix):
    """RWKV-4's channel mixer: ChannelMix with a token shift in place of the Q-shift; its state
    is the last token."""

    stateful = True

    def forward(self, x: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
        return self.step(x, None)[0]

    def step(self, x: torch.Tensor, last: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        shifted = token_shift(x, last)
        k = torch.relu(self.key(torch.lerp(shifted, x, self.spatial_mix_k))).square()
        r = self.receptance(torch.lerp(shifted, x, self.spatial_mix_r))
        return torch.sigmoid(r) * self.value(k), x[:, -1]
