"""Hybrid mixer schedules: each block gets its scheduled mixer, and the schedule survives
config.json so a saved hybrid loads strictly into the same architecture and no other."""
from __future__ import annotations

import json

import pytest
import torch

from effviz.models import EffvizModel, ModelConfig, create_model
from effviz.models.mixers.attention import Attention
from effviz.models.mixers.mamba import BiMamba
from effviz.models.mixers.rwkv import SpatialMix
from effviz.models.registry import tail_schedule

MIXER_CLASSES = {"mamba": BiMamba, "rwkv": SpatialMix, "attention": Attention}


@pytest.mark.parametrize("arch, body, tail, depth, tail_blocks", [
    ("vim-tiny-hybrid", "mamba", "attention", 24, 6),
    ("vrwkv-tiny-hybrid", "rwkv", "attention", 12, 3),
])
def test_official_size_hybrid_builds_its_schedule_block_by_block(arch, body, tail, depth, tail_blocks):
    with torch.device("meta"):
        model = create_model(arch)
    assert model.config.embed_dim == 192 and len(model.blocks) == depth
    kinds = [type(block.mixer) for block in model.blocks]
    assert kinds == [MIXER_CLASSES[body]] * (depth - tail_blocks) + [MIXER_CLASSES[tail]] * tail_blocks


def small_hybrid() -> EffvizModel:
    torch.manual_seed(0)
    return create_model("vim-tiny-hybrid", embed_dim=48, depth=4, num_classes=10,
                        mixer_schedule=("mamba", "attention", "mamba", "attention")).eval()


def test_hybrid_saves_and_loads_strictly_with_its_schedule(tmp_path):
    model = small_hybrid()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["mixer_schedule"] == ["mamba", "attention", "mamba", "attention"]

    loaded = EffvizModel.from_pretrained(tmp_path, strict=True).eval()
    assert loaded.config == model.config
    assert [type(b.mixer) for b in loaded.blocks] == [BiMamba, Attention, BiMamba, Attention]
    image = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(image=image), model(image=image))


def test_hybrid_weights_do_not_load_into_the_unscheduled_model():
    hybrid = small_hybrid()
    plain = EffvizModel(ModelConfig(**{**vars(hybrid.config), "mixer_schedule": ()}))
    with pytest.raises(RuntimeError, match="blocks.1.mixer"):
        plain.load_state_dict(hybrid.state_dict(), strict=True)


def test_a_config_without_a_schedule_uses_its_mixer_everywhere():
    cfg = ModelConfig(mixer="retention", depth=3)
    assert cfg.block_mixers() == ("retention",) * 3


@pytest.mark.parametrize("schedule, message", [
    (("mamba", "attention"), "names 2 blocks, but depth is 3"),
    (("mamba", "attention", "conv"), "unknown mixer 'conv'"),
    (("attention",) * 3, "main mixer 'mamba' is not in"),
])
def test_impossible_schedules_are_refused(schedule, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(mixer="mamba", depth=3, mixer_schedule=schedule)


def test_tail_schedule_puts_the_tail_mixer_in_the_last_blocks():
    assert tail_schedule("rwkv", "attention", 4, 1) == ("rwkv", "rwkv", "rwkv", "attention")
    with pytest.raises(ValueError, match="tail blocks"):
        tail_schedule("rwkv", "attention", 4, 4)
