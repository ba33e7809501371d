"""effviz web app: ``python app.py`` serves it on 0.0.0.0:7860 (or $GRADIO_SERVER_NAME and
$GRADIO_SERVER_PORT). The page is assembled in ``effviz/ui/app.py`` from the tabs in ``effviz/ui/``.
"""
from effviz.ui.app import build_demo, launch

__all__ = ["build_demo"]

if __name__ == "__main__":
    launch()
