"""The public API (effviz.list_models / predict / load_model / model_card) over tiny saved models:
input handling, probabilities, clear errors, sha256 checks, path traversal, caching."""
from __future__ import annotations

import hashlib
import io
import shutil
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from PIL import Image, ImageDraw

import effviz
from effviz import api
from effviz.data.audio import audio_to_tensor
from effviz.models import EffvizModel, create_model, registry
from effviz.models.registry import BUNDLED_RECIPES, task_of
from effviz.models.releases import Preprocess
from effviz.data.speech_augment import SpeechAugment
from effviz.train import RECIPES, save_bundled

torch.set_num_threads(1)
REAL_WEIGHTS_DIR = registry.WEIGHTS_DIR
IMAGE_LABELS = ["cat", "dog", "bird"]


def tiny_recipe(recipe_id: str) -> EffvizModel:
    """A bundled recipe (preprocessing, labels, clip length) with a one-block, 24-wide backbone."""
    cfg = BUNDLED_RECIPES[recipe_id]()
    cfg.depth, cfg.embed_dim = 1, 24
    return EffvizModel(cfg)


def save_card(model: EffvizModel, folder: Path) -> None:
    task = task_of(model.config)
    card = {
        "model_id": folder.name, "task": task, "mixer": model.config.mixer,
        "params": sum(p.numel() for p in model.parameters()), "forward_flops": 0, "train_seconds": 0,
        "threads": 1, "recipe": asdict(RECIPES[task]), "data": "none (random weights, for tests)",
        "metrics": {"val": 0.25}, "history": [], "weights": "random",
    }
    save_bundled(model, card, folder)


def save_official_style(model: EffvizModel, folder: Path) -> None:
    """As effviz.convert saves an imported checkpoint: no card.json, the sha256 in README.md."""
    model.save_pretrained(folder)
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "README.md").write_text(f"# {folder.name}\n\nsha256 of model.safetensors: `{sha}`\n")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    save_card(create_model("deit-tiny", depth=1, embed_dim=24, num_classes=3, labels=IMAGE_LABELS,
                           image_size=(32, 32), patch_size=8, grid_size=(4, 4)), root / "tiny-deit")
    save_card(tiny_recipe("aum-fsdd"), root / "tiny-aum")
    save_card(tiny_recipe("av-mamba-digits"), root / "tiny-av")
    save_official_style(create_model("vrwkv-tiny", depth=1, embed_dim=24, num_classes=4, image_size=(32, 32),
                                     patch_size=8, grid_size=(4, 4)), root / "vrwkv-tiny-official")
    # Not models: half-saved (no weights), a name no id may have, a hidden folder.
    (root / "half-saved").mkdir()
    (root / "half-saved" / "config.json").write_text("{}")
    shutil.copytree(root / "tiny-deit", root / "Not_An_Id")
    shutil.copytree(root / "tiny-deit", root / ".hidden")
    return root


@pytest.fixture(autouse=True)
def use_weights(weights_dir, monkeypatch):
    monkeypatch.setattr(registry, "WEIGHTS_DIR", weights_dir)


def noise_image(size: tuple[int, int], mode: str, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA").convert(mode)


def digit_drawing() -> Image.Image:
    """A dark '7' on white paper, in an odd-sized canvas."""
    img = Image.new("L", (61, 45), 255)
    ImageDraw.Draw(img).line([(15, 8), (45, 8), (25, 40)], fill=0, width=4)
    return img


def tone(seconds: float, rate: int, channels: int = 1, dtype=np.float32) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * 440 * t)
    samples = np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else wave
    return (samples * 32767).astype(np.int16) if dtype == np.int16 else samples.astype(dtype)


def assert_distribution(probs: dict[str, float], labels: list[str]) -> None:
    assert sorted(probs) == sorted(labels)
    values = list(probs.values())
    assert all(type(v) is float and 0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values, reverse=True)
    assert sum(values) == pytest.approx(1.0, abs=1e-5)


# --- list_models / model_card ------------------------------------------------------------------


def test_list_models_by_task():
    assert effviz.list_models() == ["tiny-aum", "tiny-av", "tiny-deit", "vrwkv-tiny-official"]
    assert effviz.list_models("image") == ["tiny-deit", "vrwkv-tiny-official"]
    assert effviz.list_models("audio") == ["tiny-aum"]
    assert effviz.list_models("audio-visual") == ["tiny-av"]
    with pytest.raises(ValueError, match="unknown task 'video'"):
        effviz.list_models("video")


