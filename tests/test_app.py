"""The app: ``python app.py`` serves its page offline, and every stable API name answers a
Gradio client (one launch for the module); the tab functions also work in-process with real
(tiny, randomly initialised) bundled models."""
import base64
import hashlib
import io
import json
import math
import os
import re
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

import effviz
from effviz.models import EffvizModel
from effviz.models import registry

from .conftest import STARTUP_TIMEOUT_S, _free_port, launched_app
from .test_bench_stream import tiny  # noqa: F401  (fixture: tiny transcriber recipes)

pytestmark = pytest.mark.timeout(STARTUP_TIMEOUT_S + 180)


def _png(path: Path, size=(64, 48)) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _wav(path: Path, seconds: float = 0.6, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(samples.tobytes())
    return path


def test_page_serves_every_tab_offline(app, client):
    _, page, proc = app
    # The page embeds the app's config: our title, and analytics switched off.
    assert '"title":"effviz"' in page and '"analytics_enabled":false' in page
    rendered = str(client.config["components"])
    for tab in ("Vision", "Audio", "Multimodal", "Live digits", "Scaling lab", "Kernels", "Models", "Inside the models"):
        assert f"'label': '{tab}'" in rendered, tab
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/classify_image", "/classify_audio", "/classify_av", "/transcribe_stream", "/transcribe_live",
                 "/sweep", "/stream_bench", "/modality_table", "/kernels", "/roofline", "/inspect"):
        assert name in endpoints, name
    assert proc.poll() is None


def test_classify_image_answers_with_labels_or_says_no_model(client, tmp_path):
    from gradio_client import handle_file

    status, table, *labels = client.predict(handle_file(str(_png(tmp_path / "noise.png"))), False,
                                            api_name="/classify_image")
    models = [m for m in effviz.list_models("image") if m not in effviz.list_releases()]  # the app's defaults
    shown = [label for label in labels if label]  # unused slots stay empty
    if not models:
        assert "No bundled model for this task yet" in status
        assert shown == [] and table["data"] == []
        return
    assert len(shown) == len(models) and len(table["data"]) == len(models)
    for label in shown:
        confidences = label["confidences"]
        assert 1 <= len(confidences) <= 5
        assert 0 < sum(c["confidence"] for c in confidences) <= 1 + 1e-6


def test_damaged_image_gets_our_message_not_a_generic_error(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(_png(tmp_path / "whole.png").read_bytes()[:60])
    with pytest.raises(AppError, match="truncated or corrupt"):
        client.predict(handle_file(str(damaged)), False, api_name="/classify_image")


def _bad_image(kind: str, path: Path) -> Path:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text named .png":
        path.write_text("not a picture\n" * 50)
    elif kind == "decompression bomb":  # 30000 x 30000 pixels in a few KB
        Image.new("1", (30000, 30000)).save(path, optimize=True)
    return path


def _bad_sound(kind: str, path: Path) -> Path:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text named .wav":
        path.write_text("not a sound\n" * 50)
    elif kind == "1 Hz rate":
        _wav(path, seconds=20, rate=1)  # 20 samples
    elif kind == "3 hours":  # 3 h of silence: a 270 KB FLAC, refused from its header
        path = path.with_suffix(".flac")
        with soundfile.SoundFile(path, "w", 8000, 1, format="FLAC") as f:
            for _ in range(18):
                f.write(np.zeros(8000 * 600, dtype=np.int16))
    return path


@pytest.mark.parametrize("kind, message", [
    ("empty", "empty"), ("text named .png", "not an image"), ("decompression bomb", "pixels"),
])
def test_bad_pictures_get_our_message_and_the_app_stays_up(app, client, tmp_path, kind, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(_bad_image(kind, tmp_path / "bad.png"))), False, api_name="/classify_image")
    assert app[2].poll() is None


@pytest.mark.parametrize("kind, message", [
    ("empty", "empty"), ("text named .wav", "not a sound file"), ("1 Hz rate", "1 Hz is outside the supported"),
    ("3 hours", "10800.0 s long; the limit is"),
])
def test_bad_sounds_get_our_message_and_the_app_stays_up(app, client, tmp_path, kind, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(_bad_sound(kind, tmp_path / "bad.wav"))), False, api_name="/classify_audio")
    assert app[2].poll() is None


