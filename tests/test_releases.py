"""Official releases end to end, without the Hub.

The libraries that define these models (timm, transformers) build them with random weights; the
checkpoints are saved in their own native layout into a temporary Hugging Face cache, exactly
where huggingface_hub looks for the releases' repos, and everything runs with HF_HUB_OFFLINE=1.
effviz must then resolve, convert and predict them as their own code does: the same input
tensors, logits within 1e-3 and the same top 5.
"""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data

import effviz
from effviz import api
from effviz.convert import dataset_labels, import_checkpoint
from effviz.data.audio import audio_to_tensor
from effviz.data.image import image_to_tensor
from effviz.models import create_model
from effviz.models.releases import RELEASES

from .conftest import REPO, _free_port, _wait_for_page

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

FP32_LOGITS = dict(atol=1e-3, rtol=0)


def snapshot(cache: Path, repo_id: str) -> Path:
    """A snapshot folder of ``repo_id`` in huggingface_hub's cache layout, ``main`` pointing at it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    folder = repo / "snapshots" / commit
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline; models loaded from it are forgotten afterwards."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(api, "_models", {})
    monkeypatch.setattr(api, "_load_locks", {})
    return cache


def save_timm(cache: Path, timm_name: str, repo_id: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(timm_name, pretrained=False).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, snapshot(cache, repo_id) / "model.safetensors")
    return model


def photos() -> list[Image.Image]:
    cat = Image.fromarray(data.chelsea())  # 451x300, landscape
    tall = Image.fromarray(data.astronaut()).resize((300, 700))  # portrait, another aspect
    return [cat, tall]


@pytest.mark.parametrize("release, timm_name", [
    ("deit-tiny-official", "deit_tiny_patch16_224"),
    ("deit-small-official", "deit_small_patch16_224"),
])
def test_timm_deit_releases_predict_as_timm_does(hub_cache, release, timm_name):
    reference = save_timm(hub_cache, timm_name, RELEASES[release].repo_id)
    assert release in effviz.list_models("image")  # found in the cache, no download
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=reference))
    labels = dataset_labels("ImageNet-1k")
    model, pre = effviz.load_model(release), effviz.model_preprocess(release)
    for photo in photos():
        expected_input = transform(photo).unsqueeze(0)
        ours = image_to_tensor(photo, pre.image)
        torch.testing.assert_close(ours, expected_input, atol=0, rtol=0)  # timm's pretrained_cfg framing, exactly
        with torch.no_grad():
            expected = reference(expected_input)[0]
            torch.testing.assert_close(model(image=ours)[0], expected, **FP32_LOGITS)
        top5 = effviz.predict(release, image=photo, top_k=5)
        assert list(top5) == [labels[i] for i in expected.topk(5).indices]
        np.testing.assert_allclose(list(top5.values()), expected.softmax(-1).topk(5).values.numpy(), atol=1e-4)


def test_create_model_pretrained_is_the_release(hub_cache):
    save_timm(hub_cache, "deit_tiny_patch16_224", RELEASES["deit-tiny-official"].repo_id, seed=1)
    fresh = create_model("deit-tiny", pretrained=True)
    assert fresh is not effviz.load_model("deit-tiny-official")  # a copy of its own
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(fresh(image=x), effviz.load_model("deit-tiny-official")(image=x))
    with pytest.raises(ValueError, match="config overrides"):
        create_model("deit-tiny", pretrained=True, depth=2)


def test_transformers_vit_checkpoint_of_deit_imports_from_the_cache(hub_cache, tmp_path):
    """facebook/deit-tiny-patch16-224 is a transformers ViTForImageClassification."""
    torch.manual_seed(2)
    config = transformers.ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                                    intermediate_size=768, num_labels=1000)
    reference = transformers.ViTForImageClassification(config).eval()
    reference.save_pretrained(snapshot(hub_cache, "facebook/deit-tiny-patch16-224"))
    model = import_checkpoint("deit-tiny", "facebook/deit-tiny-patch16-224", tmp_path / "out")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(image=x), reference(pixel_values=x).logits, **FP32_LOGITS)
    assert "facebook/deit-tiny-patch16-224" in (tmp_path / "out" / "README.md").read_text()


def speech_like(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    voiced = np.sin(2 * np.pi * (180 + 60 * np.sin(2 * np.pi * 3 * t)) * t) * (np.sin(2 * np.pi * 1.5 * t) > 0)
    noise = np.random.default_rng(0).standard_normal(t.shape)
    return (0.3 * voiced + 0.02 * noise).astype(np.float32)


def test_ast_release_reads_audio_as_transformers_does(hub_cache):
    torch.manual_seed(3)
    reference = transformers.ASTForAudioClassification(transformers.ASTConfig(num_labels=527)).eval()
    reference.save_pretrained(snapshot(hub_cache, RELEASES["ast-base-official"].repo_id))
    extractor = transformers.ASTFeatureExtractor()
    labels = dataset_labels("AudioSet")
    for seconds in (3.0, 12.0):  # padded to 1024 frames, and cut to them
        wave = speech_like(seconds)
        expected_input = extractor(wave, sampling_rate=16000, return_tensors="pt").input_values
        ours = audio_to_tensor(wave, 16000, effviz.model_preprocess("ast-base-official").audio)
        assert ours.shape == expected_input.shape == (1, 1024, 128)
        assert (ours - expected_input).abs().max() <= 1e-3
        with torch.no_grad():
            expected = reference(input_values=expected_input).logits[0].sigmoid()
        probabilities = effviz.predict("ast-base-official", audio=wave, sample_rate=16000)
        # Multi-label: each label's own sigmoid, not a softmax over 527.
        assert sum(probabilities.values()) > 1.5
        measured = torch.tensor([probabilities[label] for label in labels])
        torch.testing.assert_close(measured, expected, atol=1e-3, rtol=0)
        assert list(probabilities)[:5] == [labels[i] for i in expected.topk(5).indices]


def test_offline_and_uncached_says_so_fast_and_listing_never_connects(hub_cache, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    from effviz.ui import model_choices

    assert "vim-tiny-official" not in effviz.list_models()
    assert "vim-tiny-official" in effviz.list_releases("image")
    assert ("vim-tiny-official (official, ~28 MB download on first use)", "vim-tiny-official") in model_choices("image")
    assert effviz.model_card("vim-tiny-official")["params"] > 7_000_000
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="offline .*HF_HUB_OFFLINE"):
        effviz.predict("vim-tiny-official", image=photos()[0])
    assert time.monotonic() - start < 5


def test_launched_app_offers_a_release_cached_after_it_started(tmp_path):
    """A visitor never restarts a Space: the model list refreshes, and the official model answers."""
    from gradio_client import Client, handle_file

    cache = tmp_path / "hub"
    cache.mkdir()
    port = _free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for_page(url, proc)
        client = Client(url, verbose=False, analytics_enabled=False)
        choices = dict((value, label) for label, value in client.predict(api_name="/image_models")["choices"])
        assert "download on first use" in choices["deit-tiny-official"]

        save_timm(cache, "deit_tiny_patch16_224", RELEASES["deit-tiny-official"].repo_id)
        choices = dict((value, label) for label, value in client.predict(api_name="/image_models")["choices"])
        assert choices["deit-tiny-official"] == "deit-tiny-official (official)"

        photo = tmp_path / "cat.png"
        photos()[0].save(photo)
        status, table, *labels = client.predict(handle_file(str(photo)), False, ["deit-tiny-official"],
                                                api_name="/classify_image")
        assert labels[0]["label"] in dataset_labels("ImageNet-1k")
        assert [row[0] for row in table["data"]] == ["deit-tiny-official"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
