"""effviz: linear-time vision, audio and multimodal models next to transformer baselines."""
__version__ = "0.1.0"
