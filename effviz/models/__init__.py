"""Models: one backbone (``backbone.py``) with pluggable token mixers (``mixers/``), configured by
``ModelConfig`` and named in ``registry.py``."""
from .backbone import EffvizModel
from .config import ModelConfig
from .registry import ARCHITECTURES, architecture_config


def create_model(arch: str, **overrides) -> EffvizModel:
    """A randomly initialised model of a registered architecture, e.g. ``create_model("vim-tiny")``."""
    cfg = architecture_config(arch)
    for name, value in overrides.items():
        if not hasattr(cfg, name):
            raise ValueError(f"ModelConfig has no field {name!r}")
        setattr(cfg, name, value)
    cfg.__post_init__()
    return EffvizModel(cfg)


__all__ = ["ARCHITECTURES", "EffvizModel", "ModelConfig", "architecture_config", "create_model"]
