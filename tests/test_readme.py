"""The README's bundled-models table says what the cards under weights/ say.

Retraining a model rewrites its card; this test then fails and prints the table to paste between
the README's ``<!-- bundled-models -->`` markers.
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AV_METRICS = ("both", "image_only", "audio_only", "noisy_both", "noisy_image_only", "noisy_audio_only")


def table_row(card: dict) -> str:
    metrics = card["metrics"]
    if "val" in metrics:
        accuracy = f"{metrics['val']:.1%}"
    elif "speaker" in metrics:
        accuracy = f"{card['test_speaker']} {metrics['speaker']:.1%}"
        if card.get("cross_validation"):
            cv = card["cross_validation"]
            accuracy += f"; 5 folds: mean {cv['mean']:.1%}, worst {cv['worst']:.1%}"
    else:
        accuracy = ", ".join(f"{name} {metrics[name]:.1%}" for name in AV_METRICS)
        if card.get("cross_validation"):
            cv = card["cross_validation"]
            accuracy += f"; 5 folds, audio_only: mean {cv['mean']:.1%}, worst {cv['worst']:.1%}"
    source = card.get("initialised_from")
    source = source["model"] if isinstance(source, dict) else source  # older cards store the id only
    threads = card["threads"]
    training = (f"{card['recipe']['epochs']} epochs, {round(card['train_seconds'] / 60)} min on {threads} "
                f"thread{'s' if threads > 1 else ''}" + (f"; from `{source}`" if source else ""))
    return (f"| `{card['model_id']}` | {card['task']} | {card.get('mixers', card['mixer'])} | {card['params'] / 1e6:.2f} M | "
            f"{round(card['forward_flops'] / 1e6)} M | {accuracy} | {training} |")


def test_bundled_models_table_matches_the_cards():
    cards = [json.loads(path.read_text()) for path in sorted((ROOT / "weights").glob("*/card.json"))]
    assert cards, "no bundled model cards found under weights/"
    expected = "\n".join(["| id | task | mixer | params | forward FLOPs | held-out accuracy | training |",
                          "|---|---|---|---|---|---|---|", *map(table_row, cards)])
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("<!-- bundled-models -->"):readme.index("<!-- /bundled-models -->")]
    table = section[section.index("| id |"):].strip()
    assert table == expected, f"README's bundled-models table is stale; it should read:\n{expected}"


def test_every_bundled_cards_readme_is_rendered_from_its_card_json():
    from effviz.train import render_card

    for card_path in sorted((ROOT / "weights").glob("*/card.json")):
        readme = card_path.with_name("README.md").read_text()
        assert readme == render_card(json.loads(card_path.read_text())), f"{card_path.parent.name}: re-render its README.md"
