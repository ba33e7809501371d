"""The streaming benchmark: tiny transcribers streamed for a few seconds give the record the README
cites (ratios, state bytes, real-time factors, environment), a state that keeps its size except
attention's KV cache, limits that stop a model and mark its point, failures that end one model
only, the child process the app runs it in, and the CLI's exit codes."""
from __future__ import annotations

import json

import pytest
import torch

from effviz.bench import stream
from effviz.bench.__main__ import main
from effviz.bench.stream import StreamEnd, StreamPoint, StreamSpec, run_stream
from effviz.bench.timing import Run
from effviz.models import registry

pytestmark = pytest.mark.timeout(120)

STREAMING = ["mamba-digits-stream", "rwkv-digits-stream", "retnet-digits-stream", "transformer-digits-stream"]
TRANSFORMER = ["transformer-digits-stream"]  # the one whose state grows: what the limit tests need


@pytest.fixture
def tiny(monkeypatch):
    """Every transcriber recipe at 32 channels, 2 heads and 2 blocks; no saved transcriber; torch's
    thread count put back after a test that sets it (the CLI sets one thread)."""
    for model_id, recipe in list(registry.TRANSCRIBER_RECIPES.items()):
        def small(recipe=recipe):
            cfg = recipe()
            cfg.embed_dim, cfg.num_heads, cfg.depth = 32, 2, 2
            return cfg
        monkeypatch.setitem(registry.TRANSCRIBER_RECIPES, model_id, small)
    monkeypatch.setattr(stream.streaming, "list_transcribers", lambda: [])
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def short_spec(models, **kw) -> StreamSpec:
    """6 s of audio, checkpoints at 2 and 4 s and the end, windows of 5 chunks."""
    return StreamSpec(models=tuple(models), minutes=0.1, window_chunks=5, checkpoints_s=(2, 4), **kw)


