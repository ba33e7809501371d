"""Streaming transcription: every causal model gives the same logits streamed in chunks of any
size as in one pass, with a state of constant size (growing for attention's KV cache); the fbank
stream equals the offline fbank; the streamed transcript equals the offline one; the recipe
trains, saves and reloads a checked model."""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from effviz import streaming, train, train_transcriber
from effviz.data import synthetic_speech
from effviz.data.connected_digits import connected_utterance, digit_error_rate, edit_distance
from effviz.models import registry
from effviz.models.transcriber import Transcriber, state_bytes
from tests.test_train import tiny_fsdd, tone_word

RECIPES = dict(registry.TRANSCRIBER_RECIPES)
TINY = dict(embed_dim=32, num_heads=2)


def tiny_card(model_id: str, mixer: str) -> dict:
    """The card fields save_transcriber renders, for a tiny untrained model."""
    return dict(model=model_id, kind="tiny test transcriber", mixer=mixer, params=0, train_seconds=0, threads=1,
                data="none", metrics={}, recipe=asdict(train_transcriber.RECIPE))


def tiny_model(model_id: str, seed: int = 0) -> Transcriber:
    cfg = RECIPES[model_id]()
    cfg.embed_dim, cfg.num_heads, cfg.depth = TINY["embed_dim"], TINY["num_heads"], 2
    torch.manual_seed(seed)
    model = Transcriber(cfg).eval()
    with torch.no_grad():  # a trained model's decays and gates are far from their init: randomise them
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("model_id", list(RECIPES))
@pytest.mark.parametrize("tokens_per_chunk", [1, 7, 64])
def test_a_causal_model_streamed_in_chunks_equals_one_pass(model_id, tokens_per_chunk):
    model = tiny_model(model_id)
    frames = torch.randn(2, 4 * 150, model.config.mel_bins)
    with torch.no_grad():
        whole = model(frames)
        state, pieces = None, []
        step = 4 * tokens_per_chunk
        for start in range(0, frames.shape[1], step):
            logits, state = model.step(frames[:, start:start + step], state)
            pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=6e-4, atol=2e-3)


@pytest.mark.parametrize("model_id", list(RECIPES))
def test_the_state_keeps_its_size_except_the_kv_cache(model_id):
    model = tiny_model(model_id)
    sizes, state = [], None
    with torch.no_grad():
        for _ in range(5):
            _, state = model.step(torch.randn(1, 4 * 10, model.config.mel_bins), state)
            sizes.append(state_bytes(state))
    if model.config.mixer == "attention":  # keys and values of every token so far: ten tokens more each chunk
        assert len({b - a for a, b in zip(sizes, sizes[1:])}) == 1 and sizes[1] > sizes[0]
    else:
        assert len(set(sizes)) == 1 and sizes[0] > 0


def test_a_token_reads_the_frames_of_its_window_and_no_later_ones():
    model = tiny_model("retnet-digits-stream")
    frames = torch.randn(1, 80, model.config.mel_bins)
    changed = frames.clone()
    changed[:, 40] += 1  # frame 40: read by the tokens whose 32-frame window holds it, tokens 10-17
    with torch.no_grad():
        differs = (model(frames) - model(changed)).abs().amax(-1)[0] > 0
    assert differs.tolist() == [t >= 10 for t in range(20)]


def test_a_chunk_of_partial_tokens_is_refused():
    model = tiny_model("mamba-digits-stream")
    with pytest.raises(ValueError, match="multiple of 4 frames"):
        model.step(torch.randn(1, 6, model.config.mel_bins), None)


def test_the_fbank_stream_equals_the_offline_fbank():
    cfg = RECIPES["retnet-digits-stream"]()
    wave = torch.randn(8000) * 0.1
    stream = streaming.FbankStream(cfg)
    pieces, start = [], 0
    for size in [1, 150, 37, 2000, 80, 1, 5731]:
        pieces.append(stream.push(wave[start:start + size]))
        start += size
    torch.testing.assert_close(torch.cat(pieces), streaming.causal_fbank(wave, cfg), rtol=1e-5, atol=1e-4)


