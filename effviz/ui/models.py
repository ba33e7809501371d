"""Models tab: a card for every bundled or imported model (parameters, FLOPs, data, recipe,
held-out accuracy, where the weights came from), the official architectures' facts, and a
control that fetches an official release from the Hugging Face Hub.

A public app must not let a visitor read server files or overwrite shared models: the fetch
control takes only the names of registered releases (``effviz.models.releases.RELEASES``), or
a Hub repo id that the operator allow-lists in ``EFFVIZ_ALLOWED_REPOS`` (``arch=owner/name``
pairs, comma-separated), which is saved under a new folder of weights/ and never over an
existing one. Server paths are for the command line only (``python -m effviz import``).
"""
from __future__ import annotations

import functools
import itertools
import os
import re
from typing import Any

import gradio as gr
import pandas as pd

from .. import api
from ..bench.sweep import parameter_count
from ..convert import OFFICIAL, import_checkpoint
from ..models import ModelConfig, registry
from ..models.registry import ARCHITECTURES, architecture_config
from ..models.releases import RELEASES
from . import announce_downloads, reports_bad_input

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
            arch, _mixers_text(cfg),
            " + ".join(cfg.modalities), cfg.depth, cfg.embed_dim, f"{parameter_count(arch) / 1e6:.2f} M",
            (release.repo_id or "local file only") if release else "none published", release.top1 if release else "—",
            release.paper if release else _paper(cfg),
        ])
    return pd.DataFrame(rows, columns=ARCH_COLUMNS)


def _mixers_text(cfg: ModelConfig) -> str:
    """The token mixers in block order, runs counted ("mamba x18, attention (sdpa) x6" for a
    hybrid), and the experts of a mixture-of-experts model."""
    runs = [(mixer, len(list(blocks))) for mixer, blocks in itertools.groupby(cfg.block_mixers())]
    details = {"attention": f" ({cfg.attn_impl})", "window_attention": f" (radius {cfg.window_radius})"}
    names = [mixer + details.get(mixer, "") for mixer, _ in runs]
    text = names[0] if len(runs) == 1 else ", ".join(f"{name} x{count}" for name, (_, count) in zip(names, runs))
    if cfg.channel_mixer == "moe":
        text += f"; MLP experts: {cfg.moe_top_k} of {cfg.moe_experts} per token"
    return text


def _paper(cfg: ModelConfig) -> str:
    """The paper an architecture without published weights follows."""
    if cfg.mixer_schedule:
        return "Hatamizadeh & Kautz, MambaVision, arXiv:2407.08083 (its Mamba-then-attention pattern)"
    if cfg.channel_mixer == "moe":
        return "Riquelme et al., V-MoE, arXiv:2106.05974 (its top-k routed MLP experts)"
    if len(cfg.modalities) > 1:
        return "early fusion of image and audio tokens in one sequence, as our bundled digit models"
    return {
        "window_attention": "Beltagy et al., Longformer, arXiv:2004.05150 (its sliding window, over patches)",
        "retention": "Hatamizadeh et al., ViR, arXiv:2310.19731 (no code or weights released)",
        "mamba": "Erol et al., Audio Mamba, 2024",
        "rwkv": "Vision-RWKV's backbone over spectrogram patches",
        "attention": "Gong et al., AST, Interspeech 2021" if "audio" in cfg.modalities
        else "Touvron et al., ICML 2021, arXiv:2012.12877",
    }[cfg.mixer]


def allowed_repos() -> dict[str, str]:
    """Hub repo id -> architecture, from ``EFFVIZ_ALLOWED_REPOS`` (``arch=owner/name,...``)."""
    allowed = {}
    for entry in filter(None, (e.strip() for e in os.environ.get("EFFVIZ_ALLOWED_REPOS", "").split(","))):
        arch, _, repo_id = entry.partition("=")
        if arch.strip() not in OFFICIAL or not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id.strip()):
            raise ValueError(f"EFFVIZ_ALLOWED_REPOS: {entry!r} is not ARCH=owner/name with ARCH one of {', '.join(OFFICIAL)}")
        allowed[repo_id.strip()] = arch.strip()
    return allowed


def fetchable() -> list[str]:
    """What the fetch control offers: the Hub releases, then the allow-listed repos."""
    return [name for name, r in RELEASES.items() if r.repo_id] + list(allowed_repos())


@reports_bad_input
def fetch_official(name: str) -> str:
    """Fetch an official release (or an allow-listed Hub repo) so that the Vision and Audio
    tabs can use it; nothing else is accepted."""
    name = (name or "").strip()
    if name in RELEASES and RELEASES[name].repo_id:
        model = api.load_model(name)  # downloads into the Hugging Face cache, converts, keeps it loaded
        params = sum(p.numel() for p in model.parameters())
        return (f"**{name}** ({params:,} parameters) is ready: choose it in the "
                f"{'Audio' if RELEASES[name].preprocess.audio else 'Vision'} tab (↻ refreshes its list).")
    allowed = allowed_repos()
    if name in allowed:
        model_id = re.sub(r"[^a-z0-9._-]", "-", f"{allowed[name]}-{name}".lower())
        out = registry.WEIGHTS_DIR / model_id
        if out.exists():
            raise ValueError(f"{model_id} already exists in weights/; an existing model is never overwritten")
        import_checkpoint(allowed[name], name, out)
        return f"**{name}** imported as `{model_id}`: ↻ in the Vision or Audio tab lists it."
    raise ValueError(
        f"{name!r} is not an official release ({', '.join(fetchable())}); the app fetches only those. "
        "Import other checkpoints, or files on this machine, from the command line: "
        "`python -m effviz import ARCH FILE_OR_REPO`"
    )


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

    gr.Markdown("### Fetch an official release\nDownloads the official weights from the Hugging Face "
                "Hub into its cache (later uses read the cache) and converts them into our architecture "
                "with every key and shape checked; the Vision and Audio tabs then offer the model. "
                "Checkpoint files on disk import from the command line: `python -m effviz import`.")
    with gr.Row():
        release = gr.Dropdown(fetchable(), value=fetchable()[0], label="release")
        run = gr.Button("Fetch")
    result = gr.Markdown()

    def on_fetch(name: str, progress=gr.Progress(track_tqdm=True)) -> str:
        announce_downloads([name], progress)
        return fetch_official(name)

    run.click(on_fetch, [release], result, api_name="import_checkpoint", concurrency_limit=1)