def test_the_cli_writes_the_fields_the_readme_cites(tiny, tmp_path, capsys):
    out = tmp_path / "stream.json"
    code = main(["stream", "--models", ",".join(TRANSFORMER), "--minutes", "0.1", "--checkpoints", "2,4",
                 "--window", "5", "--out", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    env = record["environment"]
    assert env["threads"] == 1 and env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert {"device_name", "machine", "nice", "load_average_1min", "calibration", "audio", "date"} <= env.keys()
    assert record["run_wall_s"] > 0 and record["spec"]["minutes"] == 0.1
    (row,) = record["models"]
    assert row["weights"] == "random" and row["limit"] is None and row["seconds_streamed"] == pytest.approx(6.08)
    # Checkpoints: the first chunk ending at or after 2 s, 4 s and 6 s (chunks of 0.16 s).
    assert [p["seconds"] for p in row["checkpoints"]] == pytest.approx([2.08, 4.0, 6.08])
    first, last = row["checkpoints"][0], row["checkpoints"][-1]
    assert row["latency_ratio"] == pytest.approx(last["latency_ms"] / first["latency_ms"])
    assert (row["ratio_from_s"], row["ratio_to_s"]) == (first["seconds"], last["seconds"])
    assert row["state_same_size"] is False  # the KV cache grew
    assert row["state_bytes_last"] > row["state_bytes_first"] > 0
    assert 0 < row["real_time_factor_cpu"] and 0 < row["real_time_factor_wall"]
    for p in row["checkpoints"]:
        assert p["latency_p20_ms"] >= p["latency_ms"] > 0 and p["window"] == 5
    report = capsys.readouterr().out
    assert "Weights: random" in report and "transformer-digits-stream" in report and f"{row['latency_ratio']:.2f}x" in report


@pytest.mark.parametrize("model_id", STREAMING)
def test_the_state_keeps_its_size_except_the_kv_cache(tiny, model_id):
    events = list(run_stream(short_spec([model_id])))
    points = [e for e in events if isinstance(e, StreamPoint)]
    assert isinstance(events[-1], StreamEnd) and events[-1].limit is None
    sizes = [p.state_bytes for p in points]
    if registry.TRANSCRIBER_RECIPES[model_id]().mixer == "attention":
        # Keys and values of every token so far: 4 tokens a chunk, as many bytes each.
        growth = {(b.state_bytes - a.state_bytes) / (b.chunks - a.chunks) for a, b in zip(points, points[1:])}
        assert len(growth) == 1 and growth.pop() > 0
    else:
        assert len(set(sizes)) == 1 and sizes[0] > 0


def test_a_state_over_the_budget_stops_the_model_and_marks_its_point(tiny):
    budget_mib = 0.01
    events = list(run_stream(short_spec(TRANSFORMER, state_budget_mib=budget_mib)))
    *points, end = events
    assert end.limit == "memory" and "budget" in end.reason and end.seconds < 6
    assert points[-1].limit == "memory" and points[-1].state_bytes > budget_mib * stream.MIB
    assert all(p.state_bytes <= budget_mib * stream.MIB for p in points[:-1])


def test_chunks_slower_than_their_audio_stop_the_model(tiny, monkeypatch):
    """A fake clock: every chunk takes 200 ms of CPU, more than the 160 ms of audio it holds."""
    def slow(fn, policy, sync=None):
        fn()
        return Run(200.0, 200.0, False)

    monkeypatch.setattr(stream, "time_once", slow)
    *points, end = list(run_stream(short_spec(TRANSFORMER)))
    assert end.limit == "latency" and "real time" in end.reason
    assert len(points) == 1 and points[0].limit == "latency" and points[0].latency_ms == 200.0
    spec = short_spec(TRANSFORMER)
    report = stream.format_report(stream.make_record(spec, stream.stream_environment(spec), points, [end], 1.0))
    assert report.rstrip().endswith("| transformer-digits-stream | 0.8 s | 200.00 | 200.00-200.00 | 0 of 5 | 14,376 | "
                                    "real-time limit |")
    assert end.seconds == pytest.approx(0.8)  # stopped at its first point: 5 chunks, one window
    assert end.compute_cpu_s / end.seconds == pytest.approx(0.2 / 0.16)


def test_a_model_that_fails_ends_alone_and_the_cli_says_so(tiny, monkeypatch, tmp_path, capsys):
    real = stream.build_transcriber

    def failing(model_id):
        if model_id == "mamba-digits-stream":
            raise RuntimeError("no kernel here")
        return real(model_id)

    monkeypatch.setattr(stream, "build_transcriber", failing)
    out = tmp_path / "s.json"
    code = main(["stream", "--models", f"mamba-digits-stream,{TRANSFORMER[0]}", "--minutes", "0.05",
                 "--checkpoints", "1", "--window", "3", "--out", str(out)])
    assert code == 1
    rows = {r["model"]: r for r in json.loads(out.read_text())["models"]}
    assert rows["mamba-digits-stream"]["limit"] == "error" and "no kernel here" in rows["mamba-digits-stream"]["reason"]
    assert rows[TRANSFORMER[0]]["limit"] is None and rows[TRANSFORMER[0]]["latency_ratio"] is not None
    assert "no kernel here" in capsys.readouterr().out


def test_stop_ends_every_stream(tiny):
    """Also: a window of one chunk (its latency is that chunk's)."""
    import threading

    stop = threading.Event()
    events = []
    for event in run_stream(StreamSpec(models=tuple(TRANSFORMER), minutes=0.1, window_chunks=1), stop):
        events.append(event)
        stop.set()
    assert [type(e) for e in events] == [StreamPoint, StreamEnd] and events[-1].limit == "stopped"
    assert events[0].window == 1 and events[0].latency_ms == events[0].latency_p80_ms


@pytest.mark.parametrize("args", [
    ["--minutes", "0"], ["--minutes", "61"], ["--minutes", "x"], ["--models", "nope"], ["--models", ","],
    ["--state-budget-mib", "-1"], ["--checkpoints", "a,b"], ["--checkpoints", "0"], ["--window", "0"],
    ["--threads", "0"], ["--state-budget-mib", "nan"],
])
def test_bad_arguments_are_usage_errors(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["stream", *args])
    assert exit_.value.code == 2 and "error:" in capsys.readouterr().err


def test_the_child_process_streams_the_real_recipe_until_stopped():
    """As the app runs it: a child process, the full-size transformer recipe, 10 minutes asked,
    stopped after its first point: the child still reports the stream's end."""
    import threading

    stop = threading.Event()
    spec = StreamSpec(models=(TRANSFORMER[0],), minutes=10, window_chunks=3)
    events = []
    for event in stream.run_stream_in_child(spec, stop):
        events.append(event)
        if isinstance(event, StreamPoint):
            stop.set()
    environment, *points, end = events
    assert environment["threads"] == 1 and points and all(isinstance(p, StreamPoint) for p in points)
    assert isinstance(end, StreamEnd) and end.limit == "stopped" and end.weights in ("saved", "random")
    assert points[0].seconds == pytest.approx(3.36) and end.seconds < 600  # a point every 600 / 180 s
