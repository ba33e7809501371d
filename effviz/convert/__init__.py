"""Import the official checkpoints of Vim-Ti, VRWKV-T, DeiT-Ti, Audio Mamba and AST into effviz models.

``import_checkpoint("vim-tiny", "vim_t_midclstok_76p1acc.pth")`` (or a Hub repo id instead of a
file) loads the official weights safely, maps every tensor onto our backbone with its key and shape
checked (``keymaps.py``), gives the model its class labels (ImageNet-1k, or AudioSet for AuM and AST), and
saves it as a bundled model (config.json + model.safetensors + README.md card) under
``weights/<arch>-official/``.
CLI: ``python -m effviz.convert ARCH SOURCE [--out DIR]``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..models.backbone import EffvizModel
from ..models.registry import WEIGHTS_DIR, architecture_config
from .keymaps import Layout, convert_state_dict, pick_layout
from .loading import ResolvedSource, download_from_hub, is_hub_repo_id, load_tensors

# Label files by dataset; each records where its names were taken from under "source".
LABEL_FILES = {
    "ImageNet-1k": Path(__file__).with_name("imagenet_labels.json"),
    "AudioSet": Path(__file__).with_name("audioset_labels.json"),
}


@dataclass(frozen=True)
class OfficialRelease:
    """Where an architecture's official weights are published, for downloads and cards."""

    repo_id: str | None  # Hugging Face Hub repo; None where the weights are not on the Hub
    filenames: tuple[str, ...]  # tried in order
    model: str
    paper: str
    code: str
    top1: str  # the headline result as reported by the authors
    licence: str
    dataset: str = "ImageNet-1k"  # what the head classifies (a key of LABEL_FILES)
    availability: str = ""  # how to get the weights where they are not on the Hub
    note: str = ""  # where our use of the weights differs from the official code, for the card


OFFICIAL: dict[str, OfficialRelease] = {
    "vim-tiny": OfficialRelease(
        "hustvl/Vim-tiny-midclstok", ("vim_t_midclstok_76p1acc.pth",),
        "Vision Mamba Vim-Ti (middle class token)", "Zhu et al., ICML 2024, arXiv:2401.09417",
        "https://github.com/hustvl/Vim", "76.1%", "apache-2.0",
    ),
    "vrwkv-tiny": OfficialRelease(
        "OpenGVLab/Vision-RWKV", ("vrwkv_t_in1k_224.pth",),
        "Vision-RWKV VRWKV-T", "Duan et al., ICLR 2025, arXiv:2403.02308",
        "https://github.com/OpenGVLab/Vision-RWKV", "75.1%", "apache-2.0",
    ),
    "deit-tiny": OfficialRelease(
        "facebook/deit-tiny-patch16-224", ("model.safetensors", "pytorch_model.bin"),
        "DeiT-Ti", "Touvron et al., ICML 2021, arXiv:2012.12877",
        "https://github.com/facebookresearch/deit", "72.2%", "apache-2.0",
    ),
    # The authors publish AuM-B (Fo-Bi) and AuM-S (Bi-Bi) checkpoints on Google Drive only, none for
    # the tiny size; this imports an AuM-Ti (Bi-Bi) trained with their code on AudioSet's 527 classes.
    "aum-tiny": OfficialRelease(
        None, ("best_audio_model.pth",),
        "Audio Mamba AuM-Ti (Bi-Bi, middle class token)", "Erol et al., IEEE SPL 2024, arXiv:2406.03344",
        "https://github.com/kaistmm/Audio-Mamba-AuM", "none published for tiny (AuM-S: 39.74 mAP on AudioSet)",
        "bsd-3-clause", dataset="AudioSet",
        availability="not on the Hugging Face Hub: the authors share AuM-B and AuM-S checkpoints through "
                     "Google Drive links in their README (none at the tiny size), and their training code "
                     "saves `best_audio_model.pth`",
    ),
    "ast-base": OfficialRelease(
        "MIT/ast-finetuned-audioset-10-10-0.4593", ("model.safetensors", "pytorch_model.bin"),
        "Audio Spectrogram Transformer AST-Base (AudioSet, patch stride 10)", "Gong et al., Interspeech 2021, arXiv:2104.01778",
        "https://github.com/YuanGongND/ast", "0.4593 mAP on AudioSet", "bsd-3-clause", dataset="AudioSet",
        note="clips shorter than 10.24 s are padded with silence before the fbank, where AST's feature "
             "extractor pads the fbank with zero frames, and longer clips are not cut (the position "
             "embedding is resampled), so predictions on such clips can differ from the original code's",
    ),
}