def test_uploads_leave_the_server_after_the_retention_time(tmp_path):
    """An app started with EFFVIZ_UPLOAD_RETENTION_S=2 deletes an upload within a few seconds."""
    import httpx

    cache = tmp_path / "gradio-cache"
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(_free_port()),
           "GRADIO_TEMP_DIR": str(cache), "EFFVIZ_UPLOAD_RETENTION_S": "2", "OMP_NUM_THREADS": "1"}
    with launched_app(env, tmp_path / "app.log") as (url, page, proc):
        assert "deleted from the server within 4 s" in page
        with open(_png(tmp_path / "mine.png"), "rb") as f:
            response = httpx.post(f"{url}gradio_api/upload", files={"files": ("mine.png", f, "image/png")}, timeout=30)
        response.raise_for_status()
        (stored,) = [Path(p) for p in response.json()]
        assert stored.is_file() and cache in stored.parents
        deadline = time.monotonic() + 30
        while stored.exists():
            assert time.monotonic() < deadline, "the upload was still on the server after 30 s"
            time.sleep(0.5)
        assert proc.poll() is None


def test_classify_audio_shows_the_spectrogram(client, tmp_path):
    from gradio_client import handle_file

    status, plot, table, *labels = client.predict(handle_file(str(_wav(tmp_path / "tone.wav"))), False,
                                                  api_name="/classify_audio")
    figure = json.loads(plot["plot"])
    heatmap = figure["data"][0]
    assert heatmap["type"] == "heatmap"
    z = heatmap["z"]  # plotly sends numpy arrays as base64 with their shape
    assert (int(z["shape"].split(",")[0]) if isinstance(z, dict) else len(z)) == 128  # mel bins
    shown = [label for label in labels if label]
    bundled = [m for m in effviz.list_models("audio") if m not in effviz.list_releases()]
    if not bundled:
        assert "No bundled model for this task yet" in status and shown == []
    else:
        assert len(shown) == len(table["data"]) == len(bundled)
        # Beneath the sound, what the first model reads: its own framing of the clip.
        assert [trace["type"] for trace in figure["data"]] == ["heatmap", "heatmap"]
        assert figure["layout"]["annotations"][1]["text"].startswith(f"what {bundled[0]} reads: ")


def test_transcribe_stream_answers_a_client(client, tmp_path):
    """The launched app reads the real weights/transcribers/: with none saved it says so."""
    from gradio_client import handle_file

    from effviz import streaming
    from effviz.ui.streaming import NO_TRANSCRIBER_MESSAGE

    models = streaming.list_transcribers()
    status, table, plot = client.predict(handle_file(str(_wav(tmp_path / "tone.wav"))), models,
                                         api_name="/transcribe_stream")
    if not models:
        assert status == NO_TRANSCRIBER_MESSAGE and table["data"] == []
    else:
        assert status.startswith("Done: 0.6 s at 16000 Hz") and [row[0] for row in table["data"]] == models
        assert len(json.loads(plot["plot"])["data"]) == 2 * len(models)


def test_classify_av_without_any_input_is_a_clear_error(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Nothing to recognise"):
        client.predict(None, None, api_name="/classify_av")
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), "white").save(blank)
    sketch = {"background": None, "layers": [], "composite": handle_file(str(blank))}
    with pytest.raises(AppError, match="Nothing to recognise"):
        client.predict(sketch, None, api_name="/classify_av")


