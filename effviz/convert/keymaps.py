"""Official state_dict layouts and how each maps onto our parameter names.

A layout is a list of ``Transfer`` entries, each tying some of our parameters to some official
tensors with a conversion both ways. Most are plain renames; two are not:
- the official models keep the class token's position embedding inside one ``pos_embed``
  (at the class token's slot, or first), where we keep ``cls_pos`` apart from the patch grid's;
- Hugging Face's ViT (and AST) store separate query/key/value projections where we have one fused
  ``qkv``.

Both directions are needed: ``to_ours`` converts a checkpoint, ``to_official`` turns our model's
tensors into the shapes the checkpoint must have, so every key and shape is checked (and reported
in the checkpoint's own names) before anything is converted.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..models.config import ModelConfig

Tensors = list[torch.Tensor]


def _same(tensors: Tensors) -> Tensors:
    return list(tensors)


@dataclass(frozen=True)
class Transfer:
    """Our parameters ``ours`` hold the information of the official tensors ``official``."""

    ours: tuple[str, ...]
    official: tuple[str, ...]
    to_ours: Callable[[Tensors], Tensors] = _same
    to_official: Callable[[Tensors], Tensors] = _same


def rename(ours: str, official: str) -> Transfer:
    return Transfer((ours,), (official,))


def class_position_split(official: str, cls_index: int, tokenizer: str = "image") -> Transfer:
    """One official (1, 1 + N, D) position embedding with the class token's row at ``cls_index``
    <-> our ``cls_pos`` (1, 1, D) and the patch grid's ``tokenizers.<tokenizer>.pos_embed`` (1, N, D)."""

    def to_ours(tensors: Tensors) -> Tensors:
        (pos,) = tensors
        patches = torch.cat([pos[:, :cls_index], pos[:, cls_index + 1:]], dim=1)
        return [pos[:, cls_index:cls_index + 1], patches]

    def to_official(tensors: Tensors) -> Tensors:
        cls_pos, patches = tensors
        return [torch.cat([patches[:, :cls_index], cls_pos, patches[:, cls_index:]], dim=1)]

    return Transfer(("cls_pos", f"tokenizers.{tokenizer}.pos_embed"), (official,), to_ours, to_official)


def fused_qkv(ours: str, query: str, key: str, value: str) -> Transfer:
    """Separate q, k, v projections <-> one fused projection whose output rows are [q; k; v] (our
    Attention splits its qkv output in that order, each part head-major like HF's)."""
    return Transfer(
        (ours,), (query, key, value),
        to_ours=lambda tensors: [torch.cat(tensors, dim=0)],
        to_official=lambda tensors: list(tensors[0].chunk(3, dim=0)),
    )


def _patch_count(cfg: ModelConfig) -> int:
    return cfg.grid_size[0] * cfg.grid_size[1]


