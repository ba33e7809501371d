"""Import the official checkpoints of Vim, VRWKV-T, DeiT, Audio Mamba and AST into effviz models.

``convert_checkpoint(arch, state_dict)`` maps every official tensor onto our backbone with its
key and shape checked (``keymaps.py``) and gives the model its class labels (ImageNet-1k, or
AudioSet for AuM and AST); the app and ``effviz.load_model`` use it on the Hub's cached file.
``import_checkpoint("vim-tiny", "vim_t_midclstok_76p1acc.pth")`` (or a Hub repo id instead of a
file) does the same and saves the result as a model folder (config.json + model.safetensors +
preprocess.json + README.md card) under ``weights/<release name>/``.
CLI: ``python -m effviz import ARCH SOURCE [--out DIR]``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..models.backbone import EffvizModel
from ..models.registry import WEIGHTS_DIR, architecture_config
from ..models.releases import PREPROCESS_FILE, Release, release_for
from .keymaps import LAYOUTS, Layout, convert_state_dict, pick_layout
from .loading import ResolvedSource, download_from_hub, file_sha256, is_hub_repo_id, load_tensors

# Label files by dataset; each records where its names were taken from under "source".
LABEL_FILES = {
    "ImageNet-1k": Path(__file__).with_name("imagenet_labels.json"),
    "AudioSet": Path(__file__).with_name("audioset_labels.json"),
}
# Architectures with an official checkpoint layout, each with its release.
OFFICIAL: dict[str, Release] = {arch: release_for(arch) for arch in LAYOUTS}


def dataset_labels(dataset: str) -> list[str]:
    """The class names of ``dataset`` ("ImageNet-1k": torchvision's 1000; "AudioSet": the 527 of
    AuM's ``class_labels_indices.csv``) in class-index order."""
    return json.loads(LABEL_FILES[dataset].read_text(encoding="utf-8"))["labels"]


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order (from torchvision's list)."""
    return dataset_labels("ImageNet-1k")


def default_out_dir(arch: str) -> Path:
    return WEIGHTS_DIR / OFFICIAL[arch].name


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
        revision = release.revision if source == release.repo_id else None
        return download_from_hub(source, release.filenames, arch, revision=revision,
                                 sha256=release.sha256 if source == release.repo_id else None)
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
    model, layout = convert_checkpoint(arch, load_tensors(resolved.path), what=str(resolved.path))

    out = Path(out_dir) if out_dir is not None else default_out_dir(arch)
    model.save_pretrained(out)
    (out / PREPROCESS_FILE).write_text(OFFICIAL[arch].preprocess.to_json(), encoding="utf-8")
    # save_pretrained writes a generic card when none exists; ours says where the weights came from.
    # The line recording the weights' sha256 is what effviz.api checks before loading the folder.
    card = model_card(arch, layout, resolved) + f"\nsha256 of model.safetensors: `{file_sha256(out / 'model.safetensors')}`\n"
    (out / "README.md").write_text(card, encoding="utf-8")
    return model


def convert_checkpoint(arch: str, official: dict[str, torch.Tensor], what: str = "the checkpoint") -> tuple[EffvizModel, Layout]:
    """Our ``arch`` model (eval mode, with its release's labels) holding an official state dict,
    and the layout it was read in. Raises ValueError naming every missing, unexpected and
    wrong-shaped key."""
    cfg = architecture_config(arch)
    layout = pick_layout(arch, cfg, official)
    for name, value in layout.config_overrides.items():
        setattr(cfg, name, value)
    cfg.labels = dataset_labels(OFFICIAL[arch].dataset)
    cfg.__post_init__()
    model = EffvizModel(cfg)
    state = convert_state_dict(layout, cfg, official, model.state_dict(), what=f"{what} (as {arch})")
    model.load_state_dict(state, strict=True)
    return model.eval(), layout


def _framing(release: Release) -> str:
    pre = release.preprocess
    if pre.audio is not None:
        a = pre.audio
        return (f"{a.sample_rate} Hz, {a.mel_bins}-bin fbank normalised with mean {a.fbank_mean} and std "
                f"{a.fbank_std}, {a.max_frames} frames, zero frames padded at the {a.padding}")
    i = pre.image
    return (f"shorter side to {int(min(i.size) / i.crop_pct)} px ({i.interpolation}), centre crop "
            f"{i.size[0]}x{i.size[1]}, mean {i.mean}, std {i.std}")


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
- sha256 of the source file: `{file_sha256(resolved.path)}`
- Official layout: {layout.name}; official code: {release.code}
- {release.dataset} {metric} reported by the authors: {release.top1} (not re-measured here)
- Labels: {label_source}; outputs read with {release.preprocess.activation} (`preprocess.json` records
  the input framing: {_framing(release)})
- Licence: {release.licence}, as declared for the official release; check the source before
  redistributing these weights.{note}

Re-create: `python -m effviz.convert {arch} {reconvert}`
"""


__all__ = ["OFFICIAL", "convert_checkpoint", "dataset_labels", "default_out_dir", "imagenet_labels", "import_checkpoint"]
