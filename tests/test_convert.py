"""effviz.convert: official checkpoints in, checked and equivalent effviz models out.

The official state dicts here are built by hand from the layouts in DESIGN.md §3 (names and
shapes; random values), not from our key maps, and each imported model is compared against a
plain re-implementation of the official forward pass computed from the same official tensors.
Forward checks run on small versions of each architecture (48 channels, 2 layers, 4x4 patches);
separate tests import checkpoints at the real tiny sizes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from effviz.convert import OFFICIAL, import_checkpoint
from effviz.convert.keymaps import LAYOUTS
from effviz.convert.__main__ import main as cli_main
from effviz.models import EffvizModel, ModelConfig
from effviz.models import registry
from effviz.models.releases import read_preprocess

REPO_ROOT = Path(__file__).resolve().parents[1]
FP32_TOL = dict(rtol=6e-4, atol=2e-3)  # DESIGN.md §4
DIM, DEPTH, GRID = 48, 2, 4  # small: 48 channels split into 3 heads and 4 Q-shift quarters
CLASSES = 1000  # the imported models carry the 1000 ImageNet labels
AUDIOSET_CLASSES = 527
AUDIO_GRID = (3, 5)  # (mel, time) patches of the small AuM: an odd count, so "middle" is 15 // 2 = 7
# The small AST: 36 mel bins -> (36 - 16) // 10 + 1 = 3 overlapping patch rows; 46 frames -> 4 columns.
AST_MEL_BINS, AST_FRAMES, AST_GRID = 36, 46, (3, 4)


@pytest.fixture
def small_archs(monkeypatch):
    """Make the registry's tiny architectures small, so imports and forwards take milliseconds."""
    for arch in ("vim-tiny", "vrwkv-tiny", "deit-tiny"):
        make = registry.ARCHITECTURES[arch]
        monkeypatch.setitem(registry.ARCHITECTURES, arch, lambda make=make: dataclasses.replace(
            make(), embed_dim=DIM, depth=DEPTH, grid_size=(GRID, GRID), image_size=(16 * GRID, 16 * GRID)))
    make_aum = registry.ARCHITECTURES["aum-tiny"]
    monkeypatch.setitem(registry.ARCHITECTURES, "aum-tiny", lambda: dataclasses.replace(
        make_aum(), embed_dim=DIM, depth=DEPTH, mel_bins=16 * AUDIO_GRID[0], audio_grid_size=AUDIO_GRID))
    make_ast = registry.ARCHITECTURES["ast-base"]
    monkeypatch.setitem(registry.ARCHITECTURES, "ast-base", lambda: dataclasses.replace(
        make_ast(), embed_dim=DIM, depth=DEPTH, num_heads=3, mel_bins=AST_MEL_BINS, audio_grid_size=AST_GRID))


def image(batch: int = 2, grid: int = GRID) -> torch.Tensor:
    return torch.randn(batch, 3, 16 * grid, 16 * grid, generator=torch.Generator().manual_seed(3))


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Values of a plausible scale: norms and gates near their trained ranges, weights ~0.1."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        parts = name.split(".")
        if len(parts) > 1 and parts[-2].startswith(("norm", "ln", "layernorm")) and parts[-1] == "weight":
            value = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif "spatial_mix" in name:
            value = torch.rand(shape, generator=gen)
        elif name.endswith(("A_log", "A_b_log")):
            s4d_real = torch.log(torch.arange(1, shape[1] + 1.0)).repeat(shape[0], 1)  # Mamba's A init
            value = s4d_real + 0.1 * torch.randn(shape, generator=gen)
        else:
            value = 0.1 * torch.randn(shape, generator=gen)
        state[name] = value
    return state


# --- official layouts, by hand from DESIGN.md §3 -------------------------------------------------

def vim_shapes(dim: int, depth: int, patches: int, d_state: int = 16) -> dict[str, tuple[int, ...]]:
    inner, rank = 2 * dim, math.ceil(dim / 16)
    shapes = {"patch_embed.proj.weight": (dim, 3, 16, 16), "patch_embed.proj.bias": (dim,),
              "cls_token": (1, 1, dim), "pos_embed": (1, patches + 1, dim)}
    for i in range(depth):
        m = f"layers.{i}.mixer"
        shapes[f"layers.{i}.norm.weight"] = (dim,)
        shapes[f"{m}.in_proj.weight"] = (2 * inner, dim)
        for s in ("", "_b"):
            shapes |= {f"{m}.conv1d{s}.weight": (inner, 1, 4), f"{m}.conv1d{s}.bias": (inner,),
                       f"{m}.x_proj{s}.weight": (rank + 2 * d_state, inner),
                       f"{m}.dt_proj{s}.weight": (inner, rank), f"{m}.dt_proj{s}.bias": (inner,),
                       f"{m}.A{s}_log": (inner, d_state), f"{m}.D{s}": (inner,)}
        shapes[f"{m}.out_proj.weight"] = (dim, inner)
    return shapes | {"norm_f.weight": (dim,), "head.weight": (CLASSES, dim), "head.bias": (CLASSES,)}