def test_greedy_ctc_merges_repeats_across_chunks_and_keeps_them_apart_across_blanks():
    labels = ["blank", *"0123456789"]

    def logits(ids):
        return torch.nn.functional.one_hot(torch.tensor(ids), 11).float()

    decoder = streaming.GreedyCtc(labels, seconds_per_token=0.04, first_token_end=0.055)
    digits = decoder.push(logits([0, 5, 5])) + decoder.push(logits([5, 0, 5, 8])) + decoder.push(logits([8, 0]))
    assert [d.label for d in digits] == ["4", "4", "7"]
    assert [d.seconds for d in digits] == [0.095, 0.255, 0.295]


def test_a_streamed_recording_gives_the_offline_transcript(monkeypatch, tmp_path):
    model = tiny_model("rwkv-digits-stream", seed=3)
    wave = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, 24000).astype(np.float32))
    offline = streaming.transcribe_waveform(model, wave)
    stream = streaming.DigitStream(model)
    reports = [stream.feed(wave[s:s + 1234]) for s in range(0, wave.shape[0], 1234)]
    assert offline, "a random model should say something on noise"
    assert stream.transcript == offline
    assert reports[-1].seconds_streamed == pytest.approx(3.0)
    assert len({r.state_bytes for r in reports[1:]}) == 1


def test_digit_error_rate_is_edit_distance_over_reference_digits():
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([1, 2, 3], [3, 2, 1]) == 2
    assert edit_distance([], [5]) == 1
    assert digit_error_rate([([1, 2, 3, 4], [1, 2, 3, 4]), ([5, 6], [6])]) == pytest.approx(1 / 6)


def test_connected_utterances_string_digit_clips_with_pauses():
    clips = [(torch.full((800,), 0.1 * (d + 1)), d) for d in range(10)]
    wave, digits, ends = connected_utterance(clips, 8000, torch.Generator().manual_seed(0))
    assert 1 <= len(digits) <= 15
    voiced = (wave.abs() > 0).float()
    assert int((voiced[1:] - voiced[:-1]).clamp_min(0).sum()) == len(digits)  # each digit its own stretch of sound
    stops = torch.nonzero(voiced[:-1] - voiced[1:] > 0).flatten() + 1
    assert ends == stops.tolist()  # where each digit's sound stops


def test_the_alignment_puts_each_digit_on_the_first_token_that_heard_all_of_it():
    cfg = RECIPES["mamba-digits-stream"]()  # 8 kHz: 200-sample windows every 80 samples, a token every 4 frames
    # token t ends at sample ((t + 1) * 4 - 1) * 80 + 200: token 0 at 440, token 1 at 760, token 2 at 1080
    assert train_transcriber.ALIGNED_TOKENS == 3
    assert train_transcriber.aligned_targets(cfg, [3], [441], tokens=6).tolist() == [0, 4, 4, 4, 0, 0]
    assert train_transcriber.aligned_targets(cfg, [3, 7], [440, 2000], tokens=8).tolist() == [4, 4, 4, 0, 0, 8, 8, 8]
    assert train_transcriber.aligned_targets(cfg, [5], [100_000], tokens=3).tolist() == [0, 0, 6]  # past the end: the last token


# --- the recipe end to end on a tiny corpus ---------------------------------------------------------


