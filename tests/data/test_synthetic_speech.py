"""The synthetic voices and words: training and test share no voice variant and no word, and
synthesis (espeak-ng, which CI installs) gives cut 8 kHz clips that are cached."""
from __future__ import annotations

import shutil

import pytest

from effviz.data import synthetic_speech as tts


def variant(voice: tts.Voice) -> str:
    return voice.name.split("+")[1] if "+" in voice.name else "default"


def test_training_and_test_voices_share_no_voice_variant():
    test_variants = {variant(v) for v in tts.TEST_VOICES}
    assert test_variants == {"default", "f2", "f3", "f4", "m5"}
    espeak = [v for v in tts.TRAIN_VOICES if v.engine == "espeak-ng"]
    assert len(espeak) == 48 and len(set(espeak)) == 48
    assert not {variant(v) for v in espeak} & test_variants
    assert {v.engine for v in tts.TRAIN_VOICES} == {"espeak-ng", "flite", "festival"}


def test_words_are_disjoint_and_never_a_digit():
    train, test = set(tts.TRAIN_WORDS), set(tts.TEST_WORDS)
    assert len(train) == len(tts.TRAIN_WORDS) and len(test) == len(tts.TEST_WORDS)
    assert not train & test
    sounds_like_a_digit = {*tts.DIGIT_WORDS, "won", "to", "too", "for", "four", "fore", "ate", "oh", "nein"}
    assert not (train | test) & sounds_like_a_digit


def test_training_corpus_is_the_digits_in_every_voice_and_each_word_twice():
    pairs = []
    original = tts.synthesize_pairs
    try:
        tts.synthesize_pairs = lambda p: pairs.extend(p) or []
        tts.training_utterances()
    finally:
        tts.synthesize_pairs = original
    digits = [(w, v) for w, v in pairs if w in tts.DIGIT_WORDS]
    assert len(digits) == 10 * len(tts.TRAIN_VOICES)
    words = [w for w, _ in pairs if w not in tts.DIGIT_WORDS]
    assert sorted(set(words)) == sorted(tts.TRAIN_WORDS) and len(words) == 2 * len(tts.TRAIN_WORDS)
    assert all(v in tts.TRAIN_VOICES for _, v in pairs)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs Debian's espeak-ng (.ci/run installs it)")
def test_espeak_words_come_cut_at_8_khz_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFVIZ_CACHE", str(tmp_path))
    voices = [tts.Voice("espeak-ng", "en-us+m3", pitch=40, speed=150), tts.TEST_VOICES[0]]
    first = tts.synthesize(["seven", "apple"], voices)
    assert [(u.word, u.digit) for u in first] == [("seven", 7), ("apple", None)] * 2
    for u in first:
        seconds = u.waveform.shape[0] / tts.RATE
        assert 0.2 < seconds < 1.0  # the spoken part only: espeak-ng pads each word with silence
        assert u.waveform[:200].abs().max() > 1e-2 * u.waveform.abs().max()  # sound in the first 25 ms
    assert len(list(tmp_path.rglob("tts-*.npz"))) == 1
    again = tts.synthesize(["seven", "apple"], voices)
    assert all(a.waveform.equal(b.waveform) and a.voice == b.voice for a, b in zip(first, again))


def test_a_missing_synthesiser_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFVIZ_CACHE", str(tmp_path))
    monkeypatch.setattr(tts.shutil, "which", lambda program: None)
    with pytest.raises(RuntimeError, match="apt install flite"):
        tts.synthesize(["one"], [tts.Voice("flite", "slt")])