def aum_shapes(dim: int, depth: int, patches: int) -> dict[str, tuple[int, ...]]:
    """kaistmm/Audio-Mamba-AuM, Bi-Bi (bimamba v2): Vim's block names, a 1-channel patch embedding,
    the position embedding inside FlexiPosEmbed, 527 AudioSet classes."""
    shapes = vim_shapes(dim, depth, patches)
    del shapes["pos_embed"]
    return shapes | {"patch_embed.proj.weight": (dim, 1, 16, 16), "pos_embed.pos_embed": (1, patches + 1, dim),
                     "head.weight": (AUDIOSET_CLASSES, dim), "head.bias": (AUDIOSET_CLASSES,)}


def save_aum_checkpoint(state, path):
    """As AuM's traintest.py saves it: a raw state_dict(), "module."-prefixed under DataParallel."""
    torch.save({f"module.{name}": tensor for name, tensor in state.items()}, path)


def deit_timm_shapes(dim: int, depth: int, patches: int) -> dict[str, tuple[int, ...]]:
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, patches + 1, dim),
              "patch_embed.proj.weight": (dim, 3, 16, 16), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}"
        shapes |= {f"{b}.norm1.weight": (dim,), f"{b}.norm1.bias": (dim,),
                   f"{b}.attn.qkv.weight": (3 * dim, dim), f"{b}.attn.qkv.bias": (3 * dim,),
                   f"{b}.attn.proj.weight": (dim, dim), f"{b}.attn.proj.bias": (dim,),
                   f"{b}.norm2.weight": (dim,), f"{b}.norm2.bias": (dim,),
                   f"{b}.mlp.fc1.weight": (4 * dim, dim), f"{b}.mlp.fc1.bias": (4 * dim,),
                   f"{b}.mlp.fc2.weight": (dim, 4 * dim), f"{b}.mlp.fc2.bias": (dim,)}
    return shapes | {"norm.weight": (dim,), "norm.bias": (dim,), "head.weight": (CLASSES, dim), "head.bias": (CLASSES,)}


def ast_shapes(dim: int, depth: int, patches: int) -> dict[str, tuple[int, ...]]:
    """transformers' ASTForAudioClassification: HF ViT layers, class + distillation tokens, a
    1-channel 16x16 patch projection (stride 10 is not in the weights), classifier LayerNorm + dense."""
    model, emb = "audio_spectrogram_transformer", "audio_spectrogram_transformer.embeddings"
    shapes = {f"{emb}.cls_token": (1, 1, dim), f"{emb}.distillation_token": (1, 1, dim),
              f"{emb}.position_embeddings": (1, patches + 2, dim),
              f"{emb}.patch_embeddings.projection.weight": (dim, 1, 16, 16),
              f"{emb}.patch_embeddings.projection.bias": (dim,)}
    for i in range(depth):
        layer = f"{model}.encoder.layer.{i}"
        for name, shape in (("attention.attention.query", (dim, dim)), ("attention.attention.key", (dim, dim)),
                            ("attention.attention.value", (dim, dim)), ("attention.output.dense", (dim, dim)),
                            ("intermediate.dense", (4 * dim, dim)), ("output.dense", (dim, 4 * dim)),
                            ("layernorm_before", (dim,)), ("layernorm_after", (dim,))):
            shapes |= {f"{layer}.{name}.weight": shape, f"{layer}.{name}.bias": (shape[0],)}
    return shapes | {f"{model}.layernorm.weight": (dim,), f"{model}.layernorm.bias": (dim,),
                     "classifier.layernorm.weight": (dim,), "classifier.layernorm.bias": (dim,),
                     "classifier.dense.weight": (AUDIOSET_CLASSES, dim), "classifier.dense.bias": (AUDIOSET_CLASSES,)}