def vim_transfers(cfg: ModelConfig) -> list[Transfer]:
    """hustvl/Vim (``ckpt["model"]``): ``layers.{i}`` blocks of RMSNorm + bimamba v2 mixer whose
    backward branch is named with a ``_b`` suffix; class token in the middle of the patches
    (slot M // 2 of ``pos_embed``, M = patch count)."""
    return [
        rename("tokenizers.image.proj.weight", "patch_embed.proj.weight"),
        rename("tokenizers.image.proj.bias", "patch_embed.proj.bias"),
        rename("cls_token", "cls_token"),
        class_position_split("pos_embed", _patch_count(cfg) // 2),
        *_vim_head_and_blocks(cfg),
    ]


def aum_transfers(cfg: ModelConfig) -> list[Transfer]:
    """kaistmm/Audio-Mamba-AuM, Bi-Bi variant (a raw ``state_dict()``, ``module.`` prefixed when
    saved from DataParallel): Vim's blocks and names, a 1-channel ``patch_embed.proj`` over the
    (mel, frames) fbank, and the position embedding in a ``FlexiPosEmbed`` module
    (``pos_embed.pos_embed``). The class token sits in the middle of the sequence, as in Vim, but
    its position embedding is row 0: FlexiPosEmbed moves the class token to the front, adds
    ``pos_embed``, and moves it back."""
    return [
        rename("tokenizers.audio.proj.weight", "patch_embed.proj.weight"),
        rename("tokenizers.audio.proj.bias", "patch_embed.proj.bias"),
        rename("cls_token", "cls_token"),
        class_position_split("pos_embed.pos_embed", 0, tokenizer="audio"),
        *_vim_head_and_blocks(cfg),
    ]


def _vim_head_and_blocks(cfg: ModelConfig) -> list[Transfer]:
    """What Vim and AuM name alike: final RMSNorm, head, and the bimamba v2 blocks."""
    transfers = [
        rename("norm_f.weight", "norm_f.weight"),
        rename("head.weight", "head.weight"),
        rename("head.bias", "head.bias"),
    ]
    for i in range(cfg.depth):
        ours, official = f"blocks.{i}", f"layers.{i}"
        transfers += [
            rename(f"{ours}.norm1.weight", f"{official}.norm.weight"),
            rename(f"{ours}.mixer.in_proj.weight", f"{official}.mixer.in_proj.weight"),
            rename(f"{ours}.mixer.out_proj.weight", f"{official}.mixer.out_proj.weight"),
        ]
        for branch, suffix in (("fwd", ""), ("bwd", "_b")):
            mixer, branch_prefix = f"{official}.mixer", f"{ours}.mixer.{branch}"
            transfers += [
                rename(f"{branch_prefix}.conv1d.weight", f"{mixer}.conv1d{suffix}.weight"),
                rename(f"{branch_prefix}.conv1d.bias", f"{mixer}.conv1d{suffix}.bias"),
                rename(f"{branch_prefix}.x_proj.weight", f"{mixer}.x_proj{suffix}.weight"),
                rename(f"{branch_prefix}.dt_proj.weight", f"{mixer}.dt_proj{suffix}.weight"),
                rename(f"{branch_prefix}.dt_proj.bias", f"{mixer}.dt_proj{suffix}.bias"),
                rename(f"{branch_prefix}.A_log", f"{mixer}.A{suffix}_log"),
                rename(f"{branch_prefix}.D", f"{mixer}.D{suffix}"),
            ]
    return transfers


def _weight_bias(ours: str, official: str) -> list[Transfer]:
    """A renamed module with a weight and a bias (Linear, Conv2d, LayerNorm)."""
    return [rename(f"{ours}.weight", f"{official}.weight"), rename(f"{ours}.bias", f"{official}.bias")]


def deit_hf_transfers(cfg: ModelConfig) -> list[Transfer]:
    """Hugging Face ``ViTForImageClassification`` (facebook/deit-tiny-patch16-224): class token
    first, separate q/k/v projections, final ``vit.layernorm``, ``classifier`` head."""
    emb = "vit.embeddings"
    return [
        *_weight_bias("tokenizers.image.proj", f"{emb}.patch_embeddings.projection"),
        rename("cls_token", f"{emb}.cls_token"),
        class_position_split(f"{emb}.position_embeddings", 0),
        *_weight_bias("norm_f", "vit.layernorm"),
        *_weight_bias("head", "classifier"),
        *_hf_vit_blocks(cfg, "vit.encoder.layer"),
    ]


def ast_transfers(cfg: ModelConfig) -> list[Transfer]:
    """Hugging Face ``ASTForAudioClassification`` (MIT/ast-finetuned-audioset-10-10-0.4593): HF's
    ViT blocks, class and distillation tokens whose position embeddings are rows 0 and 1, final
    ``layernorm``, and a ``classifier`` of its own LayerNorm + dense."""
    model, emb = "audio_spectrogram_transformer", "audio_spectrogram_transformer.embeddings"

    def split(tensors: Tensors) -> Tensors:
        (pos,) = tensors
        return [pos[:, :1], pos[:, 1:2], pos[:, 2:]]

    def join(tensors: Tensors) -> Tensors:
        return [torch.cat(tensors, dim=1)]

    return [
        *_weight_bias("tokenizers.audio.proj", f"{emb}.patch_embeddings.projection"),
        rename("cls_token", f"{emb}.cls_token"),
        rename("dist_token", f"{emb}.distillation_token"),
        Transfer(("cls_pos", "dist_pos", "tokenizers.audio.pos_embed"), (f"{emb}.position_embeddings",), split, join),
        *_weight_bias("norm_f", f"{model}.layernorm"),
        *_weight_bias("head_norm", "classifier.layernorm"),
        *_weight_bias("head", "classifier.dense"),
        *_hf_vit_blocks(cfg, f"{model}.encoder.layer"),
    ]


def _hf_vit_blocks(cfg: ModelConfig, prefix: str) -> list[Transfer]:
    """transformers' ViT layers (``{prefix}.{i}``): pre-norm attention with separate q/k/v, MLP."""
    transfers = []
    for i in range(cfg.depth):
        ours, official = f"blocks.{i}", f"{prefix}.{i}"
        attn = f"{official}.attention.attention"
        transfers += [
            *_weight_bias(f"{ours}.norm1", f"{official}.layernorm_before"),
            *[fused_qkv(f"{ours}.mixer.qkv.{p}", f"{attn}.query.{p}", f"{attn}.key.{p}", f"{attn}.value.{p}")
              for p in ("weight", "bias")],
            *_weight_bias(f"{ours}.mixer.proj", f"{official}.attention.output.dense"),
            *_weight_bias(f"{ours}.norm2", f"{official}.layernorm_after"),
            *_weight_bias(f"{ours}.ffn.fc1", f"{official}.intermediate.dense"),
            *_weight_bias(f"{ours}.ffn.fc2", f"{official}.output.dense"),
        ]
    return transfers


def deit_timm_transfers(cfg: ModelConfig) -> list[Transfer]:
    """timm / facebookresearch/deit ``VisionTransformer`` (``ckpt["model"]``): class token first,
    fused ``attn.qkv`` already, final ``norm``, ``head``."""
    transfers = [
        *_weight_bias("tokenizers.image.proj", "patch_embed.proj"),
        rename("cls_token", "cls_token"),
        class_position_split("pos_embed", 0),
        *_weight_bias("norm_f", "norm"),
        *_weight_bias("head", "head"),
    ]
    for i in range(cfg.depth):
        ours, official = f"blocks.{i}", f"blocks.{i}"
        transfers += [
            *_weight_bias(f"{ours}.norm1", f"{official}.norm1"),
            *_weight_bias(f"{ours}.mixer.qkv", f"{official}.attn.qkv"),
            *_weight_bias(f"{ours}.mixer.proj", f"{official}.attn.proj"),
            *_weight_bias(f"{ours}.norm2", f"{official}.norm2"),
            *_weight_bias(f"{ours}.ffn.fc1", f"{official}.mlp.fc1"),
            *_weight_bias(f"{ours}.ffn.fc2", f"{official}.mlp.fc2"),
        ]
    return transfers


VRWKV_SPATIAL_MIX = ("spatial_decay", "spatial_first", "spatial_mix_k", "spatial_mix_v", "spatial_mix_r",
                     "key.weight", "value.weight", "receptance.weight", "output.weight")
VRWKV_CHANNEL_MIX = ("spatial_mix_k", "spatial_mix_r", "key.weight", "receptance.weight", "value.weight")


def vrwkv_transfers(cfg: ModelConfig) -> list[Transfer]:
    """OpenGVLab/Vision-RWKV, mmcls ``ImageClassifier`` (``ckpt["state_dict"]``): ``backbone.*``
    with ``ln0`` inside layer 0 (our ``input_norm``), final ``backbone.ln1`` (our ``norm_f``), a
    global-average-pooling neck without parameters and the ``head.fc`` linear head. No class token."""
    backbone = "backbone"
    transfers = [
        *_weight_bias("tokenizers.image.proj", f"{backbone}.patch_embed.projection"),
        rename("tokenizers.image.pos_embed", f"{backbone}.pos_embed"),
        *_weight_bias("input_norm", f"{backbone}.layers.0.ln0"),
        *_weight_bias("norm_f", f"{backbone}.ln1"),
        *_weight_bias("head", "head.fc"),
    ]
    for i in range(cfg.depth):
        ours, official = f"blocks.{i}", f"{backbone}.layers.{i}"
        transfers += [
            *_weight_bias(f"{ours}.norm1", f"{official}.ln1"),
            *_weight_bias(f"{ours}.norm2", f"{official}.ln2"),
            *[rename(f"{ours}.mixer.{name}", f"{official}.att.{name}") for name in VRWKV_SPATIAL_MIX],
            *[rename(f"{ours}.ffn.{name}", f"{official}.ffn.{name}") for name in VRWKV_CHANNEL_MIX],
        ]
    return transfers


@dataclass(frozen=True)
class Layout:
    """One official state_dict layout of an architecture."""

    name: str  # shown in reports and model cards
    transfers: Callable[[ModelConfig], list[Transfer]]
    # Config fields whose official values differ from our registry's defaults for this release.
    config_overrides: dict[str, object] = field(default_factory=dict)


_DEIT_LAYOUTS = (
    # transformers' ViT uses LayerNorm eps 1e-12 (config.layer_norm_eps), timm 1e-6.
    Layout("Hugging Face ViTForImageClassification", deit_hf_transfers, {"norm_eps": 1e-12}),
    Layout("timm VisionTransformer (facebookresearch/deit)", deit_timm_transfers, {"norm_eps": 1e-6}),
)

# How an AudioSet release frames its clips (rate, fbank statistics, 1024 frames) is its
# Preprocess record in effviz.models.releases, not part of the architecture.
LAYOUTS: dict[str, tuple[Layout, ...]] = {
    "vim-tiny": (Layout("hustvl/Vim", vim_transfers),),
    "vim-small": (Layout("hustvl/Vim", vim_transfers),),
    "deit-tiny": _DEIT_LAYOUTS,
    "deit-small": _DEIT_LAYOUTS,
    "vrwkv-tiny": (Layout("OpenGVLab/Vision-RWKV (mmcls)", vrwkv_transfers),),
    "aum-tiny": (Layout("kaistmm/Audio-Mamba-AuM (Bi-Bi)", aum_transfers),),
    "ast-base": (Layout("Hugging Face ASTForAudioClassification", ast_transfers),),
}


def pick_layout(arch: str, cfg: ModelConfig, official: dict[str, torch.Tensor]) -> Layout:
    """The layout of ``arch`` that names the most of the checkpoint's keys (ties: the first).

    Only key names matter here; shapes are checked once the model is built.
    """
    layouts = LAYOUTS[arch]

    def overlap(layout: Layout) -> int:
        return sum(name in official for t in layout.transfers(cfg) for name in t.official)

    best = max(layouts, key=overlap)  # max keeps the first of equals
    if overlap(best) == 0:
        expected = "; ".join(f"{layout.name}: e.g. {layout.transfers(cfg)[0].official[0]!r}" for layout in layouts)
        sample = ", ".join(list(official)[:5]) or "none"
        raise ValueError(
            f"this checkpoint is not a {arch} checkpoint in any known layout (expected keys like "
            f"{expected}); its first keys are: {sample}"
        )
    return best


def _check_coverage(transfers: list[Transfer], model_keys: set[str], layout: Layout) -> None:
    """Every parameter of our model must be filled exactly once; otherwise this file is out of date
    with the model code (our bug, not the checkpoint's)."""
    filled = Counter(name for t in transfers for name in t.ours)
    unfilled = sorted(model_keys - set(filled))
    unknown = sorted(set(filled) - model_keys)
    twice = sorted(name for name, count in filled.items() if count > 1)
    if unfilled or unknown or twice:
        raise RuntimeError(
            f"effviz.convert's {layout.name} key map is out of date with the model code: "
            f"not filled {unfilled}, not in the model {unknown}, filled twice {twice}"
        )


def _section(title: str, lines: list[str], limit: int = 25) -> str:
    shown = lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])
    return f"\n  {title}:\n" + "\n".join(f"    {line}" for line in shown)