def test_sweep_streams_points_and_stops(client):
    from effviz.bench.sweep import default_spec

    job = client.submit(api_name="/sweep")  # no arguments: effviz.bench.sweep.default_spec()
    deadline = time.monotonic() + 150
    # The start, then three measured points: the three default models at the smallest size (timed
    # together, then measured for memory one by one).
    while len(job.outputs()) < 4:
        assert not job.done(), f"sweep ended early: {job.outputs()}"
        assert time.monotonic() < deadline, "the sweep streamed fewer than three points in time"
        time.sleep(0.5)
    assert "No sweep" not in client.predict(api_name="/stop_sweep")
    final = job.result(timeout=60)
    updates = job.outputs()
    assert len(updates) >= 5  # intermediate updates before the final one
    status, latency_plot, memory_plot, summary, table, files = final
    spec = default_spec()
    measured = len(table["data"])
    assert measured >= 3 and f"Stopped after {measured} of {len(spec.models) * len(spec.values)} points" in status
    assert {row[0] for row in table["data"]} <= set(spec.models)
    status_column = table["headers"].index("status")
    assert all(row[status_column] in ("ok", "oom", "timeout", "skipped", "error") for row in table["data"])
    assert "timed runs it slows (wall time over CPU time) are detected and run again" in status
    assert len(files) == 2  # CSV and JSON of the raw points
    traces = json.loads(latency_plot["plot"])["data"]
    assert any(t.get("error_y", {}).get("array") for t in traces)  # error bars up to p80
    # Intermediate updates grow one point at a time.
    sizes = [len(update[4]["data"]) for update in updates[:-1]]
    assert sizes == sorted(sizes) and sizes[0] == 0


def test_a_second_sweep_waits_in_the_queue_with_its_place_shown(app):
    """Sweeps measure the machine, so they run one at a time: a second user's sweep is queued
    (Gradio reports its rank to that user's page and client) until the first one ends."""
    from gradio_client import Client
    from gradio_client.utils import Status

    first_user, second_user = (Client(app[0], analytics_enabled=False, verbose=False, download_files=False)
                               for _ in range(2))
    first = first_user.submit(api_name="/sweep")
    deadline = time.monotonic() + 60
    running = (Status.PROCESSING, Status.ITERATING)
    while first.status().code not in running:
        assert time.monotonic() < deadline, f"the first sweep did not start: {first.status()}"
        time.sleep(0.2)
    second = second_user.submit(api_name="/sweep")
    while (status := second.status()).code != Status.IN_QUEUE or status.rank is None:
        assert time.monotonic() < deadline, f"the second sweep was never queued: {status}"
        time.sleep(0.2)
    assert status.rank >= 0 and not first.done()
    first_user.predict(api_name="/stop_sweep")
    assert "Stopped after" in first.result(timeout=60)[0]
    # Now the second one runs; its user stops it too.
    while second.status().code not in running and not second.done():
        assert time.monotonic() < deadline + 60, f"the queued sweep never started: {second.status()}"
        time.sleep(0.2)
    second_user.predict(api_name="/stop_sweep")
    assert re.search(r"Stopped after|Done:", second.result(timeout=90)[0])


def test_kernels_benchmark_returns_plot_and_report(client):
    plot, report = client.predict(["bi_wkv"], "64, 128", 1, "cpu", "float32", api_name="/kernels")
    assert "### bi_wkv" in report and "Measured limits" in report
    traces = json.loads(plot["plot"])["data"]
    assert {"reference", "torch"} <= {t["name"] for t in traces}
    assert all(y > 0 for t in traces for y in t["y"])


def test_roofline_returns_bars_and_report(client):
    plot, report = client.predict(["deit-tiny"], 32, 0.2, api_name="/roofline")
    assert "### deit-tiny" in report and "floor" in report and "overhead" in report
    bars = {t["name"]: t for t in json.loads(plot["plot"])["data"]}
    assert {"matmuls & convs", "everything else", "measured forward"} <= set(bars)
    assert bars["matmuls & convs"]["y"][0] > 0


def test_fetching_an_official_release_offline_says_why(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="offline"):
        client.predict("vim-tiny-official", api_name="/import_checkpoint")


@pytest.mark.parametrize("request_", ["/etc/passwd", "weights/vim-cifar/model.safetensors", "evil/repo", "hustvl/Vim-tiny-midclstok"])
def test_the_fetch_endpoint_takes_only_registered_releases(client, request_):
    """No server path is read and no arbitrary repo is fetched: the public app fetches the
    registry's releases (a repo id only when the operator allow-lists it)."""
    import gradio as gr
    from gradio_client.exceptions import AppError

    from effviz.ui import models as models_tab

    with pytest.raises(AppError, match="not in the list of choices"):  # Gradio refuses it before our code
        client.predict(request_, api_name="/import_checkpoint")
    with pytest.raises(gr.Error, match="is not an official release"):  # and so would our code
        models_tab.fetch_official(request_)


