"""The modality table: causal language models on the shared backbone, the table built from a
run's points, and the CLI's refusals. Measuring is the sweep's (tested in test_bench_sweep.py):
here ``run_sweep`` is replaced by points with known scaling, so these tests start no child process."""
import json

import pytest
import torch

from effviz.bench import modality, sweep
from effviz.bench.__main__ import main
from effviz.bench.fit import Exponent
from effviz.bench.sweep import PointResult
from effviz.models import EffvizModel, ModelConfig
from effviz.models.language import LanguageModel
from effviz.models.registry import LANGUAGE_MODELS

ENVIRONMENT = {"device_name": "Test CPU", "device": "cpu", "threads": 1, "dtype": "fp32", "batch": 1, "timeout_s": 60,
               "python": "3", "torch": "x", "triton": None, "effviz": "x", "memory_available_mib": 1024.0,
               "budget_s": 0, "min_runs": 1, "max_runs": 1, "kernel_backends": {"selective_scan": "torch"},
               "calibration": {"workload": "loop", "min_ms": 10.0, "p80_ms": 11.0, "spread": 0.1, "max_ms": 12.0,
                               "runs": 9, "disturbed": 0}}


def small_lm(model_id: str) -> LanguageModel:
    cfg = LANGUAGE_MODELS[model_id]()
    cfg.embed_dim, cfg.depth = 48, 2
    cfg.__post_init__()
    torch.manual_seed(0)
    return LanguageModel(cfg).eval()


@pytest.mark.parametrize("model_id", list(LANGUAGE_MODELS))
def test_language_model_is_causal(model_id):
    """Changing the tokens after position t leaves the logits up to t as they were, and changes
    those after it (so the first check is not vacuous)."""
    model = small_lm(model_id)
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 256
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    assert before.shape == (2, 24, 256) and torch.isfinite(before).all()
    torch.testing.assert_close(before[:, :10], after[:, :10], rtol=1e-5, atol=1e-6)
    assert (before[:, 10:] - after[:, 10:]).abs().amax() > 1e-4


def test_language_model_refuses_what_it_cannot_read():
    model = small_lm("gpt-tiny")
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.randn(1, 8))
    with pytest.raises(ValueError, match=r"token ids must lie in 0\.\.255"):
        model(torch.tensor([[0, 256]]))
    with pytest.raises(ValueError, match="causal language model"):
        ModelConfig(mixer="attention", modalities=("text", "image"), causal=True, cls_token=None)
    with pytest.raises(ValueError, match="LanguageModel"):
        EffvizModel(LANGUAGE_MODELS["gpt-tiny"]())


def test_length_axis_plans_text_and_estimates_the_transformers_quadratic_memory():
    assert sweep.plan_input("gpt-tiny", "length", 300).describe() == "text 300 tokens"
    with pytest.raises(ValueError, match="takes image input, but the length axis needs a model that takes text"):
        sweep.plan_input("vim-tiny", "length", 300)
    growth = {m: sweep.estimate_memory_mib(m, "length", 16384) / sweep.estimate_memory_mib(m, "length", 8192)
              for m in ("gpt-tiny", "mamba-lm-tiny")}
    assert growth["gpt-tiny"] > 3 and growth["mamba-lm-tiny"] < 2.1


def fake_run_sweep(spec, stop=None):
    """Each size at once: the transformers' cost grows as tokens², the others' linearly, with a
    fixed cost that makes the transformers cheaper at the smallest text size only."""
    for x in spec.values:
        for model in spec.models:
            tokens = sweep.plan_input(model, spec.axis, x).tokens
            attention = sweep.model_config(model).mixer == "attention"
            cost = 1 + tokens**2 / 200 if attention else 8 + tokens / 10
            yield PointResult(model, spec.axis, x, tokens, cost, cost * 2, "ok", "", "fake", cost, cost * 1.01,
                              [cost, cost * 1.01, cost * 1.02])


