"""effviz.train end to end on a tiny spoken-digit zip made here (tones, two speakers), with tiny
models: checkpoints, resume, the saved bundle and its card; and the audio-visual warm start."""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from effviz import train
from effviz.data import synthetic_speech
from effviz.models import EffvizModel, registry
from effviz.train import Recipe

TINY = dict(embed_dim=24, depth=1)
RECIPES = dict(registry.BUNDLED_RECIPES)  # before any test swaps an entry for a tiny one


def tiny(recipe_id: str, **overrides) -> registry.ModelConfig:
    cfg = RECIPES[recipe_id]()
    for name, value in {**TINY, **overrides}.items():
        setattr(cfg, name, value)
    return cfg


def tiny_fsdd(path: Path) -> Path:
    """Digits 0-9 from the held-out speaker and one training speaker, 2 takes each: 0.3 s tones
    whose pitch encodes the digit."""
    with zipfile.ZipFile(path, "w") as archive:
        for digit in range(10):
            for speaker in (train.VAL_SPEAKER, "jackson"):
                for take in range(2):
                    t = np.arange(2400) / 8000
                    tone = (0.3 * np.sin(2 * np.pi * (300 + 150 * digit) * t)).astype(np.float32)
                    buffer = io.BytesIO()
                    soundfile.write(buffer, tone, 8000, format="WAV")
                    archive.writestr(f"recordings/{digit}_{speaker}_{take}.wav", buffer.getvalue())
    return path


def tone_word(word: str, pitch: float) -> synthetic_speech.Utterance:
    t = np.arange(2000) / synthetic_speech.RATE
    return synthetic_speech.Utterance(torch.from_numpy((0.3 * np.sin(2 * np.pi * pitch * t)).astype(np.float32)),
                                      word, "tone")


