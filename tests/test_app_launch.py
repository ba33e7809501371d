"""``python app.py`` starts, serves its page offline, and a Gradio client can connect."""
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 120

pytestmark = pytest.mark.timeout(STARTUP_TIMEOUT_S + 60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_page(url: str, proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"app.py exited with code {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise AssertionError(f"app.py did not serve {url} within {STARTUP_TIMEOUT_S} s")


@pytest.fixture
def running_app(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
    }
    log_path = tmp_path / "app.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield f"http://127.0.0.1:{port}/", proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print(log_path.read_text(errors="replace")[-3000:])  # shown by pytest only on failure


def test_app_serves_page_and_accepts_client(running_app):
    from gradio_client import Client

    url, proc = running_app
    page = _wait_for_page(url, proc)
    # The page embeds the app's config: our title, and analytics switched off.
    assert '"title":"effviz"' in page and '"analytics_enabled":false' in page

    client = Client(url, analytics_enabled=False, verbose=False, download_files=False)
    assert client.config["title"] == "effviz"
    rendered = str(client.config["components"])
    assert "Kernels" in rendered and "Backends available on this machine" in rendered
    assert proc.poll() is None, "the server died while the client was connected"
