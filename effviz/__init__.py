"""effviz: linear-time vision, audio and multimodal models next to transformer baselines."""
from .api import list_models, load_model, model_card, predict

__version__ = "0.1.0"

__all__ = ["__version__", "list_models", "load_model", "model_card", "predict"]
