"""effviz web app: ``python app.py`` serves it on 0.0.0.0:7860 (or $GRADIO_SERVER_PORT).

For now one tab shows what the shared kernel runtime can run on this machine; the model tabs
(vision, audio, multimodal, scaling lab) will live in ``effviz/ui/`` and be assembled here.
"""
import os

# Before gradio is imported: no usage reporting or version check leaves the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import platform  # noqa: E402

import gradio as gr  # noqa: E402
import torch  # noqa: E402

import effviz  # noqa: E402
from effviz import kernels  # noqa: E402

DESCRIPTION = """\
**effviz** shows why linear-time architectures matter beyond text. Vision Mamba, Vision RWKV,
Vision RetNet, Audio Mamba, Audio RWKV and a unified audio + vision Mamba run through one shared
kernel runtime next to transformer baselines, and their latency and memory are measured on the
hardware you run this on: O(N) against O(N²). The kernel runtime is here today; the model tabs
are being built.
"""


def _kernels_markdown() -> str:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines = [
        f"Backends available on this machine: **{', '.join(kernels.available_backends())}**.",
        "",
        f"Default device: `{device}`. The default backend is `triton` on CUDA, the compiled `cpu` "
        "kernels on CPU when they build, `torch` otherwise; set `EFFVIZ_BACKEND` to override.",
        "",
        "| library | version |",
        "|---|---|",
        f"| effviz | {effviz.__version__} |",
        f"| python | {platform.python_version()} |",
        f"| torch | {torch.__version__} ({torch.get_num_threads()} CPU threads) |",
        f"| gradio | {gr.__version__} |",
    ]
    return "\n".join(lines)


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="effviz") as demo:
        gr.Markdown("# effviz: linear-time vision and audio models")
        gr.Markdown(DESCRIPTION)
        with gr.Tab("Kernels"):
            gr.Markdown(_kernels_markdown())
    return demo


if __name__ == "__main__":
    build_demo().launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