def test_list_models_skips_a_folder_with_a_broken_config(weights_dir, tmp_path, monkeypatch, caplog):
    shutil.copytree(weights_dir / "tiny-deit", tmp_path / "broken")
    (tmp_path / "broken" / "config.json").write_text('{"mixer": "attention", "no_such_field": 1}')
    shutil.copytree(weights_dir / "tiny-aum", tmp_path / "fine")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    assert effviz.list_models() == ["fine"]
    assert "skipping" in caplog.text and "broken" in caplog.text


def test_list_models_without_a_weights_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "absent")
    assert effviz.list_models() == []
    # Only the official releases remain, which download on first use.
    with pytest.raises(ValueError, match="unknown model 'tiny-deit'; available: vim-tiny-official, "):
        effviz.predict("tiny-deit", image=noise_image((8, 8), "RGB"))


def test_model_card_of_a_trained_model():
    card = effviz.model_card("tiny-av")
    assert card["model_id"] == "tiny-av" and card["task"] == "audio-visual"
    assert card["metrics"] == {"val": 0.25} and len(card["sha256"]) == 64
    assert card["params"] == sum(p.numel() for p in effviz.load_model("tiny-av").parameters())
    assert card["config"]["mixer"] == "mamba" and card["config"]["labels"] == [*map(str, range(10)), "no digit"]
    assert card["config"]["min_audio_seconds"] == 1.0 and card["config"]["image_style"] == "digit"
    assert "Accuracy (last epoch)" in card["readme"]


def test_model_card_of_an_imported_checkpoint_counts_its_parameters():
    card = effviz.model_card("vrwkv-tiny-official")
    assert card["task"] == "image" and card["config"]["mixer"] == "rwkv"
    assert "sample_rate" not in card["config"]  # image-only: no audio fields
    assert card["params"] == sum(p.numel() for p in effviz.load_model("vrwkv-tiny-official").parameters())
    assert "sha256 of model.safetensors" in card["readme"]


# --- predict: images -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
@pytest.mark.parametrize("size", [(37, 23), (3, 250), (1, 1)])
def test_predict_on_images_of_any_mode_and_size(mode, size):
    assert_distribution(effviz.predict("tiny-deit", image=noise_image(size, mode)), IMAGE_LABELS)


def test_predict_on_image_bytes_and_paths_matches_the_picture(tmp_path):
    img = noise_image((40, 30), "RGB", seed=3)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    (tmp_path / "x.png").write_bytes(buffer.getvalue())
    expected = effviz.predict("tiny-deit", image=img)
    assert effviz.predict("tiny-deit", image=buffer.getvalue()) == expected
    assert effviz.predict("tiny-deit", image=tmp_path / "x.png") == expected
    assert effviz.predict("tiny-deit", image=str(tmp_path / "x.png")) == expected


def test_imported_checkpoint_predicts_with_numbered_classes():
    probs = effviz.predict("vrwkv-tiny-official", image=noise_image((50, 50), "RGB"))
    assert_distribution(probs, [f"class {i}" for i in range(4)])


def test_top_k_keeps_the_most_likely_classes():
    img = noise_image((32, 32), "RGB", seed=1)
    full = effviz.predict("tiny-deit", image=img)
    assert effviz.predict("tiny-deit", image=img, top_k=2) == dict(list(full.items())[:2])
    assert effviz.predict("tiny-deit", image=img, top_k=50) == full
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            effviz.predict("tiny-deit", image=img, top_k=bad)


# --- predict: audio ------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.3, 12.0])
@pytest.mark.parametrize("rate", [8000, 44100])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_predict_on_audio_of_any_dtype_channels_rate_and_length(seconds, rate, channels, dtype):
    samples = tone(seconds, rate, channels, dtype)
    assert samples.shape == ((round(seconds * rate),) if channels == 1 else (round(seconds * rate), channels))
    assert_distribution(effviz.predict("tiny-aum", audio=samples, sample_rate=rate), [*map(str, range(10)), "no digit"])


