"""The roofline report (its numbers add up) and the peers bench (same inputs, agreement, ratios) on
tiny shapes with no time budget, one thread. A peer whose library is absent is skipped with the
reason."""
import json
import math

import pytest
import torch

from effviz.bench import roofline
from effviz.bench.__main__ import main
from effviz.bench.peers import compare, deit_pair, deit_ratio, format_report
from effviz.models.mixers import mamba
from effviz.models.registry import architecture_config

pytestmark = pytest.mark.timeout(600)
SIZE = 32  # 2x2 patches + class token: every model runs in milliseconds


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model_id, kernel_names", [
    ("vim-tiny", {"mamba_conv_cpu", "mamba_inner_cpu", "rms_norm"}),  # inference takes the fused path
    ("vrwkv-tiny", {"bi_wkv"}),
    ("vir-tiny", {"retention"}),
    ("deit-tiny", set()),
])
def test_roofline_floor_is_the_sum_of_its_components(model_id, kernel_names):
    result = roofline.run_roofline(model_id, SIZE, budget_s=0)
    parts = {part.name: part for part in result.components}
    assert set(parts) == {roofline.MATMULS, roofline.EVERYTHING_ELSE} | kernel_names
    priced = [part for part in result.components if part.floor_ms is not None]
    assert math.isclose(result.floor_ms, sum(part.floor_ms for part in priced))
    assert math.isclose(result.floor_ms, sum(call["floor_ms"] for call in result.calls))
    assert all(part.work > 0 and part.floor_ms > 0 and part.rate > 0 for part in priced)
    assert math.isclose(result.overhead, (result.measured_ms - result.floor_ms) / result.measured_ms)
    assert math.isclose(sum(part.share_of_measured for part in result.components), 1.0)
    # A floor above the measured time is possible on a noisy machine; it is flagged, not hidden.
    assert (0 <= result.overhead < 1) == (result.flag is None)


@pytest.mark.parametrize("chunk", [mamba.FUSED_CHUNK, 2])  # 2: the long-sequence path, conv by chunks
def test_roofline_counts_the_elements_and_flops_the_model_pushes(chunk, monkeypatch):
    monkeypatch.setattr(mamba, "FUSED_CHUNK", chunk)
    result = roofline.run_roofline("vim-tiny", SIZE, budget_s=0)
    cfg = architecture_config("vim-tiny")
    tokens, d_inner = (SIZE // 16) ** 2 + 1, cfg.expand * cfg.embed_dim
    parts = {part.name: part for part in result.components}
    # One fused call per block scans both directions, each token x channel x state.
    assert parts["mamba_inner_cpu"].work == 2 * cfg.depth * tokens * d_inner * cfg.d_state
    assert parts["mamba_inner_cpu"].calls == cfg.depth
    assert parts["mamba_conv_cpu"].work == 2 * cfg.depth * tokens * d_inner * cfg.d_conv
    # The projections alone: in_proj (D -> 2 d_inner) and out_proj (d_inner -> D) per block.
    projections = cfg.depth * 2 * tokens * (cfg.embed_dim * 2 * d_inner + d_inner * cfg.embed_dim)
    assert parts[roofline.MATMULS].work > projections


def test_roofline_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "roofline.json"
    assert main(["roofline", "--model", "deit-tiny", "--size", str(SIZE), "--threads", "1", "--budget", "0",
                 "--json", str(out)]) == 0
    assert "### deit-tiny" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["results"][0]["model"] == "deit-tiny" and record["results"][0]["floor_ms"] > 0


def test_roofline_cli_refuses_an_unknown_model():
    with pytest.raises(SystemExit):
        main(["roofline", "--model", "no-such-model", "--size", str(SIZE)])


def test_selective_scan_peers_agree_with_ours():
    record = compare("selective_scan", length=16, budget_s=0)
    impls = {row["impl"] for row in record["rows"]}
    assert "effviz torch" in impls
    for library, impl in (("mamba_ssm", "mamba_ssm selective_scan_ref"), ("mambapy", "mambapy pscan")):
        assert (impl in impls) != any(note.startswith(library) for note in record["notes"]), record["notes"]
    if len(impls) == 1:
        pytest.skip(f"no peer installed: {record['notes']}")
    for row in record["rows"]:
        assert row["max_abs_diff"] < 1e-3, row
        assert row["min_ms"] > 0 and row["ratio_to_first"] > 0


def test_retention_peers_agree_with_ours():
    pytest.importorskip("fla", reason="flash-linear-attention is not installed")
    record = compare("retention", length=80, budget_s=0)  # 80: more than one of fla's 64-token chunks
    impls = {row["impl"] for row in record["rows"]}
    assert {"fla naive_retention (parallel)", "fla naive_chunk_simple_gla"} <= impls, record["notes"]
    for row in record["rows"]:
        assert row["max_abs_diff"] < 1e-3, row


def test_our_deit_matches_timm_on_the_same_weights():
    pytest.importorskip("timm", reason="timm is not installed")
    ours, theirs = deit_pair(seed=3)
    image = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(image=image), theirs(image), atol=1e-5, rtol=1e-5)


def test_peers_report_prints_the_deit_ratio():
    pytest.importorskip("timm", reason="timm is not installed")
    record = {"environment": {"processor": "cpu", "threads": 1, "torch": torch.__version__, "effviz": "x",
                              "backends": ["torch"]},
              "comparisons": [compare("deit-tiny", size=224, budget_s=0)]}
    rows = record["comparisons"][0]["rows"]
    assert [row["impl"] for row in rows] == ["effviz deit-tiny", "timm deit_tiny_patch16_224"]
    assert rows[1]["max_abs_diff"] < 1e-4
    ratio = deit_ratio(record)
    assert ratio == pytest.approx(rows[0]["min_ms"] / rows[1]["min_ms"])
    assert f"effviz / timm: **{ratio:.3f}**" in format_report(record)