@pytest.fixture
def tiny_recipe(tmp_path, monkeypatch):
    words = synthetic_speech.DIGIT_WORDS
    monkeypatch.setattr(synthetic_speech, "synthesize_pairs",
                        lambda pairs: [tone_word(w, 330 + 150 * words.index(w)) for w, _ in pairs[:10]])
    monkeypatch.setattr(synthetic_speech, "test_utterances",
                        lambda: [tone_word(w, 310 + 150 * i) for i, w in enumerate(words)])
    monkeypatch.setattr(train_transcriber, "room_impulse_responses", lambda rate: [torch.tensor([1.0, 0.0, 0.3])])
    monkeypatch.setattr(train_transcriber, "TEST_UTTERANCES", 4)
    monkeypatch.setattr(train, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(train_transcriber, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(streaming, "TRANSCRIBERS_DIR", tmp_path / "transcribers")
    monkeypatch.setattr(train_transcriber, "TRANSCRIBERS_DIR", tmp_path / "transcribers")
    monkeypatch.setenv("EFFVIZ_CACHE", str(tmp_path / "cache"))

    def tiny_cfg():
        cfg = RECIPES["retnet-digits-stream"]()
        cfg.embed_dim, cfg.num_heads, cfg.depth = 16, 2, 1
        return cfg

    monkeypatch.setitem(registry.TRANSCRIBER_RECIPES, "retnet-digits-stream", tiny_cfg)
    streaming._loaded.clear()
    yield str(tiny_fsdd(tmp_path / "fsdd.zip"))
    streaming._loaded.clear()


def test_the_recipe_trains_saves_and_reloads_a_checked_model(tiny_recipe, tmp_path):
    recipe = train_transcriber.Recipe(epochs=2, batch_size=4)
    card = train_transcriber.train_transcriber("retnet-digits-stream", tiny_recipe, "theo", recipe=recipe,
                                               bank_utterances=8)
    assert [h["epoch"] for h in card["history"]] == [1, 2]
    assert set(card["metrics"]) == {"der_speaker", "der_synthetic_voices"}
    assert all(0 <= v for v in card["metrics"].values())
    assert "FSDD clips of the speakers but 'theo'" in card["data"]
    assert streaming.list_transcribers() == ["retnet-digits-stream"]
    model = streaming.load_transcriber("retnet-digits-stream")
    assert model.config == registry.TRANSCRIBER_RECIPES["retnet-digits-stream"]()
    resumed = train_transcriber.train_transcriber("retnet-digits-stream", tiny_recipe, "theo", epochs=3,
                                                  recipe=recipe, bank_utterances=8, resume=True)
    assert resumed["history"][:2] == card["history"]  # not retrained
    weights = tmp_path / "transcribers" / "retnet-digits-stream" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    streaming._loaded.clear()
    with pytest.raises(ValueError, match="does not match"):
        streaming.load_transcriber("retnet-digits-stream")


def test_unknown_and_invalid_transcriber_ids_are_clear_errors(tiny_recipe):
    with pytest.raises(ValueError, match="unknown transcriber 'nope'"):
        streaming.load_transcriber("nope")
    with pytest.raises(ValueError, match="invalid transcriber id"):
        streaming.load_transcriber("../weights")
    assert json.dumps(streaming.list_transcribers()) == "[]"


def test_the_transcribe_command_streams_a_file_through_every_saved_transcriber(tmp_path, monkeypatch, capsys):
    import soundfile

    from effviz.__main__ import main

    monkeypatch.setattr(streaming, "TRANSCRIBERS_DIR", tmp_path / "transcribers")
    streaming._loaded.clear()
    card = tiny_card("tiny", "rwkv")
    model = tiny_model("rwkv-digits-stream", seed=3)
    train_transcriber.save_transcriber(model, card, tmp_path / "transcribers" / "tiny-rwkv")
    wave = np.random.default_rng(0).normal(0, 0.1, 3 * 44100).astype(np.float32)
    soundfile.write(tmp_path / "numbers.wav", wave, 44100)
    assert main(["transcribe", str(tmp_path / "numbers.wav"), "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    offline = streaming.transcribe_waveform(model, streaming.recording(tmp_path / "numbers.wav", None, model.config))
    assert result["model"] == "tiny-rwkv" and result["transcript"] == streaming.digits_text(offline)
    assert result["seconds"] == pytest.approx(3.0) and result["real_time_factor"] > 0 and result["state_bytes"] > 0
    assert main(["transcribe", str(tmp_path / "missing.wav")]) == 1
    assert main(["transcribe", str(tmp_path / "numbers.wav"), "--model", "nope"]) == 1
    assert "unknown transcriber 'nope'" in capsys.readouterr().err
    streaming._loaded.clear()


def test_the_command_line_passes_the_seed_and_the_fold(monkeypatch):
    calls = []
    monkeypatch.setattr(train_transcriber, "data_files", lambda folder: {"fsdd": f"{folder}/fsdd.zip"})
    monkeypatch.setattr(train_transcriber, "train_transcriber",
                        lambda *args, **kwargs: calls.append((args, kwargs)) or {"metrics": {}})
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    train_transcriber.main(["rwkv-digits-stream", "--data", "d", "--test-speaker", "george", "--seed", "1"])
    (args, kwargs), = calls
    assert args[:3] == ("rwkv-digits-stream", "d/fsdd.zip", "george") and kwargs["seed"] == 1
