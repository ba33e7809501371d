"""mamba_inner: a Mamba mixer's conv, dt projection, selective scan, D skip and gate fused for CPU
inference, for one branch or Vim's two (what mamba_ssm's ``mamba_inner_fn`` fuses on the GPU).

There is no separate reference here: the readable path is the mixer itself
(``effviz.models.mixers.mamba``), composed of ``causal_conv1d`` and ``selective_scan``, which the
tests compare this with. The mixer switches to these functions by itself for inference on the
``cpu`` backend.
"""
from .cpu_backend import Branch, mamba_conv_cpu, mamba_inner_cpu

__all__ = ["Branch", "mamba_conv_cpu", "mamba_inner_cpu"]
