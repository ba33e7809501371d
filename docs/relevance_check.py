"""Does relevance find the one patch that carries the evidence? The bundled CIFAR models, a gray
32x32 picture with one 8x8 patch at each of the 16 cells of the token grid, two kinds of patch:

- "noise": random colours, relevance of the predicted class. Beside it, how much the patch moves
  that class's log-probability from the plain gray picture's: near 0 means the prediction does
  not come from the patch at all.
- "informative": the same patch after Adam steps on its pixels towards the class the plain gray
  picture makes least likely, until that class's log-probability is ``GAIN`` (1 nat) above the
  plain picture's (at most ``MAX_STEPS``), so that class's evidence can only come from the patch;
  relevance of that class. ``tests/test_inspect.py`` builds its pictures with these functions.

For each, the positions (of 16) where a map peaks on the patch: ``rollout_map`` and
``gradient_map`` as ``effviz.inspect`` computes them (each layer's rows divided by their sums,
the map divided by the masks' own rollout), and, for comparison only, Chefer et al.'s original
unnormalised sum R = R + W·R over the same gradient-weighted layers W, as published.

    python docs/relevance_check.py --json docs/relevance-check.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, effviz not installed

import effviz.inspect as inspect  # noqa: E402
from effviz import api  # noqa: E402

MODELS = ["deit-cifar", "vir-cifar", "vrwkv-cifar", "vim-cifar"]
GAIN, MAX_STEPS, LR = 1.0, 50, 0.1  # nats above the plain picture


def patch_picture(cell: tuple[int, int] | None) -> Image.Image:
    pixels = np.full((32, 32, 3), 128, np.uint8)
    if cell is not None:
        row, col = cell
        pixels[row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] = np.random.default_rng(0).integers(0, 256, (8, 8, 3))
    return Image.fromarray(pixels)


def chefer_sum(layers: list[torch.Tensor]) -> torch.Tensor:
    """R = I, then R = R + W_l R layer by layer: no row normalisation, no ½."""
    result = torch.eye(layers[0].shape[-1], dtype=layers[0].dtype)
    for weighted in layers:
        result = result + weighted @ result
    return result


def inspect_with_chefer(model: torch.nn.Module, image: torch.Tensor, target: int) -> tuple[inspect.Inspection, torch.Tensor]:
    """The inspection, and the Chefer-sum map from the gradient-weighted layers it rolled out."""
    rolled = []
    original = inspect.rollout
    inspect.rollout = lambda layers: rolled.append(layers) or original(layers)
    try:
        result = inspect.inspect_model(model, image=image, target=target)
    finally:
        inspect.rollout = original
    chefer_rollout = chefer_sum(rolled[1])
    as_published = torch.ones_like(chefer_rollout)  # no division by the masks' rollout
    chefer = inspect._relevance_map(chefer_rollout, result.readout, result.patch_tokens, result.grid, as_published)
    return result, chefer


def informative(model: torch.nn.Module, image: torch.Tensor, cell: tuple[int, int], target: int,
                gray_logp: float) -> torch.Tensor:
    """``image`` with the pixels of ``cell`` moved by Adam until ``target``'s log-probability is
    ``GAIN`` above the plain gray picture's ``gray_logp`` (at most ``MAX_STEPS`` steps)."""
    mask = torch.zeros_like(image)
    mask[..., cell[0] * 8:(cell[0] + 1) * 8, cell[1] * 8:(cell[1] + 1) * 8] = 1
    delta = torch.zeros_like(image, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=LR)
    for _ in range(MAX_STEPS):
        logp = model(image=image + delta * mask)[0].log_softmax(-1)[target]
        if float(logp.detach()) >= gray_logp + GAIN:
            break
        optimiser.zero_grad()
        (-logp).backward()
        optimiser.step()
    return (image + delta * mask).detach()


def check(model_id: str) -> dict:
    model = api.load_model(model_id)
    gray = api.model_inputs(model_id, image=patch_picture(None))["image"]
    with torch.no_grad():
        gray_logp = model(image=gray)[0].log_softmax(-1)
    least_likely = int(gray_logp.argmin())
    out = {kind: {"rollout": 0, "gradient": 0, "chefer": 0, "logp_change": []} for kind in ("noise", "informative")}
    for cell in [(r, c) for r in range(4) for c in range(4)]:
        noisy = api.model_inputs(model_id, image=patch_picture(cell))["image"]
        with torch.no_grad():
            logp = model(image=noisy)[0].log_softmax(-1)
        predicted = int(logp.argmax())
        made = informative(model, noisy, cell, least_likely, float(gray_logp[least_likely]))
        cases = {"noise": (noisy, predicted), "informative": (made, least_likely)}
        for kind, (image, target) in cases.items():
            result, chefer = inspect_with_chefer(model, image, target)
            with torch.no_grad():
                change = float(result.logits.log_softmax(-1)[target] - gray_logp[target])
            out[kind]["logp_change"].append(round(change, 2))
            for name, relevance in (("rollout", result.rollout_map), ("gradient", result.gradient_map), ("chefer", chefer)):
                out[kind][name] += divmod(int(relevance.argmax()), 4) == cell
        model.zero_grad(set_to_none=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {model_id: check(model_id) for model_id in MODELS}
    print("| model | patch | log-p change of the class (min-max) | rollout | gradient rollout | Chefer's sum |")
    print("|---|---|---|---|---|---|")
    for model_id, kinds in results.items():
        for kind, r in kinds.items():
            print(f"| {model_id} | {kind} | {min(r['logp_change']):+.1f} to {max(r['logp_change']):+.1f} | "
                  f"{r['rollout']}/16 | {r['gradient']}/16 | {r['chefer']}/16 |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