def convert_state_dict(
    layout: Layout,
    cfg: ModelConfig,
    official: dict[str, torch.Tensor],
    model_state: dict[str, torch.Tensor],
    what: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Map an official state dict onto our names, checking every key and shape first.

    ``model_state``: the target model's state dict (its shapes are the expected ones).
    Raises ValueError listing every missing, unexpected and wrong-shaped key (official names).
    """
    transfers = layout.transfers(cfg)
    _check_coverage(transfers, set(model_state), layout)
    expected = {}  # official key -> (shape, our keys it feeds)
    for transfer in transfers:
        converted = transfer.to_official([model_state[name] for name in transfer.ours])
        for name, tensor in zip(transfer.official, converted):
            expected[name] = (tuple(tensor.shape), transfer.ours)

    missing = [name for name in expected if name not in official]
    unexpected = [name for name in official if name not in expected]
    wrong_shape = [
        f"{name}: checkpoint {list(official[name].shape)}, expected {list(shape)} (-> {', '.join(ours)})"
        for name, (shape, ours) in expected.items()
        if name in official and tuple(official[name].shape) != shape
    ]
    if missing or unexpected or wrong_shape:
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong_shape)} wrong shape"
        report = f"{what} does not match the {layout.name} layout our model expects ({counts})"
        if missing:
            report += _section("missing (expected, not in the checkpoint)", missing)
        if unexpected:
            report += _section("unexpected (in the checkpoint, not used)", unexpected)
        if wrong_shape:
            report += _section("wrong shape", wrong_shape)
        raise ValueError(report)

    ours = {}
    for transfer in transfers:
        converted = transfer.to_ours([official[name] for name in transfer.official])
        ours.update(zip(transfer.ours, converted))
    return ours
