"""The app under the conditions of a public Space, in one launch of ``app.py`` (tiny bundled-style
models in a temporary $EFFVIZ_WEIGHTS_DIR, small input limits through the environment):

- it never tries to reach another machine: a ``sitecustomize.py`` put on the app's PYTHONPATH
  records (and refuses) every connection or name lookup that is not for this machine;
- its limits come from the environment, are shown in the tabs, and name themselves when hit;
- 16 concurrent users making 128 mixed predictions while a sweep runs all get their answer, and
  the server's memory settles back after the load.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.test_api import save_card, tiny_recipe
from tests.conftest import REPO, _free_port, launched_app
from tests.test_app import _png, _wav

MAX_AUDIO_SECONDS = 2
MAX_IMAGE_PIXELS = 20_000
MAX_UPLOAD_MB = 1
IMAGE_MODELS = ("tiny-deit-cifar", "tiny-vim-cifar")  # list_models order: sorted ids
AUDIO_MODELS = ("tiny-aum-fsdd",)
AV_MODELS = ("tiny-av-mamba-digits",)
USERS, CALLS_PER_USER = 16, 8
CALL_TIMEOUT_S = 120
# Allowed growth of the server's resident memory from after warm-up to after the load. Not a
# leak bound in the strict sense: glibc keeps freed memory in per-thread arenas (Gradio runs
# each event in a worker thread), PyTorch's CPU allocator and the queue keep buffers for reuse,
# and 128 uploads pass through Gradio's file cache. A real leak (inputs or outputs kept per
# request) grows far past this over 128 requests with Gradio's JSON-encoded plots and tables.
# Measured on a 2-core machine: +150 MiB over the first 128 predictions, then +7 to +12 MiB per
# further 128 (Gradio's bookkeeping for each new client session), i.e. it levels off.
RSS_MARGIN_MIB = 300

pytestmark = pytest.mark.timeout(420)

# Loaded by the app's Python (and its child processes) at start-up, before app.py runs.
SITECUSTOMIZE = textwrap.dedent('''
    """Test harness: record and refuse every connection or name lookup off this machine."""
    import ipaddress
    import os
    import socket

    _LOG = os.environ["EFFVIZ_TEST_NETWORK_LOG"]
    _LOCAL_NAMES = {None, "", "localhost", "localhost.localdomain", "ip6-localhost"}


    def _is_local(host):
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        if host in _LOCAL_NAMES:
            return True
        try:
            address = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False  # a name to resolve: a request for another machine
        return address.is_loopback or address.is_unspecified


    def _write(line):
        with open(_LOG, "a") as log:
            log.write(line + "\\n")


    def _check(what, host, port):
        if not _is_local(host):
            _write(f"attempt {what} {host!r} port {port!r} (pid {os.getpid()})")
            raise OSError(101, f"network access blocked by the effviz test: {host!r}")


    def _address_host(address):
        # AF_INET / AF_INET6 addresses are tuples; AF_UNIX paths are local by definition.
        return (address[0], address[1]) if isinstance(address, tuple) else (None, None)


    _connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
    _create_connection, _getaddrinfo = socket.create_connection, socket.getaddrinfo


    def connect(self, address):
        _check("connect", *_address_host(address))
        return _connect(self, address)


    def connect_ex(self, address):
        _check("connect_ex", *_address_host(address))
        return _connect_ex(self, address)


    def create_connection(address, *args, **kwargs):
        _check("create_connection", *_address_host(address))
        return _create_connection(address, *args, **kwargs)


    def getaddrinfo(host, port, *args, **kwargs):
        _check("getaddrinfo", host, port)
        return _getaddrinfo(host, port, *args, **kwargs)


    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.create_connection, socket.getaddrinfo = create_connection, getaddrinfo
    _write(f"armed (pid {os.getpid()})")
''')


def _save_weights(root: Path) -> None:
    for recipe in ("deit-cifar", "vim-cifar", "aum-fsdd", "av-mamba-digits"):
        save_card(tiny_recipe(recipe), root / f"tiny-{recipe}")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """``python app.py`` on a free port: (url, process, network log)."""
    tmp = tmp_path_factory.mktemp("reliability")
    _save_weights(tmp / "weights")
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    network_log = tmp / "network.log"
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp / "site"), str(REPO), os.environ.get("PYTHONPATH")])),
        "EFFVIZ_TEST_NETWORK_LOG": str(network_log),
        "EFFVIZ_WEIGHTS_DIR": str(tmp / "weights"),
        "EFFVIZ_MAX_AUDIO_SECONDS": str(MAX_AUDIO_SECONDS),
        "EFFVIZ_MAX_IMAGE_PIXELS": str(MAX_IMAGE_PIXELS),
        "EFFVIZ_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_TEMP_DIR": str(tmp / "gradio-cache"),
        "HF_HOME": str(tmp / "hf-home"),
        "OMP_NUM_THREADS": "1",
    }
    # What keeps the app offline must be the app's own doing, not the test's environment.
    for name in ("HF_HUB_OFFLINE", "GRADIO_ANALYTICS_ENABLED", "TRITON_INTERPRET"):
        env.pop(name, None)
    with launched_app(env, tmp / "app.log") as (url, _, proc):
        yield url, proc, network_log


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    drawing = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(drawing).line([(32, 10), (32, 54)], fill="black", width=6)  # a "1"
    drawing.save(folder / "digit.png")
    return {"image": _png(folder / "noise.png"), "sound": _wav(folder / "tone.wav", seconds=0.6),
            "digit": folder / "digit.png"}


def _client(url: str):
    from gradio_client import Client

    return Client(url, analytics_enabled=False, verbose=False, download_files=False)


def _network_attempts(log: Path) -> tuple[list[str], list[str]]:
    """(processes that armed the recorder, attempts to reach another machine)."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [x for x in lines if x.startswith("armed")], [x for x in lines if x.startswith("attempt")]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def _call(client, kind: str, inputs: dict[str, Path]) -> tuple[str, list]:
    """One prediction of ``kind``; returns (kind, the label outputs)."""
    from gradio_client import handle_file

    if kind == "image":
        job = client.submit(handle_file(str(inputs["image"])), False, api_name="/classify_image")
        _, table, *labels = job.result(timeout=CALL_TIMEOUT_S)
    elif kind == "audio":
        job = client.submit(handle_file(str(inputs["sound"])), False, api_name="/classify_audio")
        _, _, table, *labels = job.result(timeout=CALL_TIMEOUT_S)
    else:
        sketch = {"background": None, "layers": [], "composite": handle_file(str(inputs["digit"]))}
        job = client.submit(sketch, handle_file(str(inputs["sound"])), api_name="/classify_av")
        _, table, *labels = job.result(timeout=CALL_TIMEOUT_S)
    return kind, [label for label in labels if label]  # the Vision and Audio tabs' unused result slots are empty


