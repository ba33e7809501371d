"""Model ids -> configs (timm-style registry).

Two kinds of entries:
- **architectures** (``ARCHITECTURES``): the official tiny configurations of each paper, used for
  scaling benchmarks (random weights are fine for timing) and as targets of checkpoint import.
- **bundled models**: folders under ``weights/<model-id>/`` holding config.json, model.safetensors
  and a card; these are ready to predict. They are found by scanning that folder.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from .config import ModelConfig
from .transcriber import BLANK

def bundled_path(folder: str) -> Path:
    """``weights/`` or ``assets/``: beside the package in a checkout, inside it once installed
    (pyproject.toml ships them as ``effviz/weights`` and ``effviz/assets``), so either is found
    whatever the working directory."""
    package = Path(__file__).resolve().parents[1]
    installed = package / folder
    return installed if installed.is_dir() else package.parent / folder


# $EFFVIZ_WEIGHTS_DIR points a deployment (or a test's app) at another folder of saved models.
WEIGHTS_DIR = Path(os.environ.get("EFFVIZ_WEIGHTS_DIR") or bundled_path("weights"))
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def vim_tiny() -> ModelConfig:
    """Vim-Ti (hustvl/Vim, arXiv 2401.09417): D=192, depth 24, bimamba v2, middle class token."""
    return ModelConfig(mixer="mamba", embed_dim=192, depth=24, norm="rms", norm_eps=1e-5,
                       cls_token="middle", channel_mixer=None)


def vim_small() -> ModelConfig:
    """Vim-S (hustvl/Vim): Vim-Ti at D=384."""
    cfg = vim_tiny()
    cfg.embed_dim = 384
    return cfg


def vrwkv_tiny() -> ModelConfig:
    """VRWKV-T (OpenGVLab/Vision-RWKV): D=192, depth 12, Q-shift + Bi-WKV, mean pooling."""
    return ModelConfig(mixer="rwkv", embed_dim=192, depth=12, norm="layer", norm_eps=1e-5,
                       cls_token=None, input_norm=True, channel_mixer="rwkv", mlp_ratio=4.0)


def vir_tiny() -> ModelConfig:
    """ViR-T (NVlabs ViR, arXiv 2310.19731): DeiT-Ti sized, retention mixer, class token last so
    that under causal retention it sees every patch."""
    return ModelConfig(mixer="retention", embed_dim=192, depth=12, num_heads=3, norm="layer",
                       norm_eps=1e-6, cls_token="last", channel_mixer="mlp")


def deit_tiny(attn_impl: str = "sdpa") -> ModelConfig:
    """DeiT-Ti (facebook/deit-tiny-patch16-224): D=192, depth 12, 3 heads, class token first."""
    return ModelConfig(mixer="attention", embed_dim=192, depth=12, num_heads=3, attn_impl=attn_impl,
                       norm="layer", norm_eps=1e-6, cls_token="first", channel_mixer="mlp")


def deit_tiny_window() -> ModelConfig:
    """DeiT-Ti with sliding-window attention of radius 32 (65 patches; at 224 px, 14 patches a
    row, about two rows either side) and a global class token: the sparse-attention baseline,
    linear in the token count like the efficient mixers."""
    cfg = deit_tiny()
    cfg.mixer, cfg.window_radius = "window_attention", 32
    return cfg


def _moe(cfg: ModelConfig, experts: int = 8, top_k: int = 2) -> ModelConfig:
    """An architecture with its MLPs replaced by top-k mixtures of MLP experts of the same size.
    V-MoE (arXiv:2106.05974) routes each token to 2 of 8 or 32 experts in every other block; here
    every block has experts, since a config has one channel mixer for all blocks. Each token
    costs the router plus ``top_k`` MLPs; the weights are ``experts`` MLPs per block."""
    if cfg.channel_mixer != "mlp":
        raise ValueError(f"experts replace an MLP channel mixer, and this architecture has {cfg.channel_mixer!r}")
    cfg.channel_mixer, cfg.moe_experts, cfg.moe_top_k = "moe", experts, top_k
    return cfg


def deit_small() -> ModelConfig:
    """DeiT-S (facebook/deit-small-patch16-224): D=384, depth 12, 6 heads."""
    cfg = deit_tiny()
    cfg.embed_dim, cfg.num_heads = 384, 6
    return cfg


def tail_schedule(body: str, tail: str, depth: int, tail_blocks: int) -> tuple[str, ...]:
    """A hybrid's mixer schedule: ``body`` in the first blocks, ``tail`` in the last ``tail_blocks``."""
    if not 0 < tail_blocks < depth:
        raise ValueError(f"a hybrid needs 1 to {depth - 1} tail blocks of {depth}, got {tail_blocks}")
    return (body,) * (depth - tail_blocks) + (tail,) * tail_blocks


