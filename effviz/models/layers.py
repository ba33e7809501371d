"""Pieces every model shares: patch tokenizers with resizable position embeddings, and norms
that fold the residual add into the normalisation (Vim's fused add+norm, used by all models)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import rms_norm


@dataclass(frozen=True)
class TokenLayout:
    """What a mixer may need to know about the sequence: the 2-D patch grid of its tokens (for
    Vision-RWKV's Q-shift) when the sequence is exactly one grid, and where the class token sits."""

    grid: tuple[int, int] | None
    cls_index: int | None


def resample_grid(pos: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Resize a (1, gh*gw, D) position embedding to another grid, bicubic as in DeiT and VRWKV."""
    if tuple(grid) == tuple(new_grid):
        return pos
    dim = pos.shape[-1]
    image = pos.reshape(1, grid[0], grid[1], dim).permute(0, 3, 1, 2)
    image = F.interpolate(image.float(), size=new_grid, mode="bicubic", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos.dtype)


class PatchTokenizer(nn.Module):
    """Conv patches (non-overlapping unless ``stride`` < ``patch_size``, as AST's) plus a learned
    absolute position embedding.

    ``patch_size`` and ``stride`` are a side or a (height, width) pair: the small speech models
    tokenize full-spectrum strips, (mel_bins, a few frames). The embedding is stored for ``grid``
    and resampled for any other grid, so every model runs at any resolution that is a multiple of
    the patch size, and any aspect ratio.

    The optional stem (small bundled image models): ``stem_depth`` 3x3 convs of ``stem_channels``
    at full resolution, then with ``stem_stride`` 2 one more that halves it.
    """

    def __init__(self, in_chans: int, patch_size: int | tuple[int, int], dim: int, grid: tuple[int, int],
                 stem_channels: int = 0, stem_depth: int = 1, stem_stride: int = 1, stride: int | tuple[int, int] = 0):
        super().__init__()
        self.kernel = _pair(patch_size)
        self.stride = _pair(stride) if stride else self.kernel  # < patch_size: overlapping patches (AST)
        if stem_channels and (self.stride != self.kernel or self.kernel[0] != self.kernel[1]):
            raise ValueError("a stem goes with square, non-overlapping patches only")
        if stem_stride not in (1, 2) or self.kernel[0] % stem_stride or (stem_stride == 2 and not stem_channels):
            raise ValueError(f"stem_stride {stem_stride} needs stem channels and must be 1 or 2 dividing the patch size")
        if stem_depth < 1 or (stem_depth > 1 and not stem_channels):
            raise ValueError(f"stem_depth {stem_depth} must be >= 1, and above 1 needs stem channels")
        self.grid = tuple(grid)
        self.stem = None
        out_chans = in_chans
        if stem_channels:
            layers = [nn.Conv2d(in_chans, stem_channels, 3, padding=1), nn.GELU()]
            for _ in range(stem_depth - 1):
                layers += [nn.Conv2d(stem_channels, stem_channels, 3, padding=1), nn.GELU()]
            out_chans = stem_channels
            if stem_stride == 2:  # then a conv that halves the resolution and doubles the channels
                layers += [nn.Conv2d(stem_channels, 2 * stem_channels, 3, stride=2, padding=1), nn.GELU()]
                out_chans = 2 * stem_channels
            self.stem = nn.Sequential(*layers)
        # patch_size is the total stride from pixels to tokens; the stem has taken stem_stride of it.
        self.proj = nn.Conv2d(out_chans, dim, kernel_size=tuple(k // stem_stride for k in self.kernel),
                              stride=tuple(s // stem_stride for s in self.stride))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = (max(0, (side - k) // s + 1) for side, k, s in zip(x.shape[-2:], self.kernel, self.stride))
        if h == 0 or w == 0:
            raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than one {self.kernel[0]}x{self.kernel[1]} patch")
        if self.stem is not None:
            # oneDNN's convs run channels-last natively: a training step's stem (forward + backward)
            # took 35% less time than with NCHW input, which they convert at every layer.
            x = self.stem(x.contiguous(memory_format=torch.channels_last))
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        return tokens + resample_grid(self.pos_embed, self.grid, (h, w)), (h, w)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class AddNorm(nn.Module):
    """``residual = residual + x`` (kept in fp32), then ``x = norm(residual)``; returns both.

    Pre-norm blocks written this way are exactly ``x = x + f(norm(x))``, but the add and the norm
    touch memory once, which is where Vim spends its bandwidth.
    """

    def __init__(self, dim: int, kind: str, eps: float):
        super().__init__()
        if kind not in ("layer", "rms"):
            raise ValueError(f"unknown norm {kind!r}")
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if kind == "layer" else None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "rms":
            return rms_norm(x, self.weight, residual, eps=self.eps, residual_in_fp32=True)
        residual = x.float() if residual is None else residual + x.float()
        out = F.layer_norm(residual, (residual.shape[-1],), self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype), residual


class Mlp(nn.Module):
    """The transformer channel mixer: Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))
