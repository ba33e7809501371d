"""effviz: linear-time vision, audio and multimodal models next to transformer baselines."""
from .api import list_models, list_releases, load_model, model_card, model_preprocess, predict
from .models import create_model

__version__ = "0.2.0"

__all__ = ["__version__", "create_model", "list_models", "list_releases", "load_model", "model_card",
           "model_preprocess", "predict"]
