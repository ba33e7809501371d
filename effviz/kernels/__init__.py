"""The shared kernel runtime: sequence-mixing ops with reference, torch, cpu and triton backends.

One folder per op holds its readable reference beside its fast versions; ``dispatch.py`` chooses
the backend. Every fast path is tested against the reference in ``tests/kernels``.
"""
from .bi_wkv import bi_wkv
from .causal_conv1d import causal_conv1d
from .dispatch import BACKENDS, available_backends
from .retention import retention
from .rms_norm import rms_norm
from .selective_scan import selective_scan, selective_state_update
from .wkv import wkv, wkv_initial_state

__all__ = [
    "BACKENDS",
    "available_backends",
    "bi_wkv",
    "causal_conv1d",
    "retention",
    "rms_norm",
    "selective_scan",
    "selective_state_update",
    "wkv",
    "wkv_initial_state",
]
