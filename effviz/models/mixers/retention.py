"""Multi-scale retention, the token mixer of Vision RetNet (ViR, NVlabs, arXiv 2310.19731).

The block is RetNet's (Sun et al., arXiv 2307.08621): per head, causal retention
``o_n = Σ_{m≤n} γ_h^(n−m) (q_n · k_m) v_m`` with a fixed decay per head, a per-head GroupNorm of
the result, a swish gate and an output projection:

    out = out_proj(silu(g_proj(x)) * GroupNorm_heads(retention(q, k, v, γ)))

ViR published no code or weights, so the choices the paper leaves open are ours:

- Decay: RetNet's γ_h = 1 − 2^(−5−h) for heads h = 0..H−1, fixed, not learned; always built in
  fp32, since in half precision γ rounds to 1 once 2^(−5−h) is below the format's resolution.
- Scaling: k is multiplied by head_dim^−0.5, as in RetNet.
- Position: no xPos/rotary rotation of q and k. Over a raster scan a rotation would encode only
  the 1-D token distance, which mixes up rows and columns; the backbone's learned absolute position
  embedding (resampled bicubically to any grid) carries position instead, as in DeiT.
- Causal order: the raster scan of the patch grid (row by row, as the tokenizer flattens it);
  in a multimodal sequence image tokens come before audio tokens.
- Class token: last (``cls_token="last"`` in the config), so the one token the head reads has
  retained every patch before it.
- Widths: values and gate are ``dim`` wide (RetNet doubles them and halves the MLP); this keeps
  ViR-T shaped like DeiT-Ti, with one extra D×D gate projection per block. No biases, as in RetNet.
- Normalisation: nn.GroupNorm with one group per head (affine, eps 1e-5), normalising each token's
  head output. Because it is scale-invariant per token, RetNet's extra rescalings of QKᵀ and of the
  decay matrix (numerical safeguards) would change nothing but the eps here; the kernel computes
  in fp32, so they are left out.
- Form: "parallel" (one masked matmul, the cheapest to differentiate) while training, "chunk"
  (O(L) memory) in eval mode. Both compute the same function; only rounding differs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...kernels import retention
from ..layers import TokenLayout


class MultiScaleRetention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.g_proj = nn.Linear(dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.group_norm = nn.GroupNorm(num_heads, dim)

    def decay(self, device: torch.device) -> torch.Tensor:
        """(num_heads,) fp32 decays γ_h = 1 − 2^(−5−h): from 0.97 (short memory) towards 1."""
        heads = torch.arange(self.num_heads, device=device, dtype=torch.float32)
        return 1 - torch.pow(2.0, -5 - heads)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k (scaled by head_dim^−0.5) and v of (batch, L, dim) tokens, each (batch, heads, L, head_dim)."""
        batch, length, dim = x.shape
        head_dim = dim // self.num_heads

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.num_heads, head_dim).transpose(1, 2)

        return split_heads(self.q_proj(x)), split_heads(self.k_proj(x)) * head_dim**-0.5, split_heads(self.v_proj(x))

    def gated_output(self, x: torch.Tensor, heads_out: torch.Tensor) -> torch.Tensor:
        """The per-token epilogue: ``out_proj(silu(g_proj(x)) * GroupNorm_heads(heads_out))``."""
        batch, length, dim = x.shape
        # GroupNorm wants channels second; per token, its groups are exactly the heads.
        normed = self.group_norm(heads_out.transpose(1, 2).reshape(batch * length, dim))
        return self.out_proj(F.silu(self.g_proj(x)) * normed.view(batch, length, dim))

    def forward(self, x: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
        mode = "parallel" if self.training else "chunk"
        return self.gated_output(x, retention(*self.heads(x), self.decay(x.device), mode=mode))

    def step(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The next chunk (batch, L, dim) of a stream; state: the (batch, heads, head_dim, head_dim)
        fp32 sum Σ γ^(n−m) k_mᵀ v_m over the tokens so far (None at the start)."""
        out, state = retention(*self.heads(x), self.decay(x.device), mode="chunk", initial_state=state,
                               return_state=True)
        return self.gated_output(x, out), state
