"""Test-wide settings, and the launched app shared by the app, browser and load tests."""
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

# Set before anything imports triton or gradio: the Triton kernels run on CPU through the
# interpreter (explicit backend="triton" only; the default never picks it on CPU), and nothing
# in the tests may reach the network.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def pytest_configure(config):
    # The Triton interpreter converts size-1 arrays to ints the way numpy 1.25+ deprecates; harmless.
    config.addinivalue_line("filterwarnings", "ignore:Conversion of an array with ndim > 0:DeprecationWarning")


REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 120


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


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app in a subprocess on a free port: (url, page HTML, process)."""
    port = _free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # two training runs share this machine
        # An empty Hub cache: an import of an official checkpoint can only fail, never write weights/.
        "HF_HOME": str(tmp_path_factory.mktemp("hf-home")),
    }
    with launched_app(env, tmp_path_factory.mktemp("app") / "app.log") as (url, page, proc):
        yield url, page, proc


@contextlib.contextmanager
def launched_app(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, str, subprocess.Popen]]:
    """``python app.py`` with ``env`` (which names the port) until the block ends: (url, page HTML,
    process). The app's log is printed afterwards; pytest shows it when a test failed."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{env['GRADIO_SERVER_PORT']}/"
            yield url, _wait_for_page(url, proc), proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print(log_path.read_text(errors="replace")[-3000:])


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    url, _, _ = app
    return Client(url, analytics_enabled=False, verbose=False, download_files=False)