@pytest.fixture(autouse=True)
def tiny_speech_corpus(tmp_path, monkeypatch):
    """Tone "voices" in place of the synthesisers, one room, two bank variants, a private cache."""
    words = [*synthetic_speech.DIGIT_WORDS, "apple"]
    monkeypatch.setattr(synthetic_speech, "training_utterances",
                        lambda: [tone_word(w, 330 + 150 * i) for i, w in enumerate(words)])
    monkeypatch.setattr(synthetic_speech, "test_utterances",
                        lambda: [tone_word(w, 310 + 150 * i) for i, w in enumerate([*words, "banana"])])
    monkeypatch.setattr(synthetic_speech, "calibration_utterances",
                        lambda: [tone_word(w, 320 + 150 * i) for i, w in enumerate([*words, "acorn"])])
    monkeypatch.setattr(train, "room_impulse_responses", lambda rate: [torch.tensor([1.0, 0.0, 0.0, 0.3])])
    monkeypatch.setattr(train, "SPEECH_BANK_VARIANTS", 2)
    monkeypatch.setenv("EFFVIZ_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tiny_setup(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.BUNDLED_RECIPES, "aum-fsdd", lambda: tiny("aum-fsdd"))
    monkeypatch.setitem(train.RECIPES, "audio", Recipe(epochs=2, batch_size=8, lr=1e-3, weight_decay=0.05,
                                                       warmup_epochs=1, label_smoothing=0.1))
    monkeypatch.setattr(train, "RUNS_DIR", tmp_path / "runs")
    return {"fsdd": str(tiny_fsdd(tmp_path / "fsdd.zip"))}, tmp_path / "weights" / "aum-fsdd"


def test_training_saves_a_strictly_loadable_model_with_an_honest_card(tiny_setup):
    data, out = tiny_setup
    card = train.train("aum-fsdd", data, out_dir=out, test_speaker="theo")
    assert [h["epoch"] for h in card["history"]] == [1, 2]
    assert set(card["metrics"]) == {"train_loss", "train_acc", "speaker", "speaker_digits_only", "synthetic_voices",
                                    "synthetic_voices_digits_only", "no_digit_words", "no_digit_sounds"}
    assert 0.0 <= card["metrics"]["speaker"] <= 1.0
    assert card["uncalibrated_metrics"]["speaker"] == card["history"][-1]["speaker"]
    shift = card["no_digit_calibration"]["shift"]
    assert "FSDD: 20 clips of 1 speakers (jackson), all 20 clips of speaker 'theo' held out" in card["data"]
    assert card["test_speaker"] == "theo"
    assert card["sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert json.loads((out / "card.json").read_text())["sha256"] == card["sha256"]
    assert f"sha256 of model.safetensors: `{card['sha256']}`" in (out / "README.md").read_text()
    model = EffvizModel.from_pretrained(str(out), strict=True)
    assert model.config == tiny("aum-fsdd")
    checkpoint = torch.load(out.parents[1] / "runs" / "aum-fsdd-without-theo" / "last.pt", weights_only=True)
    for name, value in model.state_dict().items():
        if name == "head.bias":  # calibrated: the "no digit" logit shifted, nothing else
            expected = checkpoint["model"][name].clone()
            expected[10] += shift
            torch.testing.assert_close(value, expected)
        else:
            assert torch.equal(checkpoint["model"][name], value), name


def test_resume_continues_from_the_last_epoch(tiny_setup):
    data, out = tiny_setup
    first = train.train("aum-fsdd", data, out_dir=out)
    resumed = train.train("aum-fsdd", data, epochs=3, resume=True, out_dir=out)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][:2] == first["history"]  # not retrained


def test_resume_refuses_a_checkpoint_of_another_schedule(tiny_setup):
    data, out = tiny_setup
    train.train("aum-fsdd", data, out_dir=out)
    with pytest.raises(ValueError, match="trained by another recipe"):
        train.train("aum-fsdd", data, resume=True, out_dir=out, cycles=2)


def test_a_seed_override_is_its_own_run_and_leaves_the_recipe_alone(tiny_setup):
    data, out = tiny_setup
    default = train.train("aum-fsdd", data, out_dir=out / "seed0", test_speaker="theo", limit_batches=1)
    other = train.train("aum-fsdd", data, out_dir=out / "seed1", test_speaker="theo", limit_batches=1, seed=1)
    assert (default["recipe"]["seed"], other["recipe"]["seed"]) == (0, 1)
    assert train.RECIPES["audio"].seed == 0 and train.RECIPES["audio"].epochs == 2
    runs = out.parents[1] / "runs"
    assert (runs / "aum-fsdd-without-theo" / "last.pt").is_file()
    assert (runs / "aum-fsdd-without-theo-seed1" / "last.pt").is_file()  # --resume never mixes seeds
    assert len(list((train._cache_root() / "speech-bank").iterdir())) == 2  # another seed corrupts the clips afresh
    assert not torch.equal(EffvizModel.from_pretrained(str(out / "seed0")).head.weight,
                           EffvizModel.from_pretrained(str(out / "seed1")).head.weight)


def test_the_learning_rate_warms_up_then_decays_once_per_cycle():
    one = Recipe(epochs=4, batch_size=1, lr=1.0, weight_decay=0, warmup_epochs=1, label_smoothing=0)
    two = Recipe(epochs=4, batch_size=1, lr=1.0, weight_decay=0, warmup_epochs=1, label_smoothing=0, cycles=2)
    steps = 10  # per epoch
    rates = [train.learning_rate(one, s, steps) for s in range(40)]
    assert rates[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert rates[10] == 1.0 and all(a > b for a, b in zip(rates[10:], rates[11:])) and rates[-1] < 0.01
    restarted = [train.learning_rate(two, s, steps) for s in range(40)]
    assert restarted[20:] == restarted[:20]  # the second cycle is the first again
    assert restarted[19] < 0.03 and max(restarted) == 1.0
    assert restarted[10] == 1.0 and all(a > b for a, b in zip(restarted[10:20], restarted[11:20]))


def test_more_cycles_than_epochs_is_refused(tiny_setup):
    data, out = tiny_setup
    with pytest.raises(ValueError, match="3 learning-rate cycles do not fit in 2 epochs"):
        train.train("aum-fsdd", data, out_dir=out, cycles=3)


def test_a_fresh_copy_of_the_data_finds_its_bank_and_other_data_makes_another(tiny_setup, tmp_path):
    data, _ = tiny_setup
    copy = tmp_path / "elsewhere" / "fsdd.zip"
    copy.parent.mkdir()
    copy.write_bytes(Path(data["fsdd"]).read_bytes())
    os.utime(copy, (1e9, 1e9))  # another modification time, as a fresh copy of ../shared has
    other = tmp_path / "other.zip"  # other recordings
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("recordings/0_jackson_0.wav", b"RIFF")
    cfg = registry.BUNDLED_RECIPES["aum-fsdd"]()
    key = lambda fsdd: train._bank_key(cfg, str(fsdd), 20, ["tone"], 1, 0)  # noqa: E731
    assert key(copy) == key(data["fsdd"])
    assert key(other) != key(data["fsdd"])


def test_stale_banks_are_evicted_least_recently_used_first_and_in_use_ones_never(tmp_path):
    now = time.time()
    for name, kib, hours_ago in (("new", 4, 0), ("fresh", 4, 0.5), ("older", 4, 2), ("oldest", 4, 3)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "0.pt").write_bytes(bytes(kib * 1024))
        os.utime(tmp_path / name, (now - hours_ago * 3600,) * 2)
    (tmp_path / "file-bank.pt").write_bytes(bytes(4 * 1024))  # a connected-digits bank is one file
    os.utime(tmp_path / "file-bank.pt", (now - 1.5 * 3600,) * 2)

    # Room for two banks beside the new one: the one used half an hour ago stays whatever the
    # budget (another process may be reading it), then the most recent fit, the older go.
    deleted = train.evict_stale_banks(tmp_path, keep=tmp_path / "new", budget=12 * 1024)
    assert sorted(p.name for p in deleted) == ["older", "oldest"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file-bank.pt", "fresh", "new"]
    assert train.evict_stale_banks(tmp_path, keep=tmp_path / "new", budget=0) == [tmp_path / "file-bank.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "new"]


def _save(folder: Path, cfg) -> EffvizModel:
    torch.manual_seed(1)
    model = EffvizModel(cfg)
    model.save_pretrained(folder)
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "card.json").write_text(json.dumps({"sha256": sha}))
    return model


def test_audio_visual_model_starts_from_the_speech_model(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    speech = _save(tmp_path / "aum-fsdd", tiny("aum-fsdd")).state_dict()
    torch.manual_seed(2)
    av = EffvizModel(tiny("av-mamba-digits"))
    fresh_image_proj = av.tokenizers["image"].proj.weight.clone()
    train.warm_start(av, "av-mamba-digits")
    own = av.state_dict()
    for name, value in speech.items():
        assert torch.equal(own[name], value), name
    assert torch.equal(av.tokenizers["image"].proj.weight, fresh_image_proj)  # images start fresh


def test_warm_start_refuses_a_speech_model_of_another_shape(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    _save(tmp_path / "aum-fsdd", tiny("aum-fsdd", embed_dim=32))
    with pytest.raises(ValueError, match="cannot start av-mamba-digits from aum-fsdd"):
        train.warm_start(EffvizModel(tiny("av-mamba-digits")), "av-mamba-digits")


def test_audio_visual_card_says_whether_fusion_beats_the_better_single_input():
    metrics = {"both": 0.9, "image_only": 0.8, "audio_only": 0.7,
               "noisy_both": 0.5, "noisy_image_only": 0.6, "noisy_audio_only": 0.3}
    card = {"model_id": "av-x", "task": "audio-visual", "mixer": "mamba", "params": 1, "forward_flops": 1,
            "train_seconds": 60, "threads": 1, "data": "d", "metrics": metrics, "sha256": "0" * 64,
            "initialised_from": {"model": "aum-fsdd", "sha256": "ab" * 32},
            "recipe": {"epochs": 4, "lr": 5e-4, "weight_decay": 0.05, "batch_size": 64, "warmup_epochs": 1,
                       "label_smoothing": 0.1, "seed": 0}}
    text = train.render_card(card)
    assert "clean: both 90.0%, better than the better single input (80.0%)" in text
    assert "noisy: both 50.0%, not better than the better single input (60.0%)" in text
    assert "trained by" in text and "from scratch" not in text and "`weights/aum-fsdd` (sha256 `abababababab…`" in text


@pytest.fixture
def av_data(tmp_path, monkeypatch) -> dict[str, str]:
    """A tiny av-mamba-digits and a one-epoch recipe, a private weights/ and runs/, and the data:
    the tiny FSDD zip and 1,016 random MNIST-shaped digits."""
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(train, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setitem(registry.BUNDLED_RECIPES, "av-mamba-digits", lambda: tiny("av-mamba-digits"))
    monkeypatch.setitem(train.RECIPES, "audio-visual", Recipe(epochs=1, batch_size=8, lr=1e-3, weight_decay=0.05,
                                                              warmup_epochs=1, label_smoothing=0.1,
                                                              fresh_lr_scale=4.0))
    (tmp_path / "weights").mkdir()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mnist.npz", images=rng.integers(0, 256, (1016, 28, 28), dtype=np.uint8),
             labels=np.arange(1016) % 10)
    return {"fsdd": str(tiny_fsdd(tmp_path / "fsdd.zip")), "mnist": str(tmp_path / "mnist.npz")}


def test_audio_visual_training_records_its_source_and_speeds_up_only_fresh_parameters(tmp_path, av_data):
    speech = _save(tmp_path / "weights" / "aum-fsdd", tiny("aum-fsdd")).state_dict()
    card = train.train("av-mamba-digits", av_data, out_dir=tmp_path / "out", limit_batches=2)
    source_sha = hashlib.sha256((tmp_path / "weights" / "aum-fsdd" / "model.safetensors").read_bytes()).hexdigest()
    assert card["initialised_from"] == {"model": "aum-fsdd", "sha256": source_sha}
    assert {"both", "image_only", "audio_only", "noisy_both"} <= set(card["metrics"])
    checkpoint = torch.load(tmp_path / "runs" / "av-mamba-digits" / "last.pt", weights_only=True)
    model = EffvizModel(tiny("av-mamba-digits"))
    names = [n for n, _ in model.named_parameters()]
    scale_of = {i: group["lr_scale"] for group in checkpoint["opt"]["param_groups"] for i in group["params"]}
    assert len(scale_of) == len(names)
    fresh_names = {n for n in names if n not in speech}
    assert fresh_names and all(n.startswith(("tokenizers.image", "modality_embed")) for n in fresh_names)
    assert sorted(scale_of.values()).count(4.0) == len(fresh_names)
    assert sorted(scale_of.values()).count(1.0) == len(names) - len(fresh_names)


def test_an_audio_visual_fold_tests_on_its_speaker_and_starts_from_that_speakers_speech_fold(tmp_path, av_data):
    _save(tmp_path / "weights" / "aum-fsdd", tiny("aum-fsdd"))  # the bundled source, not to be used
    fold = tmp_path / "cv" / "aum-fsdd" / "jackson"
    torch.manual_seed(3)
    EffvizModel(tiny("aum-fsdd")).save_pretrained(fold)
    (fold / "card.json").write_text(json.dumps({"model_id": "aum-fsdd", "test_speaker": "jackson"}))
    card = train.train("av-mamba-digits", av_data, out_dir=tmp_path / "out", limit_batches=1, test_speaker="jackson",
                       warm_from=fold)
    fold_sha = hashlib.sha256((fold / "model.safetensors").read_bytes()).hexdigest()
    assert card["initialised_from"] == {"model": "aum-fsdd", "sha256": fold_sha}
    assert card["test_speaker"] == "jackson" and "speaker 'jackson' held out" in card["data"]
    assert (tmp_path / "runs" / "av-mamba-digits-without-jackson" / "last.pt").is_file()
    (fold / "card.json").write_text(json.dumps({"model_id": "ast-fsdd"}))
    with pytest.raises(ValueError, match="starts from aum-fsdd; .* holds ast-fsdd"):
        train.warm_start(EffvizModel(tiny("av-mamba-digits")), "av-mamba-digits", fold)
    with pytest.raises(ValueError, match="trained from scratch"):
        train.warm_start(EffvizModel(tiny("aum-fsdd")), "aum-fsdd", fold)


def test_eval_re_measures_the_card_from_the_saved_weights(tiny_setup, monkeypatch, capsys):
    from effviz.__main__ import main as cli_main

    data, out = tiny_setup
    card = train.train("aum-fsdd", data, out_dir=out, test_speaker="theo")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", out.parent)
    results = train.evaluate_saved("aum-fsdd", data)
    assert set(results) == set(card["metrics"]) - {"train_loss", "train_acc"}
    for name, result in results.items():
        assert result == {"card": card["metrics"][name], "measured": pytest.approx(card["metrics"][name], abs=1e-9)}
    # The command line reads the data folder's usual file names.
    Path(data["fsdd"]).rename(Path(data["fsdd"]).with_name("fsdd-5speakers.zip"))
    assert cli_main(["eval", "aum-fsdd", "--data", str(Path(data["fsdd"]).parent), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["speaker"]["measured"] == pytest.approx(card["metrics"]["speaker"], abs=1e-9)
    assert cli_main(["eval", "aum-fsdd", "--data", str(out / "nowhere")]) == 1
    assert "error:" in capsys.readouterr().err


def test_cards_name_a_hybrids_mixers_and_the_parameters_a_token_passes_through():
    hybrid = EffvizModel(tiny("aum-hybrid-fsdd", depth=3, mixer_schedule=("mamba", "mamba", "attention")))
    assert train.architecture_notes(hybrid) == {"mixers": "2 mamba + 1 attention blocks"}
    experts = EffvizModel(tiny("ast-moe-fsdd", depth=2))
    notes = train.architecture_notes(experts)
    assert notes["mixers"] == "attention blocks with 2 of 8 MLP experts"
    expert = sum(p.numel() for p in experts.blocks[0].ffn.experts[0].parameters())
    assert notes["active_params"] == sum(p.numel() for p in experts.parameters()) - 2 * 6 * expert
    assert train.architecture_notes(EffvizModel(tiny("ast-fsdd"))) == {}


def test_a_variants_card_sets_it_beside_its_siblings_fold_for_fold():
    def cv(*accuracies):
        return {"mean": sum(accuracies) / 2, "worst": min(accuracies), "worst_speaker": "a",
                "folds": {s: {"speaker": a} for s, a in zip("ab", accuracies)}}

    card = {"model_id": "ast-moe-fsdd", "mixers": "attention blocks with 2 of 8 MLP experts", "mixer": "attention",
            "params": 2_000_000, "active_params": 800_000, "cross_validation": cv(0.9, 0.7),
            "siblings": {"ast-fsdd": {"mixer": "attention", "params": 550_000, "cross_validation": cv(0.8, 0.6)}}}
    text = train._siblings(card)
    assert "| `ast-moe-fsdd` | attention blocks with 2 of 8 MLP experts | 2.00 M | 90.0% | 70.0% | **80.0%** | 70.0% |" in text
    assert "| `ast-fsdd` | attention | 0.55 M | 80.0% | 60.0% | **70.0%** | 60.0% |" in text
    assert train._siblings({"model_id": "ast-fsdd"}) == ""


def test_an_audio_visual_card_shows_its_speech_alone_fold_for_fold():
    folds = {s: {"audio_only": a, "image_only": 0.97, "both": b, "noisy_audio_only": 0.6, "noisy_both": 0.95,
                 "noisy_image_only": 0.8} for s, a, b in (("george", 0.84, 0.99), ("nicolas", 0.71, 0.98))}
    cv = {"mean": 0.775, "worst": 0.71, "worst_speaker": "nicolas", "mean_both": 0.985, "worst_both": 0.98,
          "folds": folds, "command": "python docs/speech_cv.py --data ../shared/data --train"}
    text = train._av_cross_validation(cv)
    assert "speech alone\n**mean 77.5%, worst 71.0%** (nicolas); both inputs mean\n98.5%, worst 98.0%" in text
    assert "| nicolas | 71.0% | 97.0% | 98.0% | 60.0% | 95.0% |" in text


def test_a_test_speaker_is_refused_for_an_image_model():
    with pytest.raises(ValueError, match="speech and audio-visual models only, not to image models"):
        train._task("image", RECIPES["vim-cifar"](), {}, 0, "jackson")