def deit_timm_to_hf(timm: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """The same weights as transformers' ViTForImageClassification names them."""
    hf = {"vit.embeddings.cls_token": timm["cls_token"], "vit.embeddings.position_embeddings": timm["pos_embed"],
          "vit.embeddings.patch_embeddings.projection.weight": timm["patch_embed.proj.weight"],
          "vit.embeddings.patch_embeddings.projection.bias": timm["patch_embed.proj.bias"],
          "vit.layernorm.weight": timm["norm.weight"], "vit.layernorm.bias": timm["norm.bias"],
          "classifier.weight": timm["head.weight"], "classifier.bias": timm["head.bias"]}
    for i in range(depth):
        b, layer = f"blocks.{i}", f"vit.encoder.layer.{i}"
        for p in ("weight", "bias"):
            q, k, v = timm[f"{b}.attn.qkv.{p}"].chunk(3)
            hf |= {f"{layer}.attention.attention.query.{p}": q, f"{layer}.attention.attention.key.{p}": k,
                   f"{layer}.attention.attention.value.{p}": v,
                   f"{layer}.attention.output.dense.{p}": timm[f"{b}.attn.proj.{p}"],
                   f"{layer}.layernorm_before.{p}": timm[f"{b}.norm1.{p}"],
                   f"{layer}.layernorm_after.{p}": timm[f"{b}.norm2.{p}"],
                   f"{layer}.intermediate.dense.{p}": timm[f"{b}.mlp.fc1.{p}"],
                   f"{layer}.output.dense.{p}": timm[f"{b}.mlp.fc2.{p}"]}
    return {name: tensor.contiguous() for name, tensor in hf.items()}


def vrwkv_shapes(dim: int, depth: int, patches: int) -> dict[str, tuple[int, ...]]:
    b = "backbone"
    shapes = {f"{b}.patch_embed.projection.weight": (dim, 3, 16, 16), f"{b}.patch_embed.projection.bias": (dim,),
              f"{b}.pos_embed": (1, patches, dim), f"{b}.layers.0.ln0.weight": (dim,), f"{b}.layers.0.ln0.bias": (dim,)}
    for i in range(depth):
        layer = f"{b}.layers.{i}"
        for ln in ("ln1", "ln2"):
            shapes |= {f"{layer}.{ln}.weight": (dim,), f"{layer}.{ln}.bias": (dim,)}
        att, ffn = f"{layer}.att", f"{layer}.ffn"
        shapes |= {f"{att}.spatial_decay": (dim,), f"{att}.spatial_first": (dim,),
                   **{f"{att}.spatial_mix_{x}": (1, 1, dim) for x in "kvr"},
                   **{f"{att}.{p}.weight": (dim, dim) for p in ("key", "value", "receptance", "output")},
                   f"{ffn}.spatial_mix_k": (1, 1, dim), f"{ffn}.spatial_mix_r": (1, 1, dim),
                   f"{ffn}.key.weight": (4 * dim, dim), f"{ffn}.receptance.weight": (dim, dim),
                   f"{ffn}.value.weight": (dim, 4 * dim)}
    return shapes | {f"{b}.ln1.weight": (dim,), f"{b}.ln1.bias": (dim,),
                     "head.fc.weight": (CLASSES, dim), "head.fc.bias": (CLASSES,)}


# --- the official forward passes, written plainly ----------------------------------------------

def patches(sd, prefix, x):
    return F.conv2d(x, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], stride=16).flatten(2).transpose(1, 2)


def rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def layer_norm(sd, prefix, x, eps):
    return F.layer_norm(x, x.shape[-1:], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps)


def mamba_direction(sd, m, s, x, z):
    """One Mamba branch on (batch, inner, L) as mamba_inner_fn: causal conv + SiLU, x_proj -> dt, B,
    C; sequential selective scan with D skip; gated by SiLU(z)."""
    weight = sd[f"{m}.conv1d{s}.weight"]
    x = F.silu(F.conv1d(F.pad(x, (weight.shape[-1] - 1, 0)), weight, sd[f"{m}.conv1d{s}.bias"], groups=x.shape[1]))
    A = -torch.exp(sd[f"{m}.A{s}_log"])
    rank, d_state = sd[f"{m}.dt_proj{s}.weight"].shape[1], A.shape[1]
    dt, B, C = (x.transpose(1, 2) @ sd[f"{m}.x_proj{s}.weight"].T).split([rank, d_state, d_state], dim=-1)
    delta = F.softplus(dt @ sd[f"{m}.dt_proj{s}.weight"].T + sd[f"{m}.dt_proj{s}.bias"])  # (batch, L, inner)
    h = x.new_zeros(x.shape[0], x.shape[1], d_state)
    ys = []
    for t in range(x.shape[2]):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * B[:, t, None, :] * x[:, :, t, None]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return (torch.stack(ys, dim=-1) + sd[f"{m}.D{s}"][:, None] * x) * F.silu(z)


def vim_reference(sd, x, depth):
    x = patches(sd, "patch_embed.proj", x)
    mid = x.shape[1] // 2
    x = torch.cat([x[:, :mid], sd["cls_token"].expand(x.shape[0], -1, -1), x[:, mid:]], dim=1) + sd["pos_embed"]
    return vim_blocks_and_head(sd, x, depth, mid)


def aum_reference(sd, fbank, depth):
    """AuM's forward_features: (batch, frames, mel) -> (batch, 1, mel, frames) patches, class token
    inserted at N // 2; FlexiPosEmbed moves it to the front, adds pos_embed, moves it back."""
    x = patches(sd, "patch_embed.proj", fbank.transpose(1, 2).unsqueeze(1))
    mid = x.shape[1] // 2
    x = torch.cat([x[:, :mid], sd["cls_token"].expand(x.shape[0], -1, -1), x[:, mid:]], dim=1)
    front = torch.cat([x[:, mid:mid + 1], x[:, :mid], x[:, mid + 1:]], dim=1) + sd["pos_embed.pos_embed"]
    x = torch.cat([front[:, 1:mid + 1], front[:, :1], front[:, mid + 1:]], dim=1)
    return vim_blocks_and_head(sd, x, depth, mid)