def test_an_allow_listed_repo_never_overwrites_an_existing_model(tmp_path, monkeypatch):
    import gradio as gr

    from effviz.ui import models as models_tab

    (tmp_path / "vim-tiny-org-vim").mkdir()
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setenv("EFFVIZ_ALLOWED_REPOS", "vim-tiny=org/vim")
    assert "org/vim" in models_tab.fetchable()
    with pytest.raises(gr.Error, match="already exists in weights/; an existing model is never overwritten"):
        models_tab.fetch_official("org/vim")
    monkeypatch.setenv("EFFVIZ_ALLOWED_REPOS", "vir-tiny=org/vir")
    with pytest.raises(ValueError, match="EFFVIZ_ALLOWED_REPOS"):
        models_tab.fetchable()


# ---- tab functions in-process, with tiny bundled models ------------------------------------------


def _save_tiny(folder: Path, recipe: str) -> None:
    torch.manual_seed(0)
    cfg = registry.BUNDLED_RECIPES[recipe]()
    cfg.depth, cfg.embed_dim = 2, 48
    EffvizModel(cfg).save_pretrained(folder)
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "card.json").write_text(json.dumps({"sha256": sha, "params": 0, "metrics": {}}))


@pytest.fixture
def tiny_weights(tmp_path, monkeypatch):
    for recipe in ("vim-cifar", "deit-cifar", "av-mamba-digits"):
        _save_tiny(tmp_path / f"tiny-{recipe}", recipe)
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    return tmp_path


def test_tabs_run_every_model_on_one_input(tiny_weights):
    import gradio as gr

    from effviz.ui import multimodal, vision
    from effviz.ui.examples import prepare_examples

    torch.set_num_threads(1)
    examples = prepare_examples(tiny_weights / "examples")
    models = effviz.list_models("image")
    assert models == ["tiny-deit-cifar", "tiny-vim-cifar"]

    status, table, labels = vision.classify_image({"path": str(_png(tiny_weights / "x.png"))}, False, models)
    assert list(table["model"]) == models and all(table["latency ms"] > 0) and all(table["weights MiB"] > 0)
    assert all(len(p) == 5 and 0 < sum(p.values()) <= 1 + 1e-6 for p in labels)
    # Peak memory is measured in a child process, which reads the real weights/ folder, where these
    # tiny models are not: the table stays empty there and the status says why.
    status, table, _ = vision.classify_image({"path": str(_png(tiny_weights / "x.png"))}, True, models)
    assert table["peak MiB"].isna().all() and "Peak memory not measured for tiny-vim-cifar" in status

    av = effviz.list_models("audio-visual")
    status, table, fused = multimodal.classify_av(
        {"composite": {"path": examples.digits["7"]}}, {"path": examples.spoken["7"]}, av
    )
    assert list(table["input"]) == ["drawing + sound", "drawing only", "sound only"]
    assert fused[0] is not None and len(fused[0]) == 5
    blank = tiny_weights / "blank.png"
    Image.new("RGBA", (50, 50), (0, 0, 0, 0)).save(blank)  # a transparent canvas reads as white
    with pytest.raises(gr.Error, match="Nothing to recognise"):
        multimodal.classify_av({"composite": {"path": str(blank)}}, None, av)
    with pytest.raises(gr.Error, match="not an image"):
        vision.classify_image({"path": str(examples.spoken["1"])}, False, models)
    png = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(png, format="PNG")
    inline = {"url": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()}
    status, table, labels = vision.classify_image(inline, False, models)
    assert "8x8 picture" in status