def dataset_labels(dataset: str) -> list[str]:
    """The class names of ``dataset`` ("ImageNet-1k": torchvision's 1000; "AudioSet": the 527 of
    AuM's ``class_labels_indices.csv``) in class-index order."""
    return json.loads(LABEL_FILES[dataset].read_text(encoding="utf-8"))["labels"]


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order (from torchvision's list)."""
    return dataset_labels("ImageNet-1k")


def default_out_dir(arch: str) -> Path:
    return WEIGHTS_DIR / f"{arch}-official"


def resolve_source(arch: str, source: str | os.PathLike) -> ResolvedSource:
    """A local checkpoint file, or a Hub repo id whose official file for ``arch`` is downloaded."""
    path, release = Path(source), OFFICIAL[arch]
    if path.is_file():
        return ResolvedSource(path)
    if release.repo_id is None:
        raise FileNotFoundError(
            f"no such checkpoint file: {source} ({arch} weights are {release.availability}; "
            "give the path of such a file)"
        )
    if isinstance(source, str) and is_hub_repo_id(source):
        return download_from_hub(source, release.filenames, arch)
    raise FileNotFoundError(
        f"no such checkpoint file: {source} (give a .pth/.pt/.bin/.safetensors file, or a Hugging "
        f"Face Hub repo id such as {release.repo_id})"
    )


def import_checkpoint(arch: str, source: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> EffvizModel:
    """Load an official ``arch`` checkpoint into our model, save it to ``out_dir`` and return it.

    arch: "vim-tiny", "vrwkv-tiny", "deit-tiny", "aum-tiny" or "ast-base".
    source: a local .pth/.pt/.bin/.safetensors file, or a Hugging Face Hub repo id (e.g.
        "hustvl/Vim-tiny-midclstok"); offline, a repo id only works if the file is cached.
        aum-tiny has no Hub release: a local file only.
    out_dir: where config.json, model.safetensors and README.md go; default
        ``weights/<arch>-official/``.
    Raises ValueError when the checkpoint does not match the architecture (listing every
    missing, unexpected and wrong-shaped key) or holds pickled objects that are not allow-listed,
    FileNotFoundError when the source cannot be found or downloaded.
    """
    if arch not in OFFICIAL:
        raise ValueError(f"no official checkpoint import for {arch!r}; choose one of {', '.join(OFFICIAL)}")
    resolved = resolve_source(arch, source)
    official = load_tensors(resolved.path)

    cfg = architecture_config(arch)
    layout = pick_layout(arch, cfg, official)
    for name, value in layout.config_overrides.items():
        setattr(cfg, name, value)
    cfg.labels = dataset_labels(OFFICIAL[arch].dataset)
    cfg.__post_init__()
    model = EffvizModel(cfg)
    state = convert_state_dict(layout, cfg, official, model.state_dict(), what=f"{resolved.path} (as {arch})")
    model.load_state_dict(state, strict=True)
    model.eval()

    out = Path(out_dir) if out_dir is not None else default_out_dir(arch)
    model.save_pretrained(out)
    # save_pretrained writes a generic card when none exists; ours says where the weights came from.
    # The line recording the weights' sha256 is what effviz.api checks before loading the folder.
    card = model_card(arch, layout, resolved) + f"\nsha256 of model.safetensors: `{_sha256(out / 'model.safetensors')}`\n"
    (out / "README.md").write_text(card, encoding="utf-8")
    return model


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_card(arch: str, layout: Layout, resolved: ResolvedSource) -> str:
    release = OFFICIAL[arch]
    if resolved.repo_id is not None:
        revision = f" at revision `{resolved.commit}`" if resolved.commit else ""
        origin = f"Hugging Face Hub repo `{resolved.repo_id}`, file `{resolved.filename}`{revision}"
        reconvert = resolved.repo_id
    elif release.repo_id is not None:
        origin = (f"local file `{resolved.path.name}` (the official release is Hugging Face Hub repo "
                  f"`{release.repo_id}`, file `{release.filenames[0]}`)")
        reconvert = f"/path/to/{resolved.path.name}"
    else:
        origin = f"local file `{resolved.path.name}` (official weights are {release.availability})"
        reconvert = f"/path/to/{resolved.path.name}"
    task = "audio-classification" if release.dataset == "AudioSet" else "image-classification"
    weights = f"{release.dataset} weights of {release.model} ({release.paper})"
    # Without a published release the file was trained with the official code, not released by its authors.
    weights = (f"The official {weights}," if release.repo_id is not None
               else f"{weights}, trained with the official code,")
    metric = "top-1" if release.dataset == "ImageNet-1k" else "result"
    label_source = json.loads(LABEL_FILES[release.dataset].read_text(encoding="utf-8"))["source"]
    note = f"\n- Differences from the official code: {release.note}" if release.note else ""
    return f"""---
library_name: effviz
license: {release.licence}
tags:
- {task}
- {release.dataset.lower()}
---

# {arch}-official

{weights} imported into effviz's
`{arch}` architecture by `effviz.convert`. Every official tensor was mapped onto our parameters
with its name and shape checked; none was missing or left over.

- Source: {origin}
- sha256 of the source file: `{_sha256(resolved.path)}`
- Official layout: {layout.name}; official code: {release.code}
- {release.dataset} {metric} reported by the authors: {release.top1} (not re-measured here)
- Labels: {label_source}
- Licence: {release.licence}, as declared for the official release; check the source before
  redistributing these weights.{note}

Re-create: `python -m effviz.convert {arch} {reconvert}`
"""


__all__ = ["OFFICIAL", "dataset_labels", "default_out_dir", "imagenet_labels", "import_checkpoint"]
