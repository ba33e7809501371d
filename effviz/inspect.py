"""Inside the models: every token mixer as the (tokens x tokens) matrix it applies to its values.

Each mixer of the runtime moves information between tokens in one place only, and that place
is exactly a matrix product ``y = M v`` per head (or per channel); everything else in the mixer
acts on one token at a time. The functions below rebuild M from the ops' definitions, with the
mixer's own parameters and projections, and compute the mixer's output through it:

- attention (DeiT, AST), per head h:  M[i, j] = softmax_j(q_i·k_j / √d), y = M v; with a sliding
  window the softmax runs over the keys in the window (and the class token) only, M is 0 elsewhere.
- retention (ViR), per head h:        M[n, m] = γ_h^(n−m) q_n·k_m for m ≤ n, else 0 (k already
  scaled by d^−½); the GroupNorm, SiLU gate and out_proj act after it, per token.
- Bi-WKV (Vision-RWKV), per channel:  M[t, i] = softmax_i(−(|t−i|−1)·w + k_i), with u + k_t on
  the diagonal, w and u the layer's decay and bonus divided by the token count; the σ(r) gate and
  the output projection act after it. The Q-shift before k, v, r mixes each token with its four
  grid neighbours; M is over the shifted-and-projected values v. For relevance and receptive
  fields each column is carried back to the token and the neighbours its value read
  (``through_q_shift``); without it relevance lands one patch beside its cause.
- Mamba S6 (Vim, AuM), per inner channel d and branch: with Δ = softplus(δ + bias),
  M[i, j] = Σ_n C[n, i] · exp(Σ_{k=j+1..i} Δ_k A[d, n]) · Δ_j B[n, j] for j ≤ i (forward branch;
  the backward branch has j ≥ i and the sum over k = i..j−1), plus D[d] on the diagonal.
  M maps the scan's input u, i.e. x after the branch's causal depthwise conv (4 taps, so each u
  is a local mix of inputs) and SiLU, to the scan's output y. The block then gates y with SiLU(z)
  per token and averages the branches: out = out_proj(½ (SiLU(z)·M_fwd u_fwd + SiLU(z)·M_bwd u_bwd)).
  The two branches have their own convs, so their u differ; the "combined" matrix ½(M_fwd + M_bwd)
  is what the block applies to an input the two convs see alike.

Over a whole model (``inspect_model``), for one input and one class:

- rollout (Abnar & Zuidema 2020): R = Π_layers (½ I + ½ M̄_l), M̄_l the mean over heads/channels
  of |M|, each row divided by its sum; every row of R sums to 1. For Mamba M̄ runs from the
  mixer's input tokens, not from u: ½(|M_fwd| K_fwd + |M_bwd| K_bwd), K a branch's conv sharing
  each u_j among the tokens it read in proportion to |tap| (``through_conv``); without it, Vim's
  relevance lands up to three tokens beside the patch that caused it.
- gradient rollout (Chefer et al. 2021; Ali et al. 2024 for Mamba): the same product with M̄_l
  the mean over heads/channels of the positive part of ∂logit/∂M ⊙ M (for Mamba, per branch,
  carried through the branch's conv, and summed), rows divided by their sums; a row with no
  positive entry keeps the token to itself.
- relevance map: the row of R the model's head reads (its class token; the mean of the class and
  distillation tokens for AST; the mean of all rows for mean pooling), divided token by token by
  the same row of the layers' masks rolled out alone (``mask_rollout``), restricted to the patch
  tokens, divided by its sum (so it sums to 1), laid out on the patch grid: (rows, columns) of
  the picture, or (mel bands, time steps) of a sound. The division is there for causal mixers:
  under a causal mask the first token is read by every row and reads only itself, so a rollout
  of row-normalised causal matrices piles its mass onto the first tokens whatever the input
  (a causal ViR's maps would peak on its first patch wherever the evidence is). Divided by what
  the mask alone gives, a map shows what the input adds to the structure. For full attention the masks' rollout
  is uniform over the patches and changes nothing; for a sliding window, Vim's two triangles
  (through their convs) and Vision-RWKV's Q-shift it is not, and the division takes out what
  their edges do the same way.
- receptive field: per layer, the share of M̄'s mass at each token distance |i − j| between patch
  tokens in sequence order (raster order for pictures); it sums to 1.

The matrices take memory quadratic in the token count (and, for RWKV and Mamba, one per
channel), so ``inspect_model`` estimates it first and refuses with a ValueError above
``max_bytes``. Command line: ``python -m effviz.inspect MODEL INPUT [--layer N] [--json OUT]``.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import api
from .models import EffvizModel, ModelConfig
from .models.layers import TokenLayout
from .models.mixers.attention import Attention
from .models.mixers.mamba import BiMamba, MambaBranch, channel_major_linear
from .models.mixers.retention import MultiScaleRetention
from .models.mixers.rwkv import SpatialMix
from .models.mixers.window_attention import WindowAttention

# Default memory a whole-model inspection may take, in bytes; $EFFVIZ_MAX_INSPECT_BYTES changes it.
MAX_BYTES = int(api.limit_from_env("EFFVIZ_MAX_INSPECT_BYTES", 2 * 2**30))


@dataclass
class Mixing:
    """One mixer's token mixing on one input (batch of one).

    ``matrices``: name -> (heads or channels, L, L); "mixing" for attention, retention and RWKV,
    "forward" and "backward" for Mamba. ``output``: the mixer's (1, L, dim) output computed
    through those matrices. ``conv_taps``: Mamba only, branch -> (d_inner, d_conv) weights of the
    depthwise conv that makes the scan's inputs u from the mixer's inputs. ``shift_shares``:
    Vision-RWKV only, (channels, 5) share of each value channel that comes from the token itself
    and from its left, right, upper and lower neighbours (``q_shift_shares``); ``grid`` the patch
    grid. ``mask``: (L, L) bool, which tokens each token may read (None: all).
    """

    kind: str
    matrices: dict[str, torch.Tensor]
    output: torch.Tensor
    conv_taps: dict[str, torch.Tensor] = field(default_factory=dict)
    shift_shares: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    mask: torch.Tensor | None = None

    def combined(self) -> torch.Tensor:
        """(heads or channels, L, L): the one matrix per head, or Mamba's ½(M_fwd + M_bwd)."""
        if self.kind == "mamba":
            return 0.5 * (self.matrices["forward"] + self.matrices["backward"])
        return self.matrices["mixing"]

    def reach(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """(L, L) mean over heads/channels of non-negative ``parts`` (one per name of ``matrices``),
        summed, each Mamba branch first carried back through its conv (``through_conv``), RWKV's
        values through the Q-shift (``through_q_shift``)."""
        if self.kind == "mamba":
            return sum(through_conv(parts[name], self.conv_taps[name], reverse=name == "backward").mean(dim=0)
                       for name in parts)
        if self.shift_shares is not None:
            return through_q_shift(parts["mixing"], self.shift_shares, self.grid).mean(dim=0)
        return parts["mixing"].mean(dim=0)

    def structure(self) -> torch.Tensor:
        """(L, L): what ``mean`` would be with every entry the mixer may use at 1, whatever the
        input: the attention or retention mask (all, a window, causal), each Mamba branch's
        triangle, carried through the conv or Q-shift as ``mean`` is."""
        length, dtype = self.output.shape[1], self.output.dtype
        ones = torch.ones(length, length, dtype=dtype, device=self.output.device)
        if self.kind == "mamba":
            masks, scale = {"forward": ones.tril(), "backward": ones.triu()}, 0.5
        else:
            masks, scale = {"mixing": ones if self.mask is None else self.mask.to(ones)}, 1.0
        return self.reach({name: scale * masks[name].expand(len(m), -1, -1) for name, m in self.matrices.items()})

    def mean(self) -> torch.Tensor:
        """(L, L): the mean over heads/channels of |M| (all entries ≥ 0) from the mixer's input
        tokens to its output tokens; for Mamba ½(|M_fwd| K_fwd + |M_bwd| K_bwd), K a branch's
        |taps| over their sum, as ``through_conv`` applies them."""
        scale = 0.5 if self.kind == "mamba" else 1.0
        return self.reach({name: scale * m.abs() for name, m in self.matrices.items()})


def through_conv(matrix: torch.Tensor, taps: torch.Tensor, reverse: bool) -> torch.Tensor:
    """(d, L, L) non-negative mixing of a Mamba branch's scan inputs u, carried back to the conv's
    inputs x: u_j reads x_(j−lag) (x_(j+lag) for the backward branch) through tap K−1−lag, for
    lag = 0..K−1, so column j is shared among those tokens in proportion to |tap|. A tap that
    reaches past the sequence reads the conv's zero padding: its share goes to no token, and the
    rows lose that part of the end columns' mass. The SiLU between conv and scan is left out.
    Without this step a token's relevance lands up to K−1 tokens away from it."""
    length, kernel = matrix.shape[-1], taps.shape[1]
    share = taps.abs() / taps.abs().sum(-1, keepdim=True).clamp(min=torch.finfo(taps.dtype).tiny)  # (d, K)
    out = torch.zeros_like(matrix)
    for lag in range(min(kernel, length)):
        weight = share[:, kernel - 1 - lag, None, None].to(matrix.dtype)
        if reverse:  # x_j' feeds u_(j'−lag)
            out[:, :, lag:] += matrix[:, :, :length - lag] * weight
        else:  # x_j' feeds u_(j'+lag)
            out[:, :, :length - lag] += matrix[:, :, lag:] * weight
    return out


def q_shift_shares(mixer: SpatialMix) -> torch.Tensor:
    """(channels, 5): how much of each value channel v = W_v(μ x + (1 − μ) shift(x)) comes from
    the token itself and from its left, right, upper and lower neighbours (``q_shift``'s four
    channel quarters), in proportion to |W_v| |μ| and |W_v| |1 − μ|; rows sum to 1."""
    weight = mixer.value.weight.detach().abs()  # (out, in)
    mix = mixer.spatial_mix_v.detach().reshape(-1)
    channels = mix.shape[0]
    bounds = [0] + [channels * i // 4 for i in range(1, 4)] + [channels]
    parts = [weight @ mix.abs()] + [weight[:, lo:hi] @ (1 - mix[lo:hi]).abs() for lo, hi in zip(bounds, bounds[1:])]
    shares = torch.stack(parts, dim=1)
    return shares / shares.sum(-1, keepdim=True).clamp(min=torch.finfo(shares.dtype).tiny)


def through_q_shift(matrix: torch.Tensor, shares: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(C, L, L) non-negative mixing of RWKV's values, carried back to the mixer's input tokens:
    column j is shared among token j and the four grid neighbours its value read, in proportion
    to ``shares`` (``q_shift_shares``). A neighbour past the grid's edge is Q-shift's zero fill:
    its share goes to no token. Without this step relevance lands one patch beside its cause."""
    channels, length = matrix.shape[0], matrix.shape[-1]
    h, w = grid
    share = shares.to(matrix.dtype)[:, :, None, None, None]  # (C, 5, 1, 1, 1)
    columns = matrix.reshape(channels, length, h, w)
    out = columns * share[:, 0]
    out[..., :-1] += columns[..., 1:] * share[:, 1]  # quarter 0: (r, c) read its left neighbour (r, c-1)
    out[..., 1:] += columns[..., :-1] * share[:, 2]  # quarter 1: the right one
    out[..., :-1, :] += columns[..., 1:, :] * share[:, 3]  # quarter 2: the one above
    out[..., 1:, :] += columns[..., :-1, :] * share[:, 4]  # quarter 3: the one below
    return out.reshape(channels, length, length)


# ---- one mixer ----------------------------------------------------------------------------------


def attention_mixing(mixer: Attention, x: torch.Tensor, allowed: torch.Tensor | None = None) -> Mixing:
    """M[h] = softmax(q kᵀ / √d) per head, over the ``allowed`` (L, L) keys only if given (a
    sliding window); output = proj(M v)."""
    q, k, v = mixer.heads(x)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if allowed is not None:
        scores = scores.masked_fill(~allowed.to(x.device), float("-inf"))
    matrix = scores.softmax(dim=-1)[0]
    return Mixing("attention", {"mixing": matrix}, mixer.merge((matrix @ v[0])[None]), mask=allowed)


def retention_mixing(mixer: MultiScaleRetention, x: torch.Tensor) -> Mixing:
    """M[h, n, m] = γ_h^(n−m) q_n·k_m for m ≤ n, else 0; output = the gated, normed M v."""
    q, k, v = mixer.heads(x)
    length = x.shape[1]
    distance = torch.arange(length, device=x.device)[:, None] - torch.arange(length, device=x.device)[None, :]
    gamma = mixer.decay(x.device).to(x.dtype)
    # Only m ≤ n is exponentiated: γ^(negative distance) overflows for long sequences.
    decay = torch.where(distance >= 0, gamma[:, None, None] ** distance.clamp(min=0), 0.0)
    matrix = (q[0] @ k[0].transpose(-2, -1)) * decay
    return Mixing("retention", {"mixing": matrix}, mixer.gated_output(x, (matrix @ v[0])[None]), mask=distance >= 0)


def rwkv_mixing(mixer: SpatialMix, x: torch.Tensor, layout: TokenLayout) -> Mixing:
    """M[c, t, i] = softmax_i(−(|t−i|−1) w_c + k_ic), u_c + k_tc on the diagonal; output =
    output(σ(r) ⊙ M v), per channel c."""
    k, v, r = mixer.keys_values(x, layout)
    w, u = mixer.decay_and_bonus(x.shape[1])
    length = x.shape[1]
    pos = torch.arange(length, device=x.device)
    distance = (pos[:, None] - pos[None, :]).abs().to(x.dtype)  # (t, i)
    keys = k[0].T  # (C, L)
    logits = -(distance - 1) * w[:, None, None] + keys[:, None, :]
    self_logits = (u[:, None] + keys).diag_embed()  # u + k_t at [c, t, t]
    logits = torch.where(torch.eye(length, dtype=torch.bool, device=x.device), self_logits, logits)
    matrix = logits.softmax(dim=-1)
    wkv = torch.einsum("cti,ic->tc", matrix, v[0])
    return Mixing("rwkv", {"mixing": matrix}, mixer.output(torch.sigmoid(r) * wkv[None]),
                  shift_shares=q_shift_shares(mixer), grid=layout.grid)


def mamba_branch_matrix(branch: MambaBranch, x: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, u) of one Mamba branch for x (1, d_inner, L): M (d_inner, L, L) maps the scan's input
    u (d_inner, L) to its output, y[d] = M[d] u[d], D skip included, SiLU(z) gate not.

    With S_t = Σ_{k≤t} Δ_k A (forward) or Σ_{k≥t} Δ_k A (backward), the decay between j and i is
    exp(S_i − S_j), so M[d, i, j] = Σ_n C[n, i] exp(S_i − S_j)[d, n] Δ[d, j] B[n, j] on the
    branch's side of the diagonal.
    """
    args = branch.scan_inputs(x, reverse)
    u, A, D = args["u"][0], args["A"].to(x.dtype), args["D"].to(x.dtype)
    delta = F.softplus(args["delta"][0] + args["delta_bias"].to(x.dtype)[:, None])  # (d_inner, L)
    B, C = args["B"][0], args["C"][0]  # (N, L)
    length = u.shape[1]
    pos = torch.arange(length, device=x.device)
    reachable = (pos[None, :] >= pos[:, None]) if reverse else (pos[None, :] <= pos[:, None])  # [i, j]
    steps = delta[:, None, :] * A[:, :, None]  # (d_inner, N, L): Δ_k A[d, n] ≤ 0
    cumulative = steps.flip(-1).cumsum(-1).flip(-1) if reverse else steps.cumsum(-1)
    drive = delta[:, None, :] * B  # (d_inner, N, L): Δ_j B[n, j]
    # Checkpointed: autograd would otherwise keep N (d_inner, L, L) tensors per branch and layer
    # until the backward pass; recomputing them there keeps one layer's at a time.
    matrix = checkpoint(_sum_over_states, C, cumulative, drive, reachable, use_reentrant=False)
    return matrix + torch.diag_embed(D[:, None].expand_as(u)), u


def _sum_over_states(C: torch.Tensor, cumulative: torch.Tensor, drive: torch.Tensor,
                     reachable: torch.Tensor) -> torch.Tensor:
    """Σ_n C[n, i] exp(S_i − S_j)[d, n] drive[d, n, j] over reachable (i, j), else 0."""
    # Unreachable pairs get exponent -inf (weight 0) before exp, where S_i − S_j > 0 could overflow.
    exponent = (cumulative[..., :, None] - cumulative[..., None, :]).masked_fill(~reachable, float("-inf"))
    return torch.einsum("ni,dnij->dij", C, exponent.exp() * drive[:, :, None, :])


def mamba_mixing(mixer: BiMamba, x: torch.Tensor) -> Mixing:
    """Vim's two branches as matrices; output = out_proj(½ SiLU(z) ⊙ (M_fwd u_fwd + M_bwd u_bwd))."""
    inner, z = channel_major_linear(mixer.in_proj.weight, x).chunk(2, dim=1)  # (1, d_inner, L) each
    forward, u_forward = mamba_branch_matrix(mixer.fwd, inner, reverse=False)
    backward, u_backward = mamba_branch_matrix(mixer.bwd, inner, reverse=True)
    mixed = torch.einsum("dij,dj->di", forward, u_forward) + torch.einsum("dij,dj->di", backward, u_backward)
    y = F.silu(z[0]) * mixed
    taps = {"forward": mixer.fwd.conv1d.weight[:, 0].detach(), "backward": mixer.bwd.conv1d.weight[:, 0].detach()}
    return Mixing("mamba", {"forward": forward, "backward": backward}, mixer.out_proj(y.T[None]) * 0.5, taps)


def mixing(mixer: torch.nn.Module, x: torch.Tensor, layout: TokenLayout) -> Mixing:
    """The token mixing of any effviz mixer on x (1, L, dim) with the sequence's layout."""
    if x.dim() != 3 or x.shape[0] != 1:
        raise ValueError(f"the mixing matrices are computed for one input at a time: x must be (1, L, dim), got {tuple(x.shape)}")
    if isinstance(mixer, WindowAttention):
        return attention_mixing(mixer, x, mixer.allowed(x.shape[1], layout.cls_index))
    if isinstance(mixer, Attention):
        return attention_mixing(mixer, x)
    if isinstance(mixer, MultiScaleRetention):
        return retention_mixing(mixer, x)
    if isinstance(mixer, SpatialMix):
        return rwkv_mixing(mixer, x, layout)
    if isinstance(mixer, BiMamba):
        return mamba_mixing(mixer, x)
    raise ValueError(f"no mixing matrix for a {type(mixer).__name__}")


# ---- memory ---------------------------------------------------------------------------------------


def matrices_per_layer(cfg: ModelConfig, mixer: str) -> int:
    """How many (L, L) matrices one layer of ``mixer`` holds: one per head, per channel (RWKV), or
    per inner channel and branch (Mamba)."""
    return {"attention": cfg.num_heads, "window_attention": cfg.num_heads, "retention": cfg.num_heads,
            "rwkv": cfg.embed_dim, "mamba": 2 * cfg.expand * cfg.embed_dim}[mixer]


def estimate_bytes(cfg: ModelConfig, tokens: int, itemsize: int = 4) -> int:
    """Memory a whole-model inspection of ``tokens`` tokens holds at its peak, estimated from
    above: every layer's matrices stay alive for the backward pass, with their gradients and what
    autograd keeps of the softmax/decay that built them. The copies per matrix are rounded up
    from peak resident memory measured on small random models (65-1,025 tokens): attention,
    retention and RWKV peaked at 6-8 matrix-sized copies, Mamba before its per-state sum was
    checkpointed at 2.7 per state (less since). A few hundred MB of fixed overhead (libraries,
    thread pools) come on top and are not counted."""
    copies = sum(matrices_per_layer(cfg, mixer) * (3 * cfg.d_state + 4 if mixer == "mamba" else 10)
                 for mixer in cfg.block_mixers())
    return copies * tokens**2 * itemsize


def check_memory(cfg: ModelConfig, tokens: int, itemsize: int, max_bytes: int) -> None:
    """Raise a ValueError naming the size and the limit when the estimate is above ``max_bytes``."""
    need = estimate_bytes(cfg, tokens, itemsize)
    if need > max_bytes:
        raise ValueError(
            f"inspecting this input would need about {need / 2**30:.2f} GiB ({tokens} tokens: "
            f"{sum(matrices_per_layer(cfg, m) for m in cfg.block_mixers())} matrices of {tokens}x{tokens} in "
            f"{cfg.depth} layers), above the limit of {max_bytes / 2**30:.2f} GiB; use a smaller input (fewer "
            "tokens) or raise the limit (max_bytes, or $EFFVIZ_MAX_INSPECT_BYTES)"
        )


# ---- a whole model --------------------------------------------------------------------------------


@dataclass
class Inspection:
    """A model's token mixing on one input, and where the chosen class's evidence comes from.

    ``layers``: each block's ``Mixing``. ``patch_tokens``: sequence positions of the patch tokens
    (all but the class/distillation tokens), in grid raster order. ``grid``: (rows, columns) of
    the patch grid. ``readout``: (L,) weights of the tokens the head reads. ``rollout`` and
    ``gradient_rollout``: the (L, L) products R, rows summing to 1. The maps are (rows, columns)
    and sum to 1; ``receptive_fields`` is (layers, patch tokens), rows sum to 1.
    """

    layers: list[Mixing]
    logits: torch.Tensor
    target: int
    label: str
    grid: tuple[int, int]
    patch_tokens: torch.Tensor
    readout: torch.Tensor
    rollout: torch.Tensor
    gradient_rollout: torch.Tensor
    rollout_map: torch.Tensor
    gradient_map: torch.Tensor
    receptive_fields: torch.Tensor


def rollout(layer_matrices: list[torch.Tensor]) -> torch.Tensor:
    """R = Π_l (½ I + ½ M_l) over (L, L) matrices with non-negative entries, first layer on the
    right, each M_l's rows divided by their sums (a row summing to 0 becomes the identity's);
    every row of R sums to 1."""
    length = layer_matrices[0].shape[-1]
    eye = torch.eye(length, dtype=layer_matrices[0].dtype, device=layer_matrices[0].device)
    result = eye
    for matrix in layer_matrices:
        sums = matrix.sum(dim=-1, keepdim=True)
        rows = torch.where(sums > 0, matrix / sums.clamp(min=torch.finfo(matrix.dtype).tiny), eye)
        result = (0.5 * eye + 0.5 * rows) @ result
    return result


def mask_rollout(layers: list[Mixing]) -> torch.Tensor:
    """``rollout`` of the layers' ``structure``: where a rollout's mass goes from the mixers' masks
    alone, whatever the input."""
    return rollout([layer.structure() for layer in layers])


def receptive_field(matrix: torch.Tensor) -> torch.Tensor:
    """(L,) share of a non-negative (L, L) matrix's mass at each distance |i − j| = 0..L−1."""
    length = matrix.shape[-1]
    pos = torch.arange(length, device=matrix.device)
    distance = (pos[:, None] - pos[None, :]).abs()
    mass = torch.zeros(length, dtype=matrix.dtype, device=matrix.device).index_add_(0, distance.flatten(), matrix.flatten())
    return mass / mass.sum()


def _readout(cfg: ModelConfig, layout: TokenLayout, length: int) -> torch.Tensor:
    weights = torch.zeros(length, dtype=torch.float64)
    if cfg.dist_token:
        weights[0] = weights[1] = 0.5
    elif layout.cls_index is not None:
        weights[layout.cls_index] = 1.0
    else:
        weights[:] = 1.0 / length
    return weights


def _patch_tokens(cfg: ModelConfig, layout: TokenLayout, length: int) -> torch.Tensor:
    special = set()
    if layout.cls_index is not None:
        special.add(layout.cls_index)
        if cfg.dist_token:
            special.add(layout.cls_index + 1)
    return torch.tensor([i for i in range(length) if i not in special])


def _relevance_map(matrix: torch.Tensor, readout: torch.Tensor, patch_tokens: torch.Tensor,
                   grid: tuple[int, int], structure: torch.Tensor) -> torch.Tensor:
    """The readout's row of the rollout ``matrix`` over that of the masks' rollout ``structure``,
    on the patch tokens, summing to 1; a token the readout cannot reach at all gets 0."""
    row = readout.to(matrix) @ matrix
    expected = readout.to(matrix) @ structure.to(matrix)
    patches = torch.where(expected > 0, row / expected.clamp(min=torch.finfo(matrix.dtype).tiny), 0.0)[patch_tokens]
    return (patches / patches.sum()).reshape(grid)


def inspect_model(model: EffvizModel, image: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                  target: int | None = None, max_bytes: int = MAX_BYTES) -> Inspection:
    """Every layer's mixing matrices, the rollout and gradient-rollout relevance of class
    ``target`` (the predicted class by default) and the receptive fields, for one input of one
    modality: image (1, C, H, W) or audio (1, frames, mel_bins), preprocessed as the model
    expects. Runs on a private copy of the model in its own dtype, so the shared model is left
    alone. Raises ValueError when the estimated memory is above ``max_bytes``."""
    if (image is None) == (audio is None):
        raise ValueError("inspect one modality at a time: give an image or an audio input")
    given = image if image is not None else audio
    if given.shape[0] != 1:
        raise ValueError(f"inspect one input at a time (batch of 1), got a batch of {given.shape[0]}")
    cfg = model.config
    with torch.no_grad():
        tokens, layout = model.tokens(image, audio)
    itemsize = next(model.parameters()).element_size()
    check_memory(cfg, tokens.shape[1], itemsize, max_bytes)

    # A private copy: the matrix forms replace its mixers' forwards, and the app's cached model
    # keeps serving predictions meanwhile.
    replica = copy.deepcopy(model).eval()
    layers: list[Mixing] = []
    for block in replica.blocks:
        def matrix_forward(x: torch.Tensor, layout: TokenLayout, mixer: torch.nn.Module = block.mixer) -> torch.Tensor:
            result = mixing(mixer, x, layout)
            for matrix in result.matrices.values():
                matrix.retain_grad()
            layers.append(result)
            return result.output

        block.mixer.forward = matrix_forward
    with torch.enable_grad():
        logits = replica(image=image, audio=audio)[0]
        target = int(logits.argmax()) if target is None else int(target)
        if not 0 <= target < logits.shape[0]:
            raise ValueError(f"target class {target} is out of range: this model has {logits.shape[0]} classes")
        logits[target].backward()

    with torch.no_grad():
        means = [layer.mean() for layer in layers]
        weighted = [layer.reach({name: (m.grad * m).clamp(min=0) for name, m in layer.matrices.items()})
                    for layer in layers]
        length = tokens.shape[1]
        readout = _readout(cfg, layout, length).to(tokens)
        patch_tokens = _patch_tokens(cfg, layout, length).to(tokens.device)
        grid = layout.grid if layout.grid is not None else (1, len(patch_tokens))
        plain, gradient = rollout(means), rollout(weighted)
        structure = mask_rollout(layers)
        fields = torch.stack([receptive_field(m[patch_tokens][:, patch_tokens]) for m in means])
    for layer in layers:
        layer.matrices = {name: m.detach() for name, m in layer.matrices.items()}
        layer.output = layer.output.detach()
    label = cfg.labels[target] if target < len(cfg.labels) else str(target)
    return Inspection(
        layers=layers, logits=logits.detach(), target=target, label=label, grid=tuple(grid),
        patch_tokens=patch_tokens, readout=readout, rollout=plain, gradient_rollout=gradient,
        rollout_map=_relevance_map(plain, readout, patch_tokens, grid, structure),
        gradient_map=_relevance_map(gradient, readout, patch_tokens, grid, structure),
        receptive_fields=fields,
    )


def inspect_input(model_id: str, image: Any = None, audio: Any = None, sample_rate: int | None = None,
            target: int | None = None, max_bytes: int = MAX_BYTES) -> Inspection:
    """``inspect_model`` for a bundled model and a raw input, decoded and framed as
    ``effviz.predict`` does: a picture (path, bytes or PIL image) or a sound (path, bytes, or
    samples with ``sample_rate``)."""
    model = api.load_model(model_id)
    cfg = model.config
    device = next(model.parameters()).device
    if image is not None and audio is None:
        if "image" not in cfg.modalities:
            raise ValueError(f"{model_id} takes {' and '.join(cfg.modalities)}, not pictures")
        return inspect_model(model, image=api.model_inputs(model_id, image=image)["image"].to(device), target=target,
                             max_bytes=max_bytes)
    if audio is not None and image is None:
        if "audio" not in cfg.modalities:
            raise ValueError(f"{model_id} takes {' and '.join(cfg.modalities)}, not sounds")
        framed = api.model_inputs(model_id, audio=audio, sample_rate=sample_rate)["audio"]
        return inspect_model(model, audio=framed.to(device), target=target, max_bytes=max_bytes)
    raise ValueError("inspect one modality at a time: give an image or an audio input")


def to_json(result: Inspection, layer: int | None = None) -> dict[str, Any]:
    """The inspection as JSON-ready lists: prediction, maps, receptive fields, and each layer's
    head/channel-mean |matrix|; with ``layer``, that layer's per-head (per-channel) matrices too."""
    out: dict[str, Any] = {
        "target": result.target, "label": result.label,
        "probabilities": result.logits.softmax(-1).tolist(),
        "grid": list(result.grid), "patch_tokens": result.patch_tokens.tolist(),
        "rollout_map": result.rollout_map.tolist(), "gradient_map": result.gradient_map.tolist(),
        "receptive_fields": result.receptive_fields.tolist(),
        "mean_matrices": [m.mean().tolist() for m in result.layers],
        "mixer": result.layers[0].kind,
    }
    if layer is not None:
        if not 0 <= layer < len(result.layers):
            raise ValueError(f"layer {layer} is out of range: this model has {len(result.layers)} layers")
        out["layer"] = layer
        out["matrices"] = {name: m.tolist() for name, m in result.layers[layer].matrices.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m effviz inspect",
        description="Token-mixing matrices, relevance maps and receptive fields of a bundled model on one input.")
    parser.add_argument("model", help=f"a bundled model id ({', '.join(api.list_models())})")
    parser.add_argument("input", type=Path, help="a picture or a sound file, whichever the model takes")
    parser.add_argument("--layer", type=int, default=None, help="also export this layer's per-head/per-channel matrices")
    parser.add_argument("--json", type=Path, default=None, help="write the inspection here as JSON")
    args = parser.parse_args(argv)
    try:
        cfg = api.load_model(args.model).config
        key = "image" if "image" in cfg.modalities else "audio"
        result = inspect_input(args.model, **{key: args.input})
        exported = to_json(result, args.layer)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.model}: predicts {result.label!r} (p = {exported['probabilities'][result.target]:.3f}); "
          f"{len(result.layers)} {result.layers[0].kind} layers over {len(result.readout)} tokens")
    for name, grid in (("rollout", result.rollout_map), ("gradient rollout", result.gradient_map)):
        print(f"{name} relevance on the {grid.shape[0]}x{grid.shape[1]} patch grid (sums to 1):")
        for row in grid.tolist():
            print("  " + " ".join(f"{value:.3f}" for value in row))
    print("mass within token distance 1, per layer:",
          " ".join(f"{float(f[:2].sum()):.2f}" for f in result.receptive_fields))
    if args.json is not None:
        args.json.write_text(json.dumps(exported))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