def test_short_clips_are_framed_as_in_training():
    model = effviz.load_model("tiny-aum")
    cfg = model.config
    # An FSDD-like recording: 8 kHz, fading in and out as a spoken word does. (A tone cut off
    # abruptly clicks where the API and training cut it, and these clicks are all that differ.)
    clip = (tone(0.3, 8000) * np.hanning(2400)).astype(np.float32)
    # Training's framing of a held-out clip (no augmentation) and the API's are what the model
    # reads (the API finds the sound before resampling, training resamples whole clips) ...
    pre = Preprocess.from_config(cfg).audio
    trained = SpeechAugment(pre, cfg.min_audio_seconds, rirs=[]).features(fsdd_waves_like(clip), None)
    assert pre.band_hz == 4000 and pre.speech_only
    served = audio_to_tensor(clip, 8000, pre)
    assert (served[0] - trained).abs().mean() < 0.01
    with torch.no_grad():
        torch.testing.assert_close(model.audio_features(served), model.audio_features(trained[None]), rtol=0, atol=1e-4)
    # ... and the same prediction as the clip padded by hand with silence, or recorded at 16 kHz.
    alone = effviz.predict("tiny-aum", audio=clip, sample_rate=8000)
    padded = np.pad(clip, (8000, 12000))
    assert effviz.predict("tiny-aum", audio=padded, sample_rate=8000) == pytest.approx(alone, abs=0.02)
    wideband = effviz.predict("tiny-aum", audio=tone(0.3, 16000), sample_rate=16000)
    assert wideband == pytest.approx(alone, abs=0.02)


def fsdd_waves_like(clip: np.ndarray) -> torch.Tensor:
    """An 8 kHz clip brought to 16 kHz as effviz.train brings FSDD's recordings."""
    return torchaudio.functional.resample(torch.from_numpy(clip), 8000, 16000)


def test_predict_on_a_sound_file():
    samples = tone(0.8, 22050)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 22050, format="WAV", subtype="FLOAT")
    from_file = effviz.predict("tiny-aum", audio=buffer.getvalue())
    assert from_file == effviz.predict("tiny-aum", audio=samples, sample_rate=22050)
    with pytest.raises(ValueError, match="a sound file records its own rate"):
        effviz.predict("tiny-aum", audio=buffer.getvalue(), sample_rate=22050)


def test_audio_limits():
    too_long = np.zeros(round((api.MAX_AUDIO_SECONDS + 1) * 8000), dtype=np.float32)
    with pytest.raises(ValueError, match=f"the limit is {api.MAX_AUDIO_SECONDS:g} s"):
        effviz.predict("tiny-aum", audio=too_long, sample_rate=8000)
    with pytest.raises(ValueError, match="outside the supported 8000"):
        effviz.predict("tiny-aum", audio=tone(1.0, 4000), sample_rate=4000)


# --- predict: audio-visual -----------------------------------------------------------------------


def test_audio_visual_model_takes_either_or_both():
    labels = [*(str(d) for d in range(10)), "no digit"]  # the recipe shares the speech models' labels
    image, audio = digit_drawing(), tone(0.7, 44100, channels=2, dtype=np.int16)
    both = effviz.predict("tiny-av", image=image, audio=audio, sample_rate=44100)
    image_only = effviz.predict("tiny-av", image=image)
    audio_only = effviz.predict("tiny-av", audio=audio, sample_rate=44100)
    for probs in (both, image_only, audio_only):
        assert_distribution(probs, labels)
    assert both != image_only and both != audio_only  # the fused sequence differs from either part


# --- clear errors --------------------------------------------------------------------------------


def test_wrong_modality_missing_input_and_missing_rate_are_clear_errors():
    with pytest.raises(ValueError, match="tiny-aum takes audio, not image"):
        effviz.predict("tiny-aum", image=noise_image((32, 32), "RGB"))
    with pytest.raises(ValueError, match="tiny-deit takes image, not audio"):
        effviz.predict("tiny-deit", image=noise_image((32, 32), "RGB"), audio=tone(1.0, 8000), sample_rate=8000)
    with pytest.raises(ValueError, match="nothing to predict on: give an image and/or audio"):
        effviz.predict("tiny-av")
    with pytest.raises(ValueError, match="sample_rate is required with audio samples"):
        effviz.predict("tiny-aum", audio=tone(1.0, 8000))
    with pytest.raises(ValueError, match="sample_rate must be a number"):
        effviz.predict("tiny-aum", audio=tone(1.0, 8000), sample_rate="8000")
    with pytest.raises(ValueError, match="image must be a PIL.Image, image file bytes or a path, not ndarray"):
        effviz.predict("tiny-deit", image=np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="the drawing is empty"):
        effviz.predict("tiny-av", image=Image.new("L", (28, 28), 255))


