"""causal_conv1d: the short depthwise convolution in front of every Mamba/Vim selective scan.

Vim's forward branch runs it causally; its backward branch runs it over the flipped sequence,
which ``reverse=True`` gives without materialising the flips (paired with
``selective_scan(reverse=True)``).

Streaming (forward only): ``initial_state`` holds the K-1 inputs just before ``x[..., 0]`` and
``return_final_state`` hands back the K-1 inputs that the next chunk needs, so a sequence fed in
chunks of any size gives the outputs of one pass.
"""
from __future__ import annotations

import torch

from ..dispatch import check_tensor, pick
from .cpu_backend import causal_conv1d_cpu
from .reference import causal_conv1d_reference
from .torch_backend import causal_conv1d_torch


def _causal_conv1d_triton(*args, **kwargs):
    from .triton_backend import causal_conv1d_triton

    return causal_conv1d_triton(*args, **kwargs)


IMPLS = {"reference": causal_conv1d_reference, "torch": causal_conv1d_torch, "cpu": causal_conv1d_cpu,
         "triton": _causal_conv1d_triton}
ACTIVATIONS = (None, "silu")


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    reverse: bool = False,
    backend: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y[:, d, t] = act(bias[d] + sum_{j<K} weight[d, K-1-j] * x[:, d, t-j]), x = 0 before t = 0.

    x: (batch, D, L); weight: (D, K), K >= 1 (a checkpoint's (D, 1, K) conv weight squeezed);
    bias: (D,) or None; activation: None or "silu". Equals
    ``F.conv1d(F.pad(x, (K-1, 0)), weight[:, None], bias, groups=D)``. ``reverse=True`` equals
    ``causal_conv1d(x.flip(-1)).flip(-1)`` without the flips. Returns x's dtype; fp32 math (fp64 for fp64 x on the reference and torch backends).

    initial_state: (batch, D, K-1), the K-1 inputs just before x[..., 0], oldest first: they
    stand in for the zeros before t = 0 (None = zeros). return_final_state: also return
    final_state (batch, D, K-1) in x's dtype, the last K-1 inputs of [initial_state, x] (so it
    is right for L < K-1 too; K = 1 gives (batch, D, 0)); pass it as the next chunk's
    initial_state. Then the result is (y, final_state). Both are forward only: with
    ``reverse=True`` they raise a ValueError.
    """
    check_tensor("x", x, (None, None, None))
    dim = x.shape[1]
    if isinstance(weight, torch.Tensor) and weight.dim() == 3 and weight.shape[1] == 1:
        raise ValueError(f"weight must have shape ({dim}, K), got {tuple(weight.shape)}: "
                         "squeeze the (D, 1, K) nn.Conv1d weight with weight[:, 0]")
    check_tensor("weight", weight, (dim, None), device=x.device)
    if weight.shape[1] == 0:
        raise ValueError("weight must have at least one tap (K >= 1), got K = 0")
    if bias is not None:
        check_tensor("bias", bias, (dim,), device=x.device)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    if reverse and (initial_state is not None or return_final_state):
        raise ValueError("causal_conv1d: initial_state and return_final_state are for streaming, "
                         "which runs forward only; they cannot be used with reverse=True")
    history = weight.shape[1] - 1
    if initial_state is not None:
        check_tensor("initial_state", initial_state, (x.shape[0], dim, history), device=x.device)

    fn = pick("causal_conv1d", IMPLS, backend, x, weight, bias, initial_state)
    y = fn(x, weight, bias, activation, reverse, initial_state)
    if not return_final_state:
        return y
    if initial_state is None:
        initial_state = x.new_zeros(x.shape[0], dim, history)
    # Only the last K-1 inputs of x can reach the state: no need to concatenate all of x.
    recent = torch.cat([initial_state.to(x.dtype), x[..., max(0, x.shape[-1] - history):]], dim=-1)
    return y, recent[..., recent.shape[-1] - history:]
