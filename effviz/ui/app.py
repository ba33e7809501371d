"""The effviz web app: the tabs of ``effviz/ui/`` assembled into one page. ``python app.py``
(a Hugging Face Space's entry point) and ``python -m effviz serve`` both launch it."""
import os

# Before gradio is imported: no usage reporting or version check leaves the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from . import MAX_UPLOAD_MB, PREDICT_CONCURRENCY_LIMIT, UPLOAD_RETENTION_S, audio, inside, kernels, models, multimodal, scaling, streaming, vision  # noqa: E402
from .examples import prepare_examples  # noqa: E402

# Every UPLOAD_RETENTION_S seconds, uploads and downloads older than that leave Gradio's cache.
DELETE_CACHE = (UPLOAD_RETENTION_S, UPLOAD_RETENTION_S)

DESCRIPTION = """\
**effviz** shows why linear-time architectures matter beyond text. Vision Mamba, Vision RWKV,
Vision RetNet, Audio Mamba, Audio RWKV and a unified audio + vision Mamba run through one shared
kernel runtime next to transformer baselines (DeiT, AST). Try the models on your own pictures,
sounds and drawings, then measure latency and memory as the input grows on the hardware this app
runs on: O(N) against O(N²).
"""


def build_demo() -> gr.Blocks:
    examples = prepare_examples()
    with gr.Blocks(title="effviz", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# effviz: linear-time vision and audio models")
        gr.Markdown(DESCRIPTION)
        with gr.Tab("Vision"):
            vision.build(examples)
        with gr.Tab("Audio"):
            audio.build(examples)
        with gr.Tab("Multimodal"):
            multimodal.build(examples)
        with gr.Tab("Live digits"):
            streaming.build(examples)
        with gr.Tab("Scaling lab"):
            scaling.build()
        with gr.Tab("Kernels"):
            kernels.build()
        with gr.Tab("Models"):
            models.build()
        with gr.Tab("Inside the models"):
            inside.build(examples)
    return demo



def launch(server_name: str | None = None, server_port: int | None = None) -> None:
    """Serve the app on ``server_name``:``server_port`` (default ``$GRADIO_SERVER_NAME`` or
    0.0.0.0, ``$GRADIO_SERVER_PORT`` or 7860)."""
    demo = build_demo()
    demo.queue(default_concurrency_limit=PREDICT_CONCURRENCY_LIMIT)
    demo.launch(
        server_name=server_name or os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=server_port,
        max_file_size=int(MAX_UPLOAD_MB * 1024 * 1024),
    )