@pytest.mark.parametrize(
    "model_id",
    ["../x", "a/b", "/etc/passwd", "..", ".", "", "a..b", "tiny-deit/../tiny-aum", "Tiny-Deit", "tiny-deit\n",
     "tiny deit", "tiny\\deit", None, 3],
)
def test_ids_that_could_leave_the_weights_folder_are_refused(model_id):
    for call in (effviz.load_model, effviz.model_card, lambda i: effviz.predict(i, image=noise_image((8, 8), "RGB"))):
        with pytest.raises(ValueError, match="invalid model id"):
            call(model_id)


def test_a_symlink_out_of_the_weights_folder_is_refused(weights_dir, tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    shutil.copytree(weights_dir / "tiny-deit", outside / "elsewhere")
    (outside / "weights").mkdir()
    (outside / "weights" / "linked").symlink_to(outside / "elsewhere")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", outside / "weights")
    with pytest.raises(ValueError, match="invalid model id 'linked': it resolves outside"):
        effviz.load_model("linked")


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown model 'half-saved'; available: tiny-aum, tiny-av, tiny-deit"):
        effviz.load_model("half-saved")


# --- safe loading --------------------------------------------------------------------------------


def copy_model(weights_dir: Path, tmp_path: Path, monkeypatch, source: str = "tiny-deit", name: str = "copy") -> Path:
    """A model folder of its own (never loaded before, so not cached) in a weights dir of its own."""
    folder = shutil.copytree(weights_dir / source, tmp_path / name)
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    return folder


def test_tampered_weights_are_refused(weights_dir, tmp_path, monkeypatch):
    folder = copy_model(weights_dir, tmp_path, monkeypatch)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight: the file still loads, with a different model
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"refusing to load .*copy/model\.safetensors: its sha256 .* does not match"):
        effviz.load_model("copy")
    with pytest.raises(ValueError, match="does not match"):
        effviz.predict("copy", image=noise_image((32, 32), "RGB"))


def test_weights_without_a_recorded_sha256_are_refused(weights_dir, tmp_path, monkeypatch):
    card_folder = copy_model(weights_dir, tmp_path, monkeypatch, "tiny-deit", "no-card-sha")
    card = (card_folder / "card.json").read_text()
    (card_folder / "card.json").write_text(card.replace('"sha256"', '"sha"'))
    readme_folder = copy_model(weights_dir, tmp_path, monkeypatch, "vrwkv-tiny-official", "no-readme-sha")
    (readme_folder / "README.md").write_text("# an imported checkpoint that records no sha256\n")
    for model_id, source in (("no-card-sha", "card.json"), ("no-readme-sha", "README.md")):
        with pytest.raises(ValueError, match=rf"refusing to load .*model\.safetensors: no sha256 .*{source}"):
            effviz.load_model(model_id)


def test_loaded_models_are_cached_in_eval_mode():
    model = effviz.load_model("tiny-deit")
    assert effviz.load_model("tiny-deit") is model
    assert not model.training and model.config.labels == IMAGE_LABELS


def test_concurrent_first_loads_load_once(weights_dir, tmp_path, monkeypatch):
    copy_model(weights_dir, tmp_path, monkeypatch, "tiny-aum", "fresh")
    original = api.build_pretrained
    loads = []

    def slow_build(model_id):
        loads.append(model_id)
        time.sleep(0.3)  # a window in which every other thread asks for the same model
        return original(model_id)

    monkeypatch.setattr(api, "build_pretrained", slow_build)
    start = threading.Barrier(8)
    results, errors = [], []

    def load():
        start.wait()
        try:
            results.append(effviz.load_model("fresh"))
        except Exception as err:  # collected: an exception in a thread would otherwise vanish
            errors.append(err)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 8
    assert len(loads) == 1 and all(m is results[0] for m in results)


