"""Models tab: a card for every bundled or imported model (parameters, FLOPs, data, recipe,
held-out accuracy, where the weights came from), the official architectures' facts, and a
control that imports an official checkpoint."""
from __future__ import annotations

import functools
from typing import Any

import gradio as gr
import pandas as pd

from .. import api
from ..bench.sweep import parameter_count
from ..convert import OFFICIAL, default_out_dir, import_checkpoint
from ..models.registry import ARCHITECTURES, architecture_config
from . import reports_bad_input

CARD_COLUMNS = ["model", "task", "mixer", "params", "forward FLOPs", "held-out accuracy", "weights"]
ARCH_COLUMNS = ["architecture", "mixer", "input", "depth", "width", "params", "official weights",
                "reported result", "paper"]


def cards_table() -> pd.DataFrame:
    """One row per model ready to predict, from its card."""
    rows = []
    for model_id in api.list_models():
        card = api.model_card(model_id)
        rows.append([
            model_id, card["task"], card["config"]["mixer"], f"{card['params']:,}",
            f"{card['forward_flops'] / 1e6:.1f} M" if "forward_flops" in card else "—",
            _metrics_text(card.get("metrics", {})), card.get("weights", "imported (see the card)"),
        ])
    return pd.DataFrame(rows, columns=CARD_COLUMNS)


def _metrics_text(metrics: dict[str, Any]) -> str:
    shown = {k: v for k, v in metrics.items() if "acc" in k and "train" not in k} or metrics
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()) or "—"


@functools.cache
def architectures_table() -> pd.DataFrame:
    """The official tiny architectures; parameters counted on the meta device (no memory), which
    still takes a second or two per model, hence computed once, when first shown."""
    rows = []
    for arch in ARCHITECTURES:
        cfg = architecture_config(arch)
        release = OFFICIAL.get(arch)
        rows.append([
            arch, cfg.mixer + (f" ({cfg.attn_impl})" if cfg.mixer == "attention" else ""),
            " + ".join(cfg.modalities), cfg.depth, cfg.embed_dim, f"{parameter_count(arch) / 1e6:.2f} M",
            (release.repo_id or "local file only") if release else "none published", release.top1 if release else "—",
            release.paper if release else _paper(cfg.mixer),
        ])
    return pd.DataFrame(rows, columns=ARCH_COLUMNS)


def _paper(mixer: str) -> str:
    return {
        "retention": "Hatamizadeh et al., ViR, arXiv:2310.19731 (no code or weights released)",
        "mamba": "Erol et al., Audio Mamba, 2024",
        "rwkv": "Vision-RWKV's backbone over spectrogram patches",
        "attention": "Gong et al., AST, Interspeech 2021",
    }[mixer]


@reports_bad_input
def import_official(arch: str, source: str) -> str:
    """Import an official checkpoint (a Hub repo id or a local file) into weights/."""
    if not source or not source.strip():
        raise ValueError("give a Hugging Face Hub repo id (e.g. hustvl/Vim-tiny-midclstok) or a checkpoint file path")
    model = import_checkpoint(arch, source.strip())
    params = sum(p.numel() for p in model.parameters())
    return (f"Imported **{arch}** ({params:,} parameters) into `{default_out_dir(arch)}`. Restart the app to "
            "see it in the Vision tab.")


def build() -> None:
    """The Models tab's components and events (inside the caller's ``gr.Blocks``)."""
    gr.Markdown("### Bundled and imported models\nReady to predict; each has its card beside its weights "
                "in `weights/<model-id>/` (the weights' sha256 is checked before loading).")
    models = api.list_models()
    if models:
        gr.Dataframe(cards_table(), interactive=False, wrap=True)
        for model_id in models:
            with gr.Accordion(f"card: {model_id}", open=False):
                gr.Markdown(api.model_card(model_id).get("readme", "(no README card)"))
    else:
        gr.Markdown("None yet: no model has weights in `weights/`.")

    gr.Markdown("### Official architectures\nThe papers' tiny configurations, used by the Scaling lab "
                "(random weights: timing does not depend on them) and as targets of checkpoint import.")
    show = gr.Button("Count their parameters (a few seconds)")
    architectures = gr.Dataframe(headers=ARCH_COLUMNS, interactive=False, wrap=True)
    show.click(architectures_table, None, architectures, api_visibility="private")

    gr.Markdown("### Import an official checkpoint\nLoads the official weights into our "
                "architecture with every key and shape checked, then saves them under `weights/`. "
                "Needs the Hugging Face Hub (or the file in its local cache), or a local checkpoint path.")
    with gr.Row():
        arch = gr.Dropdown(list(OFFICIAL), value=next(iter(OFFICIAL)), label="architecture")
        source = gr.Textbox(OFFICIAL[next(iter(OFFICIAL))].repo_id, label="Hub repo id or local file")
        run = gr.Button("Import")
    result = gr.Markdown()
    arch.change(lambda a: OFFICIAL[a].repo_id or "", arch, source, api_visibility="private")
    run.click(import_official, [arch, source], result, api_name="import_checkpoint", concurrency_limit=1)