def test_sweep_status_counts_sizes_and_estimates_the_time_left(monkeypatch):
    """In-process, with the measuring faked: each point takes 5 s on a fake clock."""
    from effviz.bench.sweep import PointResult
    from effviz.ui import scaling

    now = [0.0]
    environment = {"device_name": "Test CPU", "device": "cpu", "threads": 1, "dtype": "fp32", "batch": 1,
                   "timeout_s": 60, "python": "3", "torch": "x", "triton": None, "effviz": "x",
                   "memory_available_mib": 1024.0, "budget_s": 1, "min_runs": 3, "max_runs": 20,
                   "kernel_backends": {"selective_scan": "torch"},
                   "calibration": {"workload": "loop", "min_ms": 10.0, "spread": 0.1, "max_ms": 12.0, "runs": 9,
                                   "disturbed": 0}}

    def fake_run_sweep(spec, stop):
        for x in spec.values:
            for model in spec.models:
                now[0] += 5
                yield PointResult(model, spec.axis, x, int(x), x / 10, x, "ok", "", f"image {x:g}", x / 10, x / 9,
                                  [x / 10, x / 9])

    monkeypatch.setattr(scaling.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(scaling.sweep, "sweep_environment", lambda spec: environment)
    monkeypatch.setattr(scaling.sweep, "run_sweep", fake_run_sweep)
    views = list(scaling.stream_sweep(["deit-cifar", "vim-cifar"], "resolution", "32, 64, 96", "cpu", "fp32", 1, 1, 60))
    statuses = [view[0] for view in views]
    assert "0 of 3 sizes done (0 of 6 points), 0 s elapsed; at least 3 s left (the 1 s time budget per size" in statuses[0]
    assert "0 of 3 sizes done (1 of 6 points), 5 s elapsed; at least 3 s left" in statuses[1]
    # The first size took 10 s: each of the two to come is expected to take as long.
    assert "1 of 3 sizes done (2 of 6 points), 10 s elapsed; about 20 s left" in statuses[2]
    assert "2 of 3 sizes done (4 of 6 points), 20 s elapsed; about 10 s left" in statuses[4]
    assert "3 of 3 sizes done (6 of 6 points), 30 s elapsed." in statuses[6]
    assert "Done: 6 points in 30 s." in statuses[-1] and len(views) == 8
    assert (scaling.clock(185), scaling.clock(3720), scaling.clock(59.6)) == ("3 min 05 s", "1 h 02 min", "1 min 00 s")


def test_modality_table_fills_in_as_points_come_and_refuses_bad_input(monkeypatch):
    """In-process, with the measuring faked (test_bench_modality.py tests the table itself)."""
    import gradio as gr

    from effviz.bench import modality
    from effviz.ui import scaling

    from .test_bench_modality import ENVIRONMENT, fake_run_sweep

    monkeypatch.setattr(modality, "run_sweep", fake_run_sweep)
    monkeypatch.setattr(scaling.sweep, "sweep_environment", lambda spec: ENVIRONMENT)
    views = list(scaling.stream_modality_table(["text", "audio"], True, 1))
    # The start, one view per point (4 text models and 3 audio models at 3 sizes), the end.
    assert len(views) == 1 + 3 * (4 + 3) + 1
    status, table, latency_plot, memory_plot, files = views[-1]
    assert "Done: 21 points" in status
    assert "| text | gpt-tiny | mamba-lm-tiny |" in table and "| audio | ast-tiny | audio-rwkv-tiny |" in table
    record = json.loads(Path(files[0]).read_text())
    assert [row["efficient"] for row in record["table"]] == [
        "mamba-lm-tiny", "rwkv-lm-tiny", "retnet-lm-tiny", "aum-tiny", "audio-rwkv-tiny"]
    assert views[1][1].count("| text |") == 0 and views[4][1].count("| text |") == 3  # rows come with their points
    for bad, message in ((["speech"], "unknown modality 'speech'"), ([], "choose at least one modality")):
        with pytest.raises(gr.Error, match=message):
            list(scaling.stream_modality_table(bad, True, 1))


def test_modality_table_endpoint_says_what_is_wrong(client):
    from gradio_client.exceptions import AppError

    # Gradio checks the checkbox choices before the handler runs; either way the caller is told.
    with pytest.raises(AppError, match=r"'speech'.*not in the list of choices"):
        client.predict(["speech"], True, 1, api_name="/modality_table")


# ---- Live digits: streaming transcription, in-process with tiny saved transcribers ----------------

STREAMING_RECIPES = ["mamba-digits-stream", "rwkv-digits-stream", "retnet-digits-stream", "transformer-digits-stream"]


@pytest.fixture
def tiny_transcribers(tmp_path, monkeypatch):
    """Two tiny random transcribers per recipe saved under tmp_path/transcribers: their ids."""
    from effviz import streaming, train_transcriber
    from tests.test_streaming import tiny_card, tiny_model

    monkeypatch.setattr(streaming, "TRANSCRIBERS_DIR", tmp_path / "transcribers")
    streaming._loaded.clear()
    ids = []
    for recipe in STREAMING_RECIPES:
        for seed in (0, 1):
            card = tiny_card(recipe, recipe.split("-")[0])
            ids.append(f"tiny-{seed}-{recipe}")
            train_transcriber.save_transcriber(tiny_model(recipe, seed=seed), card, tmp_path / "transcribers" / ids[-1])
    yield sorted(ids)
    streaming._loaded.clear()


def _phone_number(folder: Path) -> str:
    from effviz.ui.examples import prepare_examples

    number = prepare_examples(folder).spoken_number
    assert number is not None, "the committed spoken digits make the phone-number example"
    return number


def test_an_uploaded_recording_streams_to_the_offline_transcript(tiny_transcribers, tmp_path, monkeypatch):
    from effviz import streaming
    from effviz.ui import streaming as live

    torch.set_num_threads(1)
    monkeypatch.setattr(live, "UPDATE_EVERY_S", 0.0)  # a view after every chunk
    number = _phone_number(tmp_path / "examples")
    views = list(live.transcribe_stream({"path": number}, tiny_transcribers))
    status, table, figure = views[-1]
    seconds = soundfile.info(number).duration
    assert len(views) == 2 + math.ceil(seconds / streaming.CHUNK_SECONDS)  # start, every chunk, the end
    assert status.startswith(f"Done: {seconds:.1f} s at 16000 Hz") and "Real-time factor" in status
    for model_id, digits in zip(table["model"], table["digits"]):
        model = streaming.load_transcriber(model_id)
        offline = streaming.transcribe_waveform(model, streaming.recording(number, None, model.config))
        assert digits == streaming.digits_text(offline) and digits, model_id
    growing = [view[1]["digits"].str.len().sum() for view in views]
    assert growing == sorted(growing) and growing[1] < growing[-1]  # the transcripts grow as it streams
    names = [trace.name for trace in figure.data]
    assert names == [m for m in tiny_transcribers for _ in ("latency", "state")]  # a line per model in each panel
    for model_id, state in zip(tiny_transcribers, figure.data[1::2]):
        if "transformer" in model_id:  # its state: the keys and values of every token so far
            assert state.y[-1] > state.y[0] and list(state.y) == sorted(state.y)
        else:  # a recurrent state keeps its size
            assert len(set(state.y)) == 1, model_id


def test_bad_recordings_and_no_transcribers_get_clear_messages(tiny_transcribers, tmp_path, monkeypatch):
    import gradio as gr

    from effviz import streaming
    from effviz.ui import streaming as live

    with pytest.raises(gr.Error, match="not a sound file"):
        list(live.transcribe_stream({"path": str(_bad_sound("text named .wav", tmp_path / "bad.wav"))}, tiny_transcribers))
    with pytest.raises(gr.Error, match="No recording yet"):
        list(live.transcribe_stream(None, tiny_transcribers))
    with pytest.raises(gr.Error, match="the limit is 600 s"):
        list(live.transcribe_stream({"path": str(_bad_sound("3 hours", tmp_path / "long.wav"))}, tiny_transcribers))
    with pytest.raises(gr.Error, match="unknown transcriber 'nope'"):
        list(live.transcribe_stream({"path": str(_wav(tmp_path / "tone.wav"))}, ["nope"]))
    ((status, table, _),) = live.transcribe_stream({"path": str(_wav(tmp_path / "tone.wav"))}, [])
    assert status == "Choose at least one model." and table.empty
    monkeypatch.setattr(streaming, "TRANSCRIBERS_DIR", tmp_path / "none")
    ((status, _, _),) = live.transcribe_stream({"path": str(_wav(tmp_path / "tone.wav"))}, [])
    assert status == live.NO_TRANSCRIBER_MESSAGE
    status, table, _, session = live.transcribe_live({"path": str(_wav(tmp_path / "tone.wav"))}, [], None)
    assert status == live.NO_TRANSCRIBER_MESSAGE and session is None


@pytest.mark.parametrize("rate", [44100, 48000])
def test_the_microphone_stream_gives_the_transcript_of_the_whole_resampled_recording(tiny_transcribers, tmp_path,
                                                                                    monkeypatch, rate):
    """Chunks as the browser sends them (0.5 s WAV files at the microphone's rate) give the transcript
    of the whole recording resampled at once, but for the last ~10 ms the resampler still holds."""
    from effviz import streaming
    from effviz.data.audio import _resample, prepare_waveform
    from effviz.ui import streaming as live

    torch.set_num_threads(1)
    samples, number_rate = soundfile.read(_phone_number(tmp_path / "examples"), dtype="float32")
    at_mic_rate = _resample(torch.from_numpy(samples), number_rate, rate).numpy()
    step, session = round(live.LIVE_CHUNK_EVERY_S * rate), None
    for i, start in enumerate(range(0, at_mic_rate.shape[0], step)):
        chunk = tmp_path / f"chunk{i}.wav"
        soundfile.write(chunk, at_mic_rate[start:start + step], rate, subtype="FLOAT")
        status, table, figure, session = live.transcribe_live({"path": str(chunk)}, tiny_transcribers, session)
    assert status.startswith(f"Listening: {at_mic_rate.shape[0] / rate:.1f} s at {rate} Hz")
    for trace, digits in zip(session.traces, table["digits"]):
        whole = prepare_waveform(at_mic_rate, rate, trace.sample_rate, 600)
        assert whole.shape[0] - trace.stream.samples <= 0.011 * trace.sample_rate
        offline = streaming.transcribe_waveform(trace.stream.model, whole[:trace.stream.samples])
        assert digits == streaming.digits_text(offline) and digits
    assert len(figure.data) == 2 * len(tiny_transcribers)
    # The stream stops at its limit: later chunks add nothing, and the status says so.
    monkeypatch.setattr(live, "MAX_LIVE_SECONDS", session.seconds + 0.2)
    half_second = str(tmp_path / "chunk0.wav")
    status, *_, session = live.transcribe_live({"path": half_second}, tiny_transcribers, session)
    status, table, _, session = live.transcribe_live({"path": half_second}, tiny_transcribers, session)
    assert status.startswith("Stopped: a live stream is limited to") and session.seconds == pytest.approx(live.MAX_LIVE_SECONDS)
    status, table, _, session = live.reset_live()
    assert session is None and table.empty


def test_scaling_lab_streams_seconds_and_marks_where_the_kv_cache_hit_the_budget(tiny, monkeypatch):
    """In-process, the benchmark's child replaced by the same run in this process: the tiny
    transformer's state (its window's 4,480 bytes of frames, then 512 bytes a token of cache) passes a
    0.1 MiB budget after 8.0 s of the 12 asked."""
    import gradio as gr

    from effviz.bench import stream
    from effviz.ui import scaling

    def in_process(spec, stop):
        yield stream.stream_environment(spec)
        yield from stream.run_stream(spec, stop)

    monkeypatch.setattr(scaling.stream, "run_stream_in_child", in_process)
    views = list(scaling.stream_bench(["transformer-digits-stream"], 0.2, 0.1))
    status, latency, memory, summary, table, files = views[-1]
    assert "Starting" in views[0][0] and "Done in" in status
    assert any("streamed, 0 of 1 model ended" in view[0] for view in views[1:-1])
    marks = [t for t in memory.data if t.mode == "markers+text"]
    assert [tuple(t.text) for t in marks] == [("memory limit",)] and tuple(marks[0].x) == pytest.approx((8.0,))
    assert any(t.name == "state budget 0.1 MiB" for t in memory.data)
    assert any(t.name == "real time: 160 ms of audio a chunk" for t in latency.data)
    assert list(table["seconds streamed"]) == pytest.approx([8.0]) and list(table["limit"]) == ["memory"]
    assert "memory: state of" in summary and "Weights: random" in summary
    record = json.loads(Path(files[0]).read_text())
    assert record["models"][0]["limit"] == "memory" and record["models"][0]["stopped_at_s"] == pytest.approx(8.0)
    for models, minutes, budget, message in [([], 1, None, "at least one"), (["nope"], 1, None, "unknown transcriber"),
                                             (["transformer-digits-stream"], 61, None, "minutes streamed"),
                                             (["transformer-digits-stream"], 1, -1, "state budget")]:
        with pytest.raises(gr.Error, match=message):
            list(scaling.stream_bench(models, minutes, budget))
    assert scaling.stop_stream_bench("nobody") == "No benchmark of yours is running."
