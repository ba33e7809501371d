"""The devices a benchmark runs on, checked by name before anything is built or measured."""
from __future__ import annotations

import re

import torch

DEVICES = ("cpu", "cuda")
_DEVICE_NAME = re.compile(r"(cpu|cuda)(:\d+)?")


def bench_device(name: str) -> torch.device:
    """``name`` as a torch device when a benchmark can run there: cpu or cuda, optionally with an
    index (cuda:1); ValueError naming those otherwise. Checked here because torch's own error
    for a name such as "gpu" is a RuntimeError listing twenty device types, and the types it
    does accept beyond these (mps, meta) fail only deep inside a run."""
    if not isinstance(name, str) or not _DEVICE_NAME.fullmatch(name.strip()):
        raise ValueError(f"unknown device {name!r}: choose {' or '.join(DEVICES)} (or cuda:INDEX for one GPU of several)")
    return torch.device(name.strip())
