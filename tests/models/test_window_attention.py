"""Sliding-window attention: the blocked computation equals attention under the window's mask,
equals full attention when the window covers the sequence, and is local when it does not (no
gradient from a token outside the window), with the class token global."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from effviz.inspect import mixing
from effviz.models import create_model
from effviz.models.layers import TokenLayout
from effviz.models.mixers.attention import Attention
from effviz.models.mixers.window_attention import WindowAttention

DIM, HEADS = 12, 3
TOL = dict(rtol=1e-5, atol=1e-6)


def window(radius: int) -> WindowAttention:
    torch.manual_seed(0)
    return WindowAttention(DIM, HEADS, radius).eval()


def tokens(length: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, length, DIM, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("length, radius, cls_index", [
    (20, 3, None), (21, 3, 0), (21, 4, 10), (22, 5, 21), (7, 2, 3), (2, 1, 0),
], ids=lambda v: str(v))
def test_blocked_windows_equal_attention_under_the_dense_window_mask(length, radius, cls_index):
    """Ragged last blocks, every class token position, radius below, at and above the block size."""
    mixer, x = window(radius), tokens(length)
    q, k, v = mixer.heads(x)
    want = mixer.merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mixer.allowed(length, cls_index)))
    torch.testing.assert_close(mixer(x, TokenLayout(grid=None, cls_index=cls_index)), want, **TOL)


@pytest.mark.parametrize("cls_index", [None, 0, 9])
def test_a_window_covering_the_sequence_is_full_attention(cls_index):
    mixer, x = window(radius=16), tokens(17)
    full = Attention(DIM, HEADS)
    full.load_state_dict(mixer.state_dict())
    layout = TokenLayout(grid=None, cls_index=cls_index)
    torch.testing.assert_close(mixer(x, layout), full(x, layout), **TOL)


def test_a_smaller_window_differs_from_full_attention():
    mixer, x = window(radius=3), tokens(17)
    full = Attention(DIM, HEADS)
    full.load_state_dict(mixer.state_dict())
    layout = TokenLayout(grid=None, cls_index=None)
    assert (mixer(x, layout) - full(x, layout)).abs().max() > 1e-3


def input_gradient_reach(mixer: WindowAttention, length: int, cls_index: int | None) -> torch.Tensor:
    """(length, length) boolean: whether output token i depends on input token j (nonzero gradient)."""
    x = tokens(length, batch=1).requires_grad_()
    out = mixer(x, TokenLayout(grid=None, cls_index=cls_index))[0]
    reach = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        (grad,) = torch.autograd.grad(out[i].sum(), x, retain_graph=True)
        reach[i] = grad[0].abs().sum(-1) > 0
    return reach


def test_an_output_token_depends_only_on_the_tokens_in_its_window():
    radius, length = 3, 16
    reach = input_gradient_reach(window(radius), length, cls_index=None)
    distance = (torch.arange(length)[:, None] - torch.arange(length)[None, :]).abs()
    assert torch.equal(reach, distance <= radius)


def test_the_class_token_sees_every_token_and_every_token_sees_it():
    radius, length, cls = 2, 13, 6
    mixer = window(radius)
    reach = input_gradient_reach(mixer, length, cls_index=cls)
    assert reach[cls].all() and reach[:, cls].all()
    assert torch.equal(reach, mixer.allowed(length, cls))
    # Distances skip the class token: tokens 5 and 7 are neighbours, 4 and 7 two apart, 4 and 8 three.
    assert reach[5, 7] and reach[4, 7] and not reach[4, 8]


def test_inspection_matrix_is_zero_outside_the_window_and_reproduces_the_mixer():
    mixer, x = window(radius=3).double(), tokens(15, batch=1).double()
    layout = TokenLayout(grid=None, cls_index=0)
    result = mixing(mixer, x, layout)
    assert (result.matrices["mixing"][:, ~mixer.allowed(15, 0)] == 0).all()
    torch.testing.assert_close(result.output, mixer(x, layout))


def test_deit_tiny_window_is_deit_tiny_with_window_attention():
    deit, windowed = create_model("deit-tiny"), create_model("deit-tiny-window")
    assert all(isinstance(block.mixer, WindowAttention) and block.mixer.radius == 32 for block in windowed.blocks)
    assert [p.shape for p in deit.parameters()] == [p.shape for p in windowed.parameters()]