EXPECTED_LABELS = {"image": len(IMAGE_MODELS), "audio": len(AUDIO_MODELS), "av": len(AV_MODELS)}


def _assert_answered(kind: str, labels: list) -> None:
    assert len(labels) == EXPECTED_LABELS[kind], (kind, labels)
    for label in labels:
        confidences = label["confidences"]
        assert label["label"] and 1 <= len(confidences) <= 5, (kind, label)
        assert 0 < sum(c["confidence"] for c in confidences) <= 1 + 1e-6


def test_the_recorder_catches_a_connection_attempt(tmp_path):
    # Without this, a recorder that silently failed to load or wrap would pass the tests below.
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "network.log"
    probe = ("import socket\n"
             "for host in ('localhost', '127.0.0.1', 'example.com', '203.0.113.7'):\n"
             "    try: socket.create_connection((host, 9), timeout=1).close()\n"
             "    except OSError: pass\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "EFFVIZ_TEST_NETWORK_LOG": str(log)}
    subprocess.run([sys.executable, "-c", probe], env=env, check=True, timeout=60)
    armed, attempts = _network_attempts(log)
    assert len(armed) == 1
    assert [line.split(" port")[0] for line in attempts] == [
        "attempt create_connection 'example.com'", "attempt create_connection '203.0.113.7'"]


def test_launch_and_prediction_stay_on_this_machine(app, inputs):
    url, proc, network_log = app
    kind, labels = _call(_client(url), "image", inputs)
    _assert_answered(kind, labels)
    armed, attempts = _network_attempts(network_log)
    assert any(f"pid {proc.pid}" in line for line in armed), "the recorder was not loaded into the app"
    assert attempts == [], "the app tried to reach another machine:\n" + "\n".join(attempts)


@pytest.mark.parametrize("text", ["abc", "0", "-5", "inf", "nan"])
def test_a_limit_that_is_not_a_positive_number_is_refused_by_name(monkeypatch, text):
    from effviz.api import limit_from_env

    monkeypatch.setenv("EFFVIZ_MAX_AUDIO_SECONDS", text)
    with pytest.raises(ValueError, match="EFFVIZ_MAX_AUDIO_SECONDS.*positive number"):
        limit_from_env("EFFVIZ_MAX_AUDIO_SECONDS", 30.0)
    monkeypatch.setenv("EFFVIZ_MAX_AUDIO_SECONDS", " 12.5 ")
    assert limit_from_env("EFFVIZ_MAX_AUDIO_SECONDS", 30.0) == 12.5
    monkeypatch.delenv("EFFVIZ_MAX_AUDIO_SECONDS")
    assert limit_from_env("EFFVIZ_MAX_AUDIO_SECONDS", 30.0) == 30.0


def test_limits_come_from_the_environment_and_are_shown(app, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    url, _, _ = app
    client = _client(url)
    shown = f"Limits: pictures up to {MAX_IMAGE_PIXELS:,} pixels, sounds up to {MAX_AUDIO_SECONDS} s, " \
            f"files up to {MAX_UPLOAD_MB} MB per upload, deleted from the server within 2 h."  # default retention
    markdown = [c["props"].get("value") for c in client.config["components"] if c["type"] == "markdown"]
    assert markdown.count(shown) == 3  # Vision, Audio and Multimodal tabs

    too_long = _wav(tmp_path / "long.wav", seconds=MAX_AUDIO_SECONDS + 1)
    with pytest.raises(AppError, match=f"the limit is {MAX_AUDIO_SECONDS} s"):
        client.predict(handle_file(str(too_long)), False, api_name="/classify_audio")
    too_large = _png(tmp_path / "large.png", size=(200, 150))  # 30,000 pixels
    with pytest.raises(AppError, match=f"the limit is {MAX_IMAGE_PIXELS:,} pixels"):
        client.predict(handle_file(str(too_large)), False, api_name="/classify_image")

    # Gradio itself refuses a bigger upload, before our code sees it (the client checks too).
    assert client.config["max_file_size"] == MAX_UPLOAD_MB * 1024 * 1024
    oversized = os.urandom(MAX_UPLOAD_MB * 1024 * 1024 + 1024)
    response = httpx.post(client.upload_url, files=[("files", ("big.wav", oversized))], timeout=CALL_TIMEOUT_S)
    assert response.status_code >= 400 and "maximum allowed size" in response.text, response.text[:300]


def test_concurrent_users_during_a_sweep_all_get_answers(app, inputs):
    url, proc, network_log = app
    warm = _client(url)
    for kind in EXPECTED_LABELS:  # loads every model and fills the caches a first request fills
        _assert_answered(*_call(warm, kind, inputs))
    rss_after_warm_up = _rss_mib(proc.pid)

    sweeper = _client(url)
    # A tiny explicit sweep: two models, two sizes, one timed run each, in its own processes.
    sweep = sweeper.submit(["vim-tiny", "deit-tiny"], "resolution", "64, 96", "cpu", "fp32", 1, 1, 60,
                           api_name="/sweep")

    def user(index: int) -> list[tuple[str, list]]:
        client = _client(url)
        kinds = list(EXPECTED_LABELS)
        return [_call(client, kinds[(index + i) % len(kinds)], inputs) for i in range(CALLS_PER_USER)]

    with ThreadPoolExecutor(max_workers=USERS) as pool:
        futures = [pool.submit(user, index) for index in range(USERS)]
        results = [answer for future in futures for answer in future.result(timeout=CALL_TIMEOUT_S * 2)]
    assert len(results) == USERS * CALLS_PER_USER
    for kind, labels in results:
        _assert_answered(kind, labels)
    assert {kind for kind, _ in results} == set(EXPECTED_LABELS)

    # The sweep keeps going alongside; once it has measured a point, it is stopped to save time.
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while len(sweep.outputs()) < 2 and not sweep.done():  # the start, then the first point
        assert time.monotonic() < deadline, f"the sweep measured no point in {CALL_TIMEOUT_S} s"
        time.sleep(0.5)
    if not sweep.done():
        sweeper.predict(api_name="/stop_sweep")
    status, *_, table, files = sweep.result(timeout=CALL_TIMEOUT_S)
    assert re.search(r"Done: 4 points|Stopped after [1-4] of 4 points", status), status
    status_column = table["headers"].index("status")
    assert all(row[status_column] != "error" for row in table["data"]), table["data"]  # timeout or oom: the machine, not us

    rss_after_load = _rss_mib(proc.pid)
    print(f"RSS {rss_after_warm_up:.0f} MiB after warm-up, {rss_after_load:.0f} MiB after the load; sweep: {status}")
    assert rss_after_load - rss_after_warm_up < RSS_MARGIN_MIB, (rss_after_warm_up, rss_after_load)
    assert proc.poll() is None
    _, attempts = _network_attempts(network_log)
    assert attempts == [], "the app tried to reach another machine:\n" + "\n".join(attempts)