def vim_blocks_and_head(sd, x, depth, cls_index):
    residual, hidden = None, x
    for i in range(depth):
        residual = hidden if residual is None else residual + hidden
        h = rms_norm(residual, sd[f"layers.{i}.norm.weight"])
        m = f"layers.{i}.mixer"
        xs, z = (h @ sd[f"{m}.in_proj.weight"].T).transpose(1, 2).chunk(2, dim=1)
        forward = mamba_direction(sd, m, "", xs, z)
        backward = mamba_direction(sd, m, "_b", xs.flip(-1), z.flip(-1)).flip(-1)
        hidden = ((forward + backward) / 2).transpose(1, 2) @ sd[f"{m}.out_proj.weight"].T
    out = rms_norm(residual + hidden, sd["norm_f.weight"])
    return F.linear(out[:, cls_index], sd["head.weight"], sd["head.bias"])


def softmax_attention(q, k, v, heads):
    """Multi-head softmax attention on (batch, L, dim) projections, heads split from dim."""
    batch, length, dim = q.shape
    q, k, v = (t.reshape(batch, length, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
    attn = ((q @ k.transpose(-1, -2)) / math.sqrt(dim // heads)).softmax(-1) @ v
    return attn.transpose(1, 2).reshape(batch, length, dim)


def deit_reference(sd, x, depth, heads, eps):
    """timm/DeiT ViT: class token first, pre-norm attention + exact-GELU MLP blocks."""
    x = patches(sd, "patch_embed.proj", x)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["pos_embed"]
    for i in range(depth):
        b = f"blocks.{i}"
        h = layer_norm(sd, f"{b}.norm1", x, eps)
        q, k, v = F.linear(h, sd[f"{b}.attn.qkv.weight"], sd[f"{b}.attn.qkv.bias"]).chunk(3, dim=-1)
        x = x + F.linear(softmax_attention(q, k, v, heads), sd[f"{b}.attn.proj.weight"], sd[f"{b}.attn.proj.bias"])
        h = layer_norm(sd, f"{b}.norm2", x, eps)
        h = F.gelu(F.linear(h, sd[f"{b}.mlp.fc1.weight"], sd[f"{b}.mlp.fc1.bias"]))
        x = x + F.linear(h, sd[f"{b}.mlp.fc2.weight"], sd[f"{b}.mlp.fc2.bias"])
    return F.linear(layer_norm(sd, "norm", x, eps)[:, 0], sd["head.weight"], sd["head.bias"])


def ast_reference(sd, fbank, depth, heads, eps=1e-12):
    """transformers' ASTForAudioClassification on (batch, frames, mel): the fbank as a
    (batch, 1, mel, frames) image, 16x16 patches every 10 bins/frames, [cls, dist, patches] +
    position embeddings, ViT layers, final LayerNorm, mean of the two prefix tokens, LayerNorm, dense."""
    model, emb = "audio_spectrogram_transformer", "audio_spectrogram_transformer.embeddings"
    x = F.conv2d(fbank.transpose(1, 2).unsqueeze(1), sd[f"{emb}.patch_embeddings.projection.weight"],
                 sd[f"{emb}.patch_embeddings.projection.bias"], stride=10).flatten(2).transpose(1, 2)
    batch = x.shape[0]
    x = torch.cat([sd[f"{emb}.cls_token"].expand(batch, -1, -1), sd[f"{emb}.distillation_token"].expand(batch, -1, -1),
                   x], dim=1) + sd[f"{emb}.position_embeddings"]
    for i in range(depth):
        layer = f"{model}.encoder.layer.{i}"
        h = layer_norm(sd, f"{layer}.layernorm_before", x, eps)
        q, k, v = (F.linear(h, sd[f"{layer}.attention.attention.{n}.weight"], sd[f"{layer}.attention.attention.{n}.bias"])
                   for n in ("query", "key", "value"))
        attn = softmax_attention(q, k, v, heads)
        x = x + F.linear(attn, sd[f"{layer}.attention.output.dense.weight"], sd[f"{layer}.attention.output.dense.bias"])
        h = layer_norm(sd, f"{layer}.layernorm_after", x, eps)
        h = F.gelu(F.linear(h, sd[f"{layer}.intermediate.dense.weight"], sd[f"{layer}.intermediate.dense.bias"]))
        x = x + F.linear(h, sd[f"{layer}.output.dense.weight"], sd[f"{layer}.output.dense.bias"])
    x = layer_norm(sd, f"{model}.layernorm", x, eps)
    pooled = layer_norm(sd, "classifier.layernorm", (x[:, 0] + x[:, 1]) / 2, eps)
    return F.linear(pooled, sd["classifier.dense.weight"], sd["classifier.dense.bias"])


def q_shift_official(x, h, w):
    """Vision-RWKV's q_shift on (batch, C, H, W): quarters take the left/right/upper/lower patch."""
    batch, n, c = x.shape
    grid = x.transpose(1, 2).reshape(batch, c, h, w)
    out, q = torch.zeros_like(grid), c // 4
    out[:, :q, :, 1:] = grid[:, :q, :, :-1]
    out[:, q:2 * q, :, :-1] = grid[:, q:2 * q, :, 1:]
    out[:, 2 * q:3 * q, 1:, :] = grid[:, 2 * q:3 * q, :-1, :]
    out[:, 3 * q:, :-1, :] = grid[:, 3 * q:, 1:, :]
    return out.flatten(2).transpose(1, 2)


def bi_wkv_quadratic(w, u, k, v):
    """y_t = softmax_i(-(|t-i|-1) w + k_i, with u + k_t at i = t) . v  (DESIGN.md §3), O(T^2)."""
    t = torch.arange(k.shape[1])
    distance = (t[:, None] - t[None, :]).abs()
    logits = -(distance - 1)[None, :, :, None] * w + k[:, None, :, :]  # (batch, t, i, C)
    logits[:, t, t] = u + k
    return (logits.softmax(dim=2) * v[:, None]).sum(dim=2)


def vrwkv_reference(sd, x, depth, eps=1e-5):
    b = "backbone"
    x = patches(sd, f"{b}.patch_embed.projection", x)
    h = w = int(math.isqrt(x.shape[1]))
    x = x + sd[f"{b}.pos_embed"]
    tokens = x.shape[1]

    def mix(prefix, which, y, shifted):
        mu = sd[f"{prefix}.spatial_mix_{which}"]
        return y * mu + shifted * (1 - mu)

    for i in range(depth):
        layer = f"{b}.layers.{i}"
        if i == 0:
            x = layer_norm(sd, f"{layer}.ln0", x, eps)
        y, att = layer_norm(sd, f"{layer}.ln1", x, eps), f"{layer}.att"
        shifted = q_shift_official(y, h, w)
        k, v, r = (mix(att, p, y, shifted) @ sd[f"{att}.{name}.weight"].T
                   for p, name in (("k", "key"), ("v", "value"), ("r", "receptance")))
        wkv = bi_wkv_quadratic(sd[f"{att}.spatial_decay"] / tokens, sd[f"{att}.spatial_first"] / tokens, k, v)
        x = x + (torch.sigmoid(r) * wkv) @ sd[f"{att}.output.weight"].T
        y, ffn = layer_norm(sd, f"{layer}.ln2", x, eps), f"{layer}.ffn"
        shifted = q_shift_official(y, h, w)
        k = torch.relu(mix(ffn, "k", y, shifted) @ sd[f"{ffn}.key.weight"].T).square()
        r = mix(ffn, "r", y, shifted) @ sd[f"{ffn}.receptance.weight"].T
        x = x + torch.sigmoid(r) * (k @ sd[f"{ffn}.value.weight"].T)
    x = layer_norm(sd, f"{b}.ln1", x, eps)
    return F.linear(x.mean(dim=1), sd["head.fc.weight"], sd["head.fc.bias"])


def assert_matches_reference(model, reference_fn, state, **kwargs):
    x = image()
    with torch.no_grad():
        got = model(image=x)
        expected = reference_fn({k: v.double() for k, v in state.items()}, x.double(), **kwargs)
    assert got.shape == (2, CLASSES)
    torch.testing.assert_close(got, expected.float(), **FP32_TOL)


def saved_model(out_dir: Path) -> tuple[ModelConfig, EffvizModel]:
    """Rebuild a saved folder from its files alone."""
    cfg = ModelConfig(**json.loads((out_dir / "config.json").read_text()))
    model = EffvizModel(cfg)
    model.load_state_dict(load_file(out_dir / "model.safetensors"), strict=True)
    return cfg, model.eval()


# --- imports at small size, against the official forward ----------------------------------------

def test_every_importable_architecture_has_a_layout_and_a_release():
    assert set(OFFICIAL) == set(LAYOUTS) == {"vim-tiny", "vim-small", "vrwkv-tiny", "deit-tiny", "deit-small", "aum-tiny", "ast-base"}


def save_vim_training_checkpoint(state, path):
    """As hustvl/Vim's main.py saves it: weights under "model" beside optimiser state and argparse args."""
    torch.save({"model": state, "model_ema": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]},
                "epoch": 299, "scaler": {"scale": 65536.0},
                "args": argparse.Namespace(model="vim_tiny_patch16_224", lr=5e-4, input_size=224)}, path)


def test_vim_import_matches_official_forward(small_archs, tmp_path):
    state = random_state(vim_shapes(DIM, DEPTH, GRID * GRID))
    save_vim_training_checkpoint(state, tmp_path / "vim.pth")
    model = import_checkpoint("vim-tiny", tmp_path / "vim.pth", tmp_path / "out")

    params = dict(model.named_parameters())
    mid = GRID * GRID // 2
    assert torch.equal(params["cls_pos"], state["pos_embed"][:, mid:mid + 1])
    assert torch.equal(params["tokenizers.image.pos_embed"][:, mid], state["pos_embed"][:, mid + 1])
    assert torch.equal(params["blocks.1.mixer.bwd.A_log"], state["layers.1.mixer.A_b_log"])
    assert torch.equal(params["blocks.1.mixer.bwd.conv1d.weight"], state["layers.1.mixer.conv1d_b.weight"])
    assert torch.equal(params["blocks.0.norm1.weight"], state["layers.0.norm.weight"])
    assert_matches_reference(model, vim_reference, state, depth=DEPTH)

    cfg, reloaded = saved_model(tmp_path / "out")
    assert cfg.labels[:2] == ["tench", "goldfish"] and len(cfg.labels) == CLASSES
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    card = (tmp_path / "out" / "README.md").read_text()
    assert "vim.pth" in card and "hustvl/Vim-tiny-midclstok" in card and "apache-2.0" in card


def test_aum_import_matches_official_forward(small_archs, tmp_path):
    patch_count = AUDIO_GRID[0] * AUDIO_GRID[1]
    state = random_state(aum_shapes(DIM, DEPTH, patch_count))
    save_aum_checkpoint(state, tmp_path / "best_audio_model.pth")
    model = import_checkpoint("aum-tiny", tmp_path / "best_audio_model.pth", tmp_path / "out")

    params = dict(model.named_parameters())
    assert torch.equal(params["cls_pos"], state["pos_embed.pos_embed"][:, :1])  # row 0, not the middle
    assert torch.equal(params["tokenizers.audio.pos_embed"], state["pos_embed.pos_embed"][:, 1:])
    assert torch.equal(params["tokenizers.audio.proj.weight"], state["patch_embed.proj.weight"])
    assert torch.equal(params["blocks.1.mixer.bwd.dt_proj.bias"], state["layers.1.mixer.dt_proj_b.bias"])
    fbank = torch.randn(2, 16 * AUDIO_GRID[1], 16 * AUDIO_GRID[0], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = model(audio=fbank)
        expected = aum_reference({k: v.double() for k, v in state.items()}, fbank.double(), depth=DEPTH)
    assert got.shape == (2, AUDIOSET_CLASSES)
    torch.testing.assert_close(got, expected.float(), **FP32_TOL)

    cfg, reloaded = saved_model(tmp_path / "out")
    pre = read_preprocess(tmp_path / "out", cfg)  # AudioSet framing: 1024 frames, the 8x64 grid
    assert cfg.modalities == ("audio",) and (pre.audio.fbank_mean, pre.audio.fbank_std) == (-4.2677393, 4.5689974)
    assert pre.audio.max_frames == 1024 and pre.audio.padding == "end" and pre.activation == "sigmoid"
    assert cfg.labels[:2] == ["Speech", "Male speech, man speaking"] and len(cfg.labels) == AUDIOSET_CLASSES
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    card = (tmp_path / "out" / "README.md").read_text()
    assert "best_audio_model.pth" in card and "kaistmm/Audio-Mamba-AuM" in card and "bsd-3-clause" in card
    assert "audio-classification" in card and "class_labels_indices.csv" in card


def test_aum_from_a_hub_repo_id_says_the_weights_are_not_on_the_hub():
    with pytest.raises(FileNotFoundError, match="aum-tiny weights are not on the Hugging Face Hub.*Google Drive"):
        import_checkpoint("aum-tiny", "kaistmm/Audio-Mamba-AuM")


def test_ast_import_matches_official_forward(small_archs, tmp_path):
    emb = "audio_spectrogram_transformer.embeddings"
    state = random_state(ast_shapes(DIM, DEPTH, AST_GRID[0] * AST_GRID[1]))
    save_file(state, tmp_path / "model.safetensors")
    model = import_checkpoint("ast-base", tmp_path / "model.safetensors", tmp_path / "out")

    assert torch.equal(model.cls_pos, state[f"{emb}.position_embeddings"][:, :1])
    assert torch.equal(model.dist_pos, state[f"{emb}.position_embeddings"][:, 1:2])
    assert torch.equal(model.tokenizers.audio.pos_embed, state[f"{emb}.position_embeddings"][:, 2:])
    assert torch.equal(model.dist_token, state[f"{emb}.distillation_token"])
    fbank = torch.randn(2, AST_FRAMES, AST_MEL_BINS, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = model(audio=fbank)
        expected = ast_reference({k: v.double() for k, v in state.items()}, fbank.double(), depth=DEPTH, heads=3)
    assert got.shape == (2, AUDIOSET_CLASSES)
    torch.testing.assert_close(got, expected.float(), **FP32_TOL)

    cfg, reloaded = saved_model(tmp_path / "out")
    assert (cfg.audio_patch_stride, cfg.dist_token, cfg.head_norm, cfg.norm_eps) == (10, True, True, 1e-12)
    assert read_preprocess(tmp_path / "out", cfg) == OFFICIAL["ast-base"].preprocess
    assert cfg.labels[0] == "Speech" and len(cfg.labels) == AUDIOSET_CLASSES
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    card = (tmp_path / "out" / "README.md").read_text()
    assert "MIT/ast-finetuned-audioset-10-10-0.4593" in card and "sigmoid" in card and "1024 frames" in card


@pytest.mark.parametrize("layout", ["huggingface", "timm"])
def test_deit_import_matches_official_forward(small_archs, tmp_path, layout):
    timm_state = random_state(deit_timm_shapes(DIM, DEPTH, GRID * GRID))
    if layout == "huggingface":
        path, eps = tmp_path / "model.safetensors", 1e-12  # transformers' ViT layer_norm_eps
        save_file(deit_timm_to_hf(timm_state, DEPTH), path)
    else:
        path, eps = tmp_path / "deit_tiny_patch16_224.pth", 1e-6
        torch.save({"model": timm_state}, path)
    model = import_checkpoint("deit-tiny", path, tmp_path / "out")

    assert model.config.norm_eps == eps
    assert torch.equal(model.cls_pos, timm_state["pos_embed"][:, :1])
    assert torch.equal(model.blocks[1].mixer.qkv.weight, timm_state["blocks.1.attn.qkv.weight"])
    assert_matches_reference(model, deit_reference, timm_state, depth=DEPTH, heads=3, eps=eps)
    assert saved_model(tmp_path / "out")[0].norm_eps == eps


def test_vrwkv_import_matches_official_forward(small_archs, tmp_path):
    state = random_state(vrwkv_shapes(DIM, DEPTH, GRID * GRID))
    torch.save({"meta": {"epoch": 300, "CLASSES": ["tench"]}, "state_dict": state}, tmp_path / "vrwkv.pth")
    model = import_checkpoint("vrwkv-tiny", tmp_path / "vrwkv.pth", tmp_path / "out")

    assert torch.equal(model.input_norm.weight, state["backbone.layers.0.ln0.weight"])
    assert torch.equal(model.norm_f.weight, state["backbone.ln1.weight"])
    assert torch.equal(model.blocks[1].mixer.spatial_mix_v, state["backbone.layers.1.att.spatial_mix_v"])
    assert_matches_reference(model, vrwkv_reference, state, depth=DEPTH)


# --- every key and shape checked ----------------------------------------------------------------

def _drop(state, key):
    del state[key]


def _add(state, key):
    state[key] = torch.zeros(3)


def _reshape(state, key):
    state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])


@pytest.mark.parametrize("change, key, kind", [
    (_drop, "layers.1.mixer.A_b_log", "missing"),
    (_add, "layers.1.mixer.gamma", "unexpected"),
    (_reshape, "layers.0.mixer.x_proj_b.weight", "wrong shape"),
    (_drop, "pos_embed", "missing"),
])
def test_mismatched_checkpoint_is_a_clear_error_naming_the_key(small_archs, tmp_path, change, key, kind):
    state = random_state(vim_shapes(DIM, DEPTH, GRID * GRID))
    change(state, key)
    save_vim_training_checkpoint(state, tmp_path / "vim.pth")
    with pytest.raises(ValueError, match=rf"(?s)1 {kind}.*{kind}.*:\n\s+{key.replace('.', '[.]')}") as error:
        import_checkpoint("vim-tiny", tmp_path / "vim.pth", tmp_path / "out")
    assert str(error.value).count("\n    ") == 1  # exactly the one bad key is listed
    assert not (tmp_path / "out").exists()


def test_aum_fo_bi_checkpoint_lists_the_backward_branch_it_lacks(small_archs, tmp_path):
    """AuM-B's Fo-Bi variant (bimamba v1) shares conv1d/x_proj/dt_proj/D between directions and
    has only A_b_log of its own: our Bi-Bi blocks cannot take it, and every absent tensor is named."""
    state = random_state(aum_shapes(DIM, DEPTH, AUDIO_GRID[0] * AUDIO_GRID[1]))
    v2_only = [name for name in state if "_b." in name or name.endswith(".D_b")]
    for name in v2_only:
        del state[name]
    save_aum_checkpoint(state, tmp_path / "fo_bi.pth")
    with pytest.raises(ValueError, match=rf"{len(v2_only)} missing, 0 unexpected, 0 wrong shape") as error:
        import_checkpoint("aum-tiny", tmp_path / "fo_bi.pth", tmp_path / "out")
    assert all(name in str(error.value) for name in v2_only)
    assert not (tmp_path / "out").exists()


def test_vim_imagenet_checkpoint_given_as_aum_is_refused_with_its_differences(small_archs, tmp_path):
    state = random_state(vim_shapes(DIM, DEPTH, AUDIO_GRID[0] * AUDIO_GRID[1]))
    save_vim_training_checkpoint(state, tmp_path / "vim.pth")
    with pytest.raises(ValueError, match=r"(?s)1 missing, 1 unexpected, 3 wrong shape.*pos_embed[.]pos_embed.*"
                       r"patch_embed[.]proj[.]weight: checkpoint \[48, 3, 16, 16\], expected \[48, 1, 16, 16\]"):
        import_checkpoint("aum-tiny", tmp_path / "vim.pth", tmp_path / "out")


def test_wrong_shape_reports_both_shapes(small_archs, tmp_path):
    state = random_state(deit_timm_shapes(DIM, DEPTH, GRID * GRID + 1))  # one patch too many
    torch.save({"model": state}, tmp_path / "deit.pth")
    with pytest.raises(ValueError, match=r"pos_embed: checkpoint \[1, 18, 48\], expected \[1, 17, 48\]"):
        import_checkpoint("deit-tiny", tmp_path / "deit.pth", tmp_path / "out")


def test_checkpoint_of_another_architecture_is_refused(small_archs, tmp_path):
    save_file(random_state(vrwkv_shapes(DIM, DEPTH, GRID * GRID)), tmp_path / "vrwkv.safetensors")
    with pytest.raises(ValueError, match="not a vim-tiny checkpoint in any known layout"):
        import_checkpoint("vim-tiny", tmp_path / "vrwkv.safetensors", tmp_path / "out")


# --- loading safely -----------------------------------------------------------------------------

def write_marker(path):
    Path(path).write_text("code ran")


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would call write_marker(marker)
        return write_marker, (str(self.marker),)


def test_untrusted_pickle_is_refused_without_running_it(small_archs, tmp_path):
    marker = tmp_path / "marker"
    state = random_state(vim_shapes(DIM, DEPTH, GRID * GRID))
    torch.save({"model": state, "args": Exploit(marker)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"refusing to load .*evil\.pth.*write_marker.*argparse\.Namespace"):
        import_checkpoint("vim-tiny", tmp_path / "evil.pth", tmp_path / "out")
    assert not marker.exists()


def test_unreadable_or_missing_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(ValueError, match="junk.pth is not a readable PyTorch checkpoint"):
        import_checkpoint("vim-tiny", tmp_path / "junk.pth", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        import_checkpoint("vim-tiny", tmp_path / "absent.pth", tmp_path / "out")
    with pytest.raises(ValueError, match="no official checkpoint import for 'vir-tiny'; choose one of vim-tiny, "):
        import_checkpoint("vir-tiny", tmp_path / "junk.pth")


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def test_hub_offline_fails_fast_with_a_clear_message(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"could not download vim_t_midclstok_76p1acc\.pth "
                       r"\(hustvl/Vim-tiny-midclstok\) from the Hugging Face Hub: offline "
                       r"\(HF_HUB_OFFLINE is set\).*pass a local file"):
        import_checkpoint("vim-tiny", "hustvl/Vim-tiny-midclstok")
    assert time.monotonic() - start < 5


def test_hub_unreachable_fails_fast_with_a_clear_message(empty_hub_cache, monkeypatch):
    """No HF_HUB_OFFLINE, but nothing answers at the endpoint (here: a closed local port)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"could not download model\.safetensors "
                       r".* from the Hugging Face Hub: offline \(cannot connect to 127\.0\.0\.1.*pass a local file"):
        import_checkpoint("deit-tiny", "facebook/deit-tiny-patch16-224")
    assert time.monotonic() - start < 5


# --- the real tiny sizes of DESIGN.md, and the CLI ---------------------------------------------

@pytest.mark.parametrize("arch, shapes, save", [
    ("vim-tiny", vim_shapes(192, 24, 196), save_vim_training_checkpoint),
    ("vrwkv-tiny", vrwkv_shapes(192, 12, 196), lambda state, path: torch.save({"state_dict": state}, path)),
    ("aum-tiny", aum_shapes(192, 24, 8 * 64), save_aum_checkpoint),
    ("ast-base", ast_shapes(768, 12, 12 * 101), lambda state, path: torch.save(state, path)),  # pytorch_model.bin
], ids=["vim-tiny", "vrwkv-tiny", "aum-tiny", "ast-base"])
def test_real_tiny_checkpoints_import(tmp_path, arch, shapes, save):
    state = random_state(shapes)
    save(state, tmp_path / "official.pth")
    model = import_checkpoint(arch, tmp_path / "official.pth", tmp_path / "out")
    assert sum(p.numel() for p in model.parameters()) == sum(t.numel() for t in state.values())
    if arch == "vim-tiny":  # the class token's slot is the middle of the 196 patches: 98
        assert torch.equal(model.cls_pos, state["pos_embed"][:, 98:99])
        assert torch.equal(model.tokenizers.image.pos_embed[:, 98], state["pos_embed"][:, 99])
    if arch == "aum-tiny":  # 10 s of fbank: the 8x64 grid, the class token's row first
        assert model.config.audio_grid_size == (8, 64)
        assert torch.equal(model.cls_pos, state["pos_embed.pos_embed"][:, :1])
    if arch == "ast-base":  # 1024 frames, 16x16 patches every 10: the 12x101 grid of the HF release
        assert model.config.audio_grid_size == (12, 101)
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_cli_imports_a_local_file(tmp_path):
    """`python -m effviz.convert` on a real-size DeiT-Ti safetensors file in the HF layout."""
    save_file(deit_timm_to_hf(random_state(deit_timm_shapes(192, 12, 196)), 12), tmp_path / "model.safetensors")
    result = subprocess.run(
        [sys.executable, "-m", "effviz.convert", "deit-tiny", str(tmp_path / "model.safetensors"),
         "--out", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "imported deit-tiny (5,717,416 parameters)" in result.stdout
    assert json.loads((tmp_path / "out" / "config.json").read_text())["norm_eps"] == 1e-12


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    assert cli_main(["vim-tiny", str(tmp_path / "absent.pth")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no such checkpoint file") and "Traceback" not in err
