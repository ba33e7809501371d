"""``python -m effviz``: the commands, their JSON output and exit codes, and the package
installed with pip finding its bundled weights from any working directory."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

import effviz
from effviz.__main__ import main

from .conftest import REPO


def test_list_json_names_bundled_models_and_releases(capsys):
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    ids = {row["id"]: row for row in rows}
    for model_id in effviz.list_models():
        assert ids[model_id]["ready"]
    assert ids["vim-tiny-official"]["kind"] == "official" and "download_mb" in ids["vim-tiny-official"]
    assert main(["list", "--task", "audio"]) == 0
    assert "ast-base-official" in capsys.readouterr().out


def test_predict_prints_the_top_classes_and_exit_codes_mean_something(tmp_path, capsys):
    photo = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()).save(photo)
    model_id = effviz.list_models("image")[0]
    assert main(["predict", "--model", model_id, str(photo), "--json", "--top-k", "3"]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    assert len(top) == 3 and set(top) <= set(effviz.load_model(model_id).config.labels)
    assert main(["predict", "--model", model_id, str(tmp_path / "absent.png")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["predict", "--model", "no-such-model", str(photo)]) == 1
    assert "unknown model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["predict", str(photo)])  # --model is required
    assert usage.value.code == 2


def test_pip_installed_package_finds_its_weights_from_anywhere(tmp_path):
    """``pip install .`` (here into a target folder, the dependencies being this environment's),
    then ``python -m effviz predict`` run from an unrelated folder."""
    # From a copy of the sources: setuptools builds in the source folder, which must stay clean.
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "test-artifacts",
                                                                "__pycache__", "runs"))
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                              str(source)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (target / "effviz" / "weights").is_dir() and (target / "effviz" / "assets" / "examples").is_dir()
    for transcriber in (REPO / "weights" / "transcribers").iterdir():  # two levels down: listed on their own
        assert (target / "effviz" / "weights" / "transcribers" / transcriber.name / "model.safetensors").is_file()
    photo = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()).save(photo)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    env.pop("EFFVIZ_WEIGHTS_DIR", None)
    model_id = effviz.list_models("image")[0]
    result = subprocess.run([sys.executable, "-m", "effviz", "predict", "--model", model_id, str(photo)],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 5
    located = subprocess.run([sys.executable, "-c", "import effviz; print(effviz.__file__)"],
                             cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert Path(located.stdout.strip()).is_relative_to(target)  # the installed copy, not this checkout
