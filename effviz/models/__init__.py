"""Models: one backbone (``backbone.py``) with pluggable token mixers (``mixers/``), configured by
``ModelConfig`` and named in ``registry.py``; official weights and their input framing in
``releases.py``."""
from .backbone import EffvizModel
from .config import ModelConfig
from .registry import ARCHITECTURES, architecture_config
from .releases import RELEASES, Preprocess, release_for


def create_model(name: str, pretrained: bool = False, **overrides) -> EffvizModel:
    """A model by name, timm-style.

    ``create_model("vim-tiny")``: a registered architecture with random weights (fine for timing);
    ``overrides`` set config fields. ``create_model("vim-tiny", pretrained=True)``: the same
    architecture with its official weights (the release ``vim-tiny-official``, downloaded from the
    Hugging Face Hub on first use); a bundled or release id (``"vim-cifar"``,
    ``"deit-small-official"``) with ``pretrained=True`` gives that model. A pretrained model is a
    fresh copy in eval mode; its input framing is ``effviz.model_preprocess(name)``.
    """
    if pretrained:
        if overrides:
            raise ValueError("pretrained weights fix the architecture: config overrides are not accepted with them")
        from ..api import build_pretrained  # the API reads model folders and the Hub; models do not need it

        return build_pretrained(release_for(name).name if name in ARCHITECTURES else name)[0]
    cfg = architecture_config(name)
    for field_name, value in overrides.items():
        if not hasattr(cfg, field_name):
            raise ValueError(f"ModelConfig has no field {field_name!r}")
        setattr(cfg, field_name, value)
    cfg.__post_init__()
    return EffvizModel(cfg)


__all__ = ["ARCHITECTURES", "RELEASES", "EffvizModel", "ModelConfig", "Preprocess", "architecture_config",
           "create_model", "release_for"]
