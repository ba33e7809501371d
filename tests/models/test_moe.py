"""The mixture-of-experts channel mixer: top-k routing equals the dense top-k sum, capacity caps
every expert and drops the rest to the residual, the router learns from both the task and the
balance loss, and FLOPs are those of k experts per routed token plus the router."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from effviz.models import EffvizModel, create_model
from effviz.models.layers import TokenLayout
from effviz.models.mixers.moe import MoeMlp
from effviz.train import count_flops

DIM, HIDDEN, EXPERTS = 8, 32, 4
LAYOUT = TokenLayout(grid=None, cls_index=None)


def moe(top_k: int = 2, capacity_factor: float = EXPERTS, balance_weight: float = 0.01) -> MoeMlp:
    """capacity_factor = EXPERTS: every expert can take every token, nothing is dropped."""
    torch.manual_seed(0)
    return MoeMlp(DIM, HIDDEN, EXPERTS, top_k, capacity_factor, balance_weight)


def tokens(count: int = 10) -> torch.Tensor:
    return torch.randn(2, count // 2, DIM, generator=torch.Generator().manual_seed(1))


def tokens_seen_by_each_expert(layer: MoeMlp, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    seen = []
    hooks = [e.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0])) for e in layer.experts]
    try:
        out = layer(x, LAYOUT)
    finally:
        for hook in hooks:
            hook.remove()
    return out, seen


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_each_token_is_the_probability_weighted_sum_of_its_top_k_experts(top_k):
    layer, x = moe(top_k), tokens()
    out, seen = tokens_seen_by_each_expert(layer, x)
    flat = x.reshape(-1, DIM)
    assert sum(seen) == flat.shape[0] * top_k
    probs = layer.router(flat).softmax(-1)
    every_expert = torch.stack([expert(flat, LAYOUT) for expert in layer.experts], dim=1)  # (tokens, E, dim)
    top = probs.topk(top_k, dim=-1)
    weights = torch.zeros_like(probs).scatter(1, top.indices, top.values)  # zero outside the top k
    torch.testing.assert_close(out.reshape(-1, DIM), (weights[..., None] * every_expert).sum(1))


def route_everything_to_expert_zero(layer: MoeMlp) -> None:
    """Tokens with a positive first channel all prefer expert 0, then 1 (second choice)."""
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0, 0], layer.router.weight[1, 0] = 10.0, 5.0


def test_an_expert_takes_its_capacity_in_token_order_and_the_rest_pass_through_as_zero():
    layer = moe(top_k=1, capacity_factor=1.0)
    route_everything_to_expert_zero(layer)
    x = tokens(8).abs()  # 8 tokens, 1 choice, 4 experts: capacity 2
    assert layer.capacity(8) == 2
    out, seen = tokens_seen_by_each_expert(layer, x)
    assert seen == [2, 0, 0, 0]
    flat, flat_out = x.reshape(-1, DIM), out.reshape(-1, DIM)
    gate = layer.router(flat[:2]).softmax(-1)[:, :1]
    torch.testing.assert_close(flat_out[:2], gate * layer.experts[0](flat[:2], LAYOUT))
    assert torch.equal(flat_out[2:], torch.zeros_like(flat_out[2:]))


def test_first_choices_are_served_before_second_choices():
    """Capacity 4 of 8 tokens x 2 choices: expert 0 serves the first four tokens' first choices,
    expert 1 the first four second choices; no expert exceeds its capacity."""
    layer = moe(top_k=2, capacity_factor=1.0)
    route_everything_to_expert_zero(layer)
    x = tokens(8).abs()
    assert layer.capacity(8) == 4
    out, seen = tokens_seen_by_each_expert(layer, x)
    assert seen == [4, 4, 0, 0]
    assert torch.equal(out.reshape(-1, DIM)[4:], torch.zeros(4, DIM))


@pytest.mark.parametrize("capacity_factor", [0.5, 1.0, 1.25])
def test_random_routing_never_exceeds_capacity(capacity_factor):
    layer, x = moe(top_k=2, capacity_factor=capacity_factor), torch.randn(4, 25, DIM)
    _, seen = tokens_seen_by_each_expert(layer, x)
    probs = layer.router(x.reshape(-1, DIM)).softmax(-1)
    wanted = torch.bincount(probs.topk(2, dim=-1).indices.flatten(), minlength=EXPERTS)
    assert seen == [min(int(w), layer.capacity(100)) for w in wanted]


def test_gradients_reach_the_router_from_the_output_and_from_the_balance_loss():
    layer, x = moe(top_k=1), tokens()
    layer(x, LAYOUT).square().sum().backward(inputs=[layer.router.weight])
    assert layer.router.weight.grad.abs().max() > 0
    layer.router.weight.grad = None
    layer(x, LAYOUT)
    layer.balance_loss.backward(inputs=[layer.router.weight])
    assert layer.router.weight.grad.abs().max() > 0


def test_balance_loss_is_its_weight_when_routing_is_uniform_and_up_to_e_times_that_when_not():
    """Uniform: every f_e = 1/E, so the loss is weight · Σ_e P_e = weight whatever the P_e.
    Everything to expert 0: f_0 = 1, the loss is weight · E · P_0, with P_0 near 1 here."""
    layer = moe(top_k=1, balance_weight=0.01)
    x = torch.eye(DIM)[:EXPERTS].view(1, EXPERTS, DIM)  # token i has channel i set
    with torch.no_grad():
        layer.router.weight.copy_(5 * torch.eye(EXPERTS, DIM))  # token i prefers expert i
        layer(x, LAYOUT)
        assert float(layer.balance_loss) == pytest.approx(0.01)
        route_everything_to_expert_zero(layer)
        layer(x + torch.eye(DIM)[0], LAYOUT)
        assert float(layer.balance_loss) == pytest.approx(0.01 * EXPERTS, rel=0.01)


def mlp_flops(count: int) -> int:
    return count * (2 * DIM * HIDDEN + 2 * HIDDEN * DIM)


@pytest.mark.parametrize("top_k", [1, 2])
def test_flops_are_the_router_plus_k_experts_per_token(top_k):
    layer, x = moe(top_k), tokens()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(x, LAYOUT)
    count = x.shape[0] * x.shape[1]
    assert counter.get_total_flops() == 2 * count * DIM * EXPERTS + top_k * mlp_flops(count)


def test_dropped_tokens_cost_no_expert_flops():
    layer = moe(top_k=1, capacity_factor=1.0)
    route_everything_to_expert_zero(layer)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(tokens(8).abs(), LAYOUT)
    assert counter.get_total_flops() == 2 * 8 * DIM * EXPERTS + mlp_flops(2)


def test_a_one_expert_per_token_model_counts_the_dense_models_flops_plus_its_routers():
    """The same DeiT with 8 experts and k = 1 costs what the dense one costs, plus the routers."""
    small = dict(embed_dim=48, depth=2, num_classes=10)
    image = {"image": torch.randn(1, 3, 48, 64)}
    dense = count_flops(create_model("deit-tiny", **small), image)
    routed = count_flops(create_model("deit-tiny-moe", moe_top_k=1, moe_capacity_factor=8.0, **small), image)
    tokens_per_image = 3 * 4 + 1
    assert routed == dense + small["depth"] * 2 * tokens_per_image * 48 * 8


def test_the_model_sums_its_blocks_balance_losses_for_training():
    model = create_model("vir-tiny-moe", embed_dim=48, depth=2, num_classes=10)
    logits = model(image=torch.randn(2, 3, 48, 64))
    aux = model.auxiliary_loss()
    assert aux == sum(block.ffn.balance_loss for block in model.blocks) and aux > 0
    (F.cross_entropy(logits, torch.tensor([1, 2])) + aux).backward()
    assert all(block.ffn.router.weight.grad.abs().max() > 0 for block in model.blocks)
    dense = create_model("vir-tiny", embed_dim=48, depth=2, num_classes=10)
    dense(image=torch.randn(1, 3, 48, 64))
    assert dense.auxiliary_loss() == 0


def test_official_size_moe_has_eight_experts_per_block_and_two_active():
    with torch.device("meta"):
        model = create_model("deit-tiny-moe")
    dense_mlp = 2 * 192 * 768 + 768 + 192
    ffn = model.blocks[0].ffn
    assert isinstance(ffn, MoeMlp) and len(ffn.experts) == 8 and ffn.top_k == 2
    assert sum(p.numel() for p in ffn.parameters()) == 8 * dense_mlp + 192 * 8


def test_moe_round_trips_through_config_json(tmp_path):
    model = create_model("deit-tiny-moe", embed_dim=48, depth=2, num_classes=10, moe_experts=4, moe_top_k=1).eval()
    model.save_pretrained(tmp_path)
    loaded = EffvizModel.from_pretrained(tmp_path, strict=True).eval()
    assert loaded.config == model.config and len(loaded.blocks[0].ffn.experts) == 4
    image = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(loaded(image=image), model(image=image))


@pytest.mark.parametrize("overrides, message", [
    (dict(moe_top_k=3, moe_experts=2), "moe_top_k"), (dict(moe_capacity_factor=0.0), "moe_capacity_factor"),
])
def test_impossible_moe_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        create_model("deit-tiny-moe", **overrides)
