"""bi_wkv: Vision-RWKV's bidirectional WKV, the token mixer of its spatial-mix blocks.

Per channel c, every token t takes a softmax-weighted average of all values, where token i
weighs ``-(|t - i| - 1) * w + k_i`` (its key, decayed linearly with distance) and the token
itself weighs ``u + k_t``:

    y_t = [Σ_{i≠t} e^{-(|t-i|-1)w + k_i} v_i + e^{u+k_t} v_t] / [Σ_{i≠t} e^{-(|t-i|-1)w + k_i} + e^{u+k_t}]

``w`` and ``u`` are used as given: Vision-RWKV passes spatial_decay / T and spatial_first / T,
and that division is the caller's. The reference builds the (T, T) softmax; the other backends
run one forward and one backward max-stabilised running sum, O(T).
"""
from __future__ import annotations

import torch

from ..dispatch import check_tensor, pick
from .cpu_backend import bi_wkv_cpu
from .reference import bi_wkv_reference
from .torch_backend import bi_wkv_torch


def _bi_wkv_triton(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from .triton_backend import bi_wkv_triton

    return bi_wkv_triton(w, u, k, v)


IMPLS = {"reference": bi_wkv_reference, "torch": bi_wkv_torch, "cpu": bi_wkv_cpu, "triton": _bi_wkv_triton}


def bi_wkv(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str | None = None
) -> torch.Tensor:
    """w (decay), u (bonus of the token itself): (C,); k, v: (batch, T, C), T >= 1.

    Returns (batch, T, C) in v's dtype; math in fp32 whatever the input dtypes.
    """
    check_tensor("k", k, (None, None, None))
    batch, T, C = k.shape
    if T == 0:
        raise ValueError("k must have at least one token (T >= 1), got shape " + str(tuple(k.shape)))
    check_tensor("v", v, (batch, T, C), device=k.device)
    check_tensor("w", w, (C,), device=k.device)
    check_tensor("u", u, (C,), device=k.device)
    fn = pick("bi_wkv", IMPLS, backend, w, u, k, v, differentiable=("reference", "torch", "triton"))
    return fn(w, u, k, v)