def vim_tiny_hybrid() -> ModelConfig:
    """Vim-Ti with attention in its last quarter (blocks 19-24), as MambaVision (Hatamizadeh & Kautz,
    arXiv 2407.08083) puts self-attention after its Mamba blocks, where its ablations found it
    best at recovering long-range spatial dependencies. Like Vim, no channel mixer; attention has
    3 heads, DeiT-Ti's."""
    cfg = vim_tiny()
    cfg.mixer_schedule = tail_schedule("mamba", "attention", cfg.depth, cfg.depth // 4)
    return cfg


def vrwkv_tiny_hybrid() -> ModelConfig:
    """VRWKV-T with attention in its last quarter (blocks 10-12), every block keeping VRWKV's
    channel mix: what one cheap stage of full attention adds to a linear-time model."""
    cfg = vrwkv_tiny()
    cfg.mixer_schedule = tail_schedule("rwkv", "attention", cfg.depth, cfg.depth // 4)
    return cfg


def _audio(cfg: ModelConfig, num_classes: int = 527) -> ModelConfig:
    """The same architecture over 128-bin fbank patches (AST/AuM: 10 s = 1024 frames = 8x64 patches)."""
    cfg.modalities, cfg.num_classes = ("audio",), num_classes
    return cfg


def ast_base() -> ModelConfig:
    """AST-Base (YuanGongND/ast; HF MIT/ast-finetuned-audioset-10-10-0.4593): a DeiT-B distilled
    ViT (D=768, depth 12, 12 heads) over 16x16 fbank patches overlapping with stride 10, so 10.24 s
    (1024 frames) give a 12x101 grid; class + distillation tokens, averaged; head LayerNorm.
    The official checkpoint's architecture (for import), not a scaling-benchmark size."""
    return ModelConfig(mixer="attention", embed_dim=768, depth=12, num_heads=12, norm="layer", norm_eps=1e-12,
                       cls_token="first", dist_token=True, head_norm=True, channel_mixer="mlp",
                       modalities=("audio",), num_classes=527, audio_patch_stride=10, audio_grid_size=(12, 101))


def _audio_visual(cfg: ModelConfig) -> ModelConfig:
    """Image and audio in one sequence, as the bundled digit models fuse them, at the official
    tiny sizes: the architecture's blocks over DeiT's 16x16 image patches (224 px: 14x14) then
    AST/AuM's 16x16 fbank patches (128 mel bins, 10 s: 8x64), a learned embedding per modality."""
    cfg.modalities, cfg.modality_embed, cfg.num_classes = ("image", "audio"), True, 527
    return cfg


ARCHITECTURES: dict[str, Callable[[], ModelConfig]] = {
    "vim-tiny": vim_tiny,
    "vim-small": vim_small,
    "vrwkv-tiny": vrwkv_tiny,
    "vim-tiny-hybrid": vim_tiny_hybrid,
    "vrwkv-tiny-hybrid": vrwkv_tiny_hybrid,
    "vir-tiny": vir_tiny,
    "deit-tiny": deit_tiny,
    "deit-tiny-eager": lambda: deit_tiny("eager"),
    "deit-tiny-window": deit_tiny_window,
    "deit-tiny-moe": lambda: _moe(deit_tiny()),
    "vir-tiny-moe": lambda: _moe(vir_tiny()),
    "deit-small": deit_small,
    "aum-tiny": lambda: _audio(vim_tiny()),
    "audio-rwkv-tiny": lambda: _audio(vrwkv_tiny()),
    "ast-tiny": lambda: _audio(deit_tiny()),
    "ast-tiny-eager": lambda: _audio(deit_tiny("eager")),
    "ast-base": ast_base,
    "av-mamba-tiny": lambda: _audio_visual(vim_tiny()),
    "av-transformer-tiny": lambda: _audio_visual(deit_tiny()),
}

# Byte-level vocabulary of the language models, as MambaByte (Wang et al., arXiv 2401.13660):
# with a 50k-token BPE vocabulary the head alone would cost 9.6M multiply-adds a token at D=192,
# more than the twelve blocks, the same for every mixer, and hide what the mixers cost.
BYTE_VOCABULARY = 256


def _language(cfg: ModelConfig) -> ModelConfig:
    """The same blocks as a causal language model over bytes (effviz.models.language): each
    mixer in its causal form, no class token, a next-byte head on every token."""
    cfg.modalities, cfg.causal, cfg.cls_token, cfg.num_classes = ("text",), True, None, BYTE_VOCABULARY
    cfg.__post_init__()
    return cfg


# Causal language models at the vision models' tiny sizes, randomly initialised (for timing):
# the same blocks on text as on images, so the table's rows differ by modality alone.
LANGUAGE_MODELS: dict[str, Callable[[], ModelConfig]] = {
    # Vim-Ti's blocks (D=192, 24 Mamba blocks without channel mixer), one causal scan each: the
    # parameters of the 12-block models, as Mamba LMs pair two Mamba blocks per transformer block.
    "mamba-lm-tiny": lambda: _language(vim_tiny()),
    # VRWKV-T's blocks (D=192, depth 12) in RWKV-4's causal form: time mix + channel mix, ln0.
    "rwkv-lm-tiny": lambda: _language(vrwkv_tiny()),
    # ViR-T's blocks (D=192, depth 12, 3 heads): RetNet retention, chunkwise over the sequence.
    "retnet-lm-tiny": lambda: _language(vir_tiny()),
    # DeiT-Ti's blocks (D=192, depth 12, 3 heads) with a causal mask: a GPT of that size.
    "gpt-tiny": lambda: _language(deit_tiny()),
}


# A model id is the name of its folder under weights/: no separators, nothing hidden.
MODEL_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")


def weight_folders() -> dict[str, Path]:
    """Model id -> folder for every model saved under ``WEIGHTS_DIR``: config.json and
    model.safetensors with a card, card.json (trained by effviz.train) or README.md (official
    checkpoints imported by effviz.convert)."""
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {folder.name: folder for folder in sorted(WEIGHTS_DIR.iterdir()) if _is_model_folder(folder)}


def _is_model_folder(folder: Path) -> bool:
    return (
        MODEL_ID_PATTERN.fullmatch(folder.name) is not None
        and (folder / "config.json").is_file()
        and (folder / "model.safetensors").is_file()
        and ((folder / "card.json").is_file() or (folder / "README.md").is_file())
    )


def task_of(cfg: ModelConfig) -> str:
    return "audio-visual" if len(cfg.modalities) > 1 else cfg.modalities[0]


def architecture_config(arch: str) -> ModelConfig:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]()


# ---- Bundled models: small enough to train on a 2-core CPU, identical except for the mixer. ----
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DIGITS = [str(d) for d in range(10)]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _small(cfg: ModelConfig, depth: int) -> ModelConfig:
    """Shrink an official tiny architecture: D=96, 3 heads. Vim has no channel mixer, so it gets
    twice the blocks, as Vim-Ti (24) vs DeiT-Ti (12): parameter counts stay comparable."""
    cfg.embed_dim, cfg.num_heads = 96, 3
    cfg.depth = depth * 2 if cfg.channel_mixer is None else depth
    return cfg


def _cifar(cfg: ModelConfig) -> ModelConfig:
    """32x32 photos: a 2-conv stem (32 then 64 channels, stride 2) and 4x4 patches of its output,
    i.e. 4x4 tokens of 8x8 pixels. With 8x8 tokens a Vim training step took ~4 s on one core
    (~1.4 s with 4x4), too slow for the shared recipe on a CPU; Vim gets 8 blocks, parameter-matched."""
    cfg = _small(cfg, depth=6)
    if cfg.channel_mixer is None:
        cfg.depth = 8
    cfg.num_classes, cfg.labels = 10, CIFAR10_CLASSES
    cfg.patch_size, cfg.grid_size, cfg.stem_channels, cfg.stem_stride = 8, (4, 4), 32, 2
    cfg.image_size, cfg.image_mean, cfg.image_std = (32, 32), CIFAR_MEAN, CIFAR_STD
    return cfg


def _fsdd(cfg: ModelConfig) -> ModelConfig:
    """Spoken digits: 1 s clips at 16 kHz -> 98 fbank frames, padded to 104 -> 25 tokens, each a
    full-spectrum strip (128 mel bins x 8 frames, one every 4 frames). With 16x16 patches a token's
    mel band is known only from its position embedding, and attention and RWKV sat at chance for
    4-9 epochs while they learned it (AST ended at 72%, RWKV at 70%); a strip carries frequency in
    its channels, and every mixer leaves chance in the first epoch or two. Per-utterance mean
    normalisation (``audio_cmn``) takes the microphone, room and speaker colouring out of the
    features: leave-one-speaker-out, it raised AST's worst fold from 47% to 71% and RWKV's from
    56% to 71% with the recipe otherwise unchanged."""
    cfg = _small(cfg, depth=4)
    cfg.modalities, cfg.num_classes, cfg.labels = ("audio",), 11, [*DIGITS, "no digit"]
    cfg.audio_patch_mel, cfg.audio_patch_size, cfg.audio_patch_stride = cfg.mel_bins, 8, 4
    cfg.audio_grid_size, cfg.min_audio_seconds, cfg.audio_band_hz = (1, 25), 1.0, 4000.0
    cfg.fbank_mean, cfg.fbank_std, cfg.audio_cmn = FSDD_FBANK_MEAN, FSDD_FBANK_STD, True
    cfg.fbank_wave_scale, cfg.audio_floor_db = FSDD_WAVE_SCALE, FSDD_FLOOR_DB
    return cfg


def _fsdd_hybrid(cfg: ModelConfig, tail_blocks: int) -> ModelConfig:
    """A speech model with attention in its last ``tail_blocks`` blocks (MambaVision's layout) and
    otherwise the sibling's mixer, recipe and tokenizer. The Mamba hybrid gets a ninth block: an
    attention block without channel mixer is lighter than a Mamba block, and 7 Mamba + 2 attention
    blocks (745k parameters) match aum-fsdd's 8 Mamba blocks (751k). RWKV keeps its channel mix in
    every block, so swapping one time mix for attention keeps its parameter count (586k)."""
    cfg = _fsdd(cfg)
    if cfg.channel_mixer is None:
        cfg.depth += 1
    cfg.mixer_schedule = tail_schedule(cfg.mixer, "attention", cfg.depth, tail_blocks)
    return cfg


def _digits_av(cfg: ModelConfig) -> ModelConfig:
    """Handwritten digit (28x28, two 3x3 convs, 7x7 patches -> 4x4 tokens) and/or spoken digit, one
    sequence. The blocks and audio tokenizer are those of the FSDD model with the same mixer, so
    training starts from its weights (``effviz.train.WARM_START``)."""
    cfg = _fsdd(cfg)
    cfg.modalities, cfg.modality_embed = ("image", "audio"), True
    cfg.in_chans, cfg.patch_size, cfg.grid_size, cfg.stem_channels, cfg.stem_depth = 1, 7, (4, 4), 32, 2
    cfg.image_size, cfg.image_style = (28, 28), "digit"
    cfg.image_mean, cfg.image_std = (0.1307,) * 3, (0.3081,) * 3
    return cfg


def _stream(cfg: ModelConfig) -> ModelConfig:
    """Streaming digit transcriber (effviz.models.transcriber): 8 kHz audio (FSDD's rate; wider
    inputs are resampled to it), 40 mel bins, a token every 4 frames (40 ms) reading the last 32
    (320 ms), D=128, 4 heads, four blocks (eight for Mamba, which has no channel mixer), a CTC
    head over blank and the digits. The frames are less the running mean of the stream's speech
    (``audio_cmn``: the causal form of the classifiers' mean normalisation)."""
    cfg.embed_dim, cfg.num_heads = 128, 4
    cfg.depth = 8 if cfg.channel_mixer is None else 4
    cfg.causal, cfg.cls_token, cfg.input_norm, cfg.modalities = True, None, False, ("audio",)
    cfg.num_classes, cfg.labels = 11, [BLANK, *DIGITS]
    cfg.sample_rate, cfg.mel_bins, cfg.audio_patch_size, cfg.audio_patch_stride = 8000, 40, 32, 4
    cfg.fbank_mean, cfg.fbank_std, cfg.audio_cmn = STREAM_FBANK_MEAN, STREAM_FBANK_STD, True
    cfg.__post_init__()
    return cfg


# The speech classifiers take the fbank of 16-bit sample units and floor it 75 dB under each clip's
# loudest bin (FSDD's loudest bin is 30-34 dB above its loudest frame's mean, so about 45 dB under
# that mean). Leave-one-speaker-out on audio-rwkv-fsdd against AST's [-1, 1] samples with the
# fbank's own floor: mean 82.8% vs 81.7%, worst fold 72.6% vs 70.8%, "no digit" sounds 96% vs 88%
# (docs/speech-ablations.json, which also has the floor under the loudest frame, over two seeds).
FSDD_WAVE_SCALE, FSDD_FLOOR_DB = 2.0**15, 75.0
# Fbank statistics of the FSDD training speakers (measured by effviz.train on [-1, 1] samples as
# -9.4 and 5.0; 16-bit units add log(2**30) to every log-power).
FSDD_FBANK_MEAN, FSDD_FBANK_STD = 11.4, 5.0
# Those of the transcribers' training utterances (8 kHz, 40 bins; effviz.train_transcriber).
STREAM_FBANK_MEAN, STREAM_FBANK_STD = -7.0, 4.8

BUNDLED_RECIPES: dict[str, Callable[[], ModelConfig]] = {
    "vim-cifar": lambda: _cifar(vim_tiny()),
    "vrwkv-cifar": lambda: _cifar(vrwkv_tiny()),
    "vir-cifar": lambda: _cifar(vir_tiny()),
    "deit-cifar": lambda: _cifar(deit_tiny()),
    "aum-fsdd": lambda: _fsdd(vim_tiny()),
    "audio-rwkv-fsdd": lambda: _fsdd(vrwkv_tiny()),
    "audio-retnet-fsdd": lambda: _fsdd(vir_tiny()),
    "ast-fsdd": lambda: _fsdd(deit_tiny()),
    # Hybrid and sparse variants, trained by the same speech recipe as their siblings.
    "aum-hybrid-fsdd": lambda: _fsdd_hybrid(vim_tiny(), tail_blocks=2),
    "audio-rwkv-hybrid-fsdd": lambda: _fsdd_hybrid(vrwkv_tiny(), tail_blocks=1),
    "ast-moe-fsdd": lambda: _moe(_fsdd(deit_tiny())),
    "av-mamba-digits": lambda: _digits_av(vim_tiny()),
    "av-transformer-digits": lambda: _digits_av(deit_tiny()),
}

# Streaming transcribers (weights/transcribers/<id>/): the same four mixers, causal.
TRANSCRIBER_RECIPES: dict[str, Callable[[], ModelConfig]] = {
    "mamba-digits-stream": lambda: _stream(vim_tiny()),
    "rwkv-digits-stream": lambda: _stream(vrwkv_tiny()),
    "retnet-digits-stream": lambda: _stream(vir_tiny()),
    "transformer-digits-stream": lambda: _stream(deit_tiny()),
}