# --- the real bundled models ---------------------------------------------------------------------


def test_every_real_bundled_model_predicts_on_an_example(monkeypatch):
    monkeypatch.setattr(registry, "WEIGHTS_DIR", REAL_WEIGHTS_DIR)
    model_ids = effviz.list_models()
    if not model_ids:
        pytest.skip(f"no trained or imported model under {REAL_WEIGHTS_DIR} yet")
    for model_id in model_ids:
        cfg = effviz.load_model(model_id).config
        inputs = {}
        if "image" in cfg.modalities:
            inputs["image"] = digit_drawing() if cfg.image_style == "digit" else noise_image((96, 80), "RGB")
        if "audio" in cfg.modalities:
            inputs.update(audio=tone(1.0, 16000), sample_rate=16000)
        labels = cfg.labels or [f"class {i}" for i in range(cfg.num_classes)]
        assert_distribution(effviz.predict(model_id, **inputs), labels)


def test_prediction_device_follows_the_machine_and_the_environment(monkeypatch):
    monkeypatch.delenv("EFFVIZ_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert api.prediction_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert api.prediction_device() == torch.device("cuda")  # a GPU, when present, is used
    monkeypatch.setenv("EFFVIZ_DEVICE", "cpu")
    assert api.prediction_device() == torch.device("cpu")  # ...unless the deployment says otherwise


@pytest.mark.parametrize("name, message", [("tpu", "not a device name|runs on cpu or cuda"), ("meta", "runs on cpu or cuda")])
def test_unusable_prediction_devices_are_clear_errors(monkeypatch, name, message):
    monkeypatch.setenv("EFFVIZ_DEVICE", name)
    with pytest.raises(ValueError, match=message):
        api.prediction_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("EFFVIZ_DEVICE", "cuda")
    with pytest.raises(ValueError, match="no usable CUDA GPU"):
        api.prediction_device()


def test_every_bundled_speech_model_hears_a_take_alike_at_any_rate_and_in_silence(monkeypatch):
    """The app's spoken examples at 8, 16 and 48 kHz, and padded with 2 s of silence each side,
    get the same top-1 from every bundled model that listens."""
    monkeypatch.setattr(registry, "WEIGHTS_DIR", REAL_WEIGHTS_DIR)
    listeners = [m for m in effviz.list_models() if "audio" in effviz.load_model(m).config.modalities]
    examples = sorted((registry.bundled_path("assets") / "examples").glob("spoken_*.wav"))
    if not listeners or not examples:
        pytest.skip("no bundled speech model or spoken example in this checkout")
    for example in examples:
        samples, rate = soundfile.read(example, dtype="float32")
        takes = [(torchaudio.functional.resample(torch.from_numpy(samples), rate, r).numpy(), r) for r in (8000, 48000)]
        silence = np.zeros(2 * rate, dtype=np.float32)
        takes += [(samples, rate), (np.concatenate([silence, samples, silence]), rate)]
        for model_id in listeners:
            tops = {next(iter(effviz.predict(model_id, audio=x, sample_rate=r, top_k=1))) for x, r in takes}
            assert len(tops) == 1, (example.name, model_id, tops)



@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (.ci/run installs it)")
def test_every_bundled_speech_model_hears_digits_in_voices_it_never_heard(monkeypatch):
    """The ten digits in the ten espeak-ng voices no training run uses (synthetic_speech's test
    voices, at their own 8 kHz): each bundled speech-only model gets at least 80% top-1."""
    from effviz.data import synthetic_speech

    monkeypatch.setattr(registry, "WEIGHTS_DIR", REAL_WEIGHTS_DIR)
    speech_models = [m for m in effviz.list_models("audio")
                     if effviz.load_model(m).config.labels[:10] == [str(d) for d in range(10)]]
    if not speech_models:
        pytest.skip("no bundled spoken-digit model in this checkout")
    clips = synthetic_speech.synthesize(synthetic_speech.DIGIT_WORDS, synthetic_speech.TEST_VOICES)
    for model_id in speech_models:
        right = sum(next(iter(effviz.predict(model_id, audio=clip.waveform.numpy(), sample_rate=synthetic_speech.RATE,
                                             top_k=1))) == str(clip.digit) for clip in clips)
        assert right / len(clips) >= 0.8, (model_id, right, len(clips))