@pytest.fixture
def faked(monkeypatch):
    monkeypatch.setattr(modality, "run_sweep", fake_run_sweep)
    monkeypatch.setattr(sweep, "sweep_environment", lambda spec: ENVIRONMENT)


def test_table_has_a_row_per_model_with_every_column(faked, tmp_path):
    spec = modality.ModalitySpec(quick=True)
    points = {m: [] for m in spec.modalities}
    for name, point in modality.run_modalities(spec):
        points[name].append(point)
    record = json.loads(json.dumps(modality.make_record(spec, ENVIRONMENT, points, 1.0)))
    rows = record["table"]
    expected = [(r.modality, m) for r in modality.MODALITIES.values() for m in (*r.efficient, *r.variants)]
    assert [(row["modality"], row["efficient"]) for row in rows] == expected
    for row in rows:
        cells = modality.format_row(row)
        assert len(cells) == len(modality.TABLE_COLUMNS) and all(cells), cells
    text = next(row for row in rows if row["efficient"] == "mamba-lm-tiny")
    assert text["traditional"] == "gpt-tiny" and text["speedup"]["x"] == 128 and text["speedup"]["ratio"] > 1
    assert text["faster_from"]["kind"] == "crossover"
    assert Exponent(**text["latency_exponent"]["efficient"]).value < Exponent(**text["latency_exponent"]["traditional"]).value
    markdown = modality.format_table(rows)
    assert "| " + " | ".join(modality.TABLE_COLUMNS) + " |" in markdown
    assert "deit-tiny-moe (variant)" in markdown

    from effviz.bench.figure import write_modality_html

    write_modality_html(record, tmp_path / "table.html")
    page = (tmp_path / "table.html").read_text()
    assert all(f"<h3 style='margin:8px 12px 0'>{m}</h3>" in page for m in modality.MODALITIES)


def test_cli_writes_the_table_the_json_and_the_figure(faked, tmp_path, capsys):
    out, html = tmp_path / "table.json", tmp_path / "table.html"
    assert main(["modality", "--quick", "--modalities", "text,audio", "--out", str(out), "--html", str(html)]) == 0
    stdout = capsys.readouterr().out
    assert "| modality | traditional approach | efficient approach |" in stdout
    assert "| text | gpt-tiny | rwkv-lm-tiny |" in stdout and "| audio | ast-tiny | aum-tiny |" in stdout
    record = json.loads(out.read_text())
    assert list(record["modalities"]) == ["text", "audio"] and record["spec"]["values"]["text"] == [32, 64, 128]
    assert html.stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["--modalities", "speech"], "unknown modality 'speech'; choose from text, vision, audio, audio-visual"),
    (["--values", "text=64,128"], "text needs at least 3 sizes spanning 2x in tokens"),
    (["--values", "text=64,80,100"], "text needs at least 3 sizes spanning 2x in tokens"),
    (["--values", "vision=1000,20000,40000"], "vision sizes go up to 2048 px, got 40000 px"),
    (["--values", "audio=-1,2,4"], "audio sizes must be positive numbers"),
    (["--values", "text"], "--values takes MODALITY=V,V,V"),
    (["--budget", "-1"], "must be >= 0"),
])
def test_cli_refuses_bad_input_clearly_before_running(monkeypatch, capsys, args, message):
    monkeypatch.setattr(modality, "run_sweep", lambda *a, **k: pytest.fail("nothing should run"))
    with pytest.raises(SystemExit) as exit_info:
        main(["modality", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_default_sizes_fit_exponents_and_stay_within_limits():
    spec = modality.ModalitySpec()
    for name, row in modality.MODALITIES.items():
        modality.check_sizes(name, row.values)
        modality.check_sizes(name, row.quick_values)
        sweep_spec = spec.sweep_spec(name)
        assert sweep_spec.threads == 1 and sweep_spec.models[-1] == row.baseline
        assert sweep.model_config(row.baseline).mixer == "attention"
        assert all(sweep.model_config(m).mixer != "attention" for m in row.efficient)
