"""Direction sets, per-direction caps and replay sampling."""
import pytest

from lora_route.data.corpus import TranslationPair
from lora_route.data.sampling import directions_for, replay_sample, sample_per_direction

LANGS = ["en", "de", "zh"]


def corpus(n=30):
    return [TranslationPair(s, t, f"{s} text {i}", f"{t} text {i}") for s in LANGS for t in LANGS if s != t
            for i in range(n)]


def test_direction_sets():
    assert directions_for("en_centric", LANGS) == [("en", "de"), ("en", "zh"), ("de", "en"), ("zh", "en")]
    assert directions_for("non_english", LANGS) == [("de", "zh"), ("zh", "de")]
    assert directions_for("x_to_en", LANGS) == [("de", "en"), ("zh", "en")]
    assert len(directions_for("all", LANGS)) == 6
    assert directions_for(["de-zh", ("en", "de")], LANGS) == [("de", "zh"), ("en", "de")]
    with pytest.raises(ValueError, match="outside"):
        directions_for(["de-fr"], LANGS)
    with pytest.raises(ValueError, match="unknown direction set"):
        directions_for("everything", LANGS)
    with pytest.raises(ValueError, match="pivot"):
        directions_for("en_centric", ["de", "zh"])


def test_caps_are_seeded_and_stratified():
    pairs = corpus()
    a = sample_per_direction(pairs, directions_for("en_centric", LANGS), cap=10, seed=1)
    b = sample_per_direction(pairs, directions_for("en_centric", LANGS), cap=10, seed=1)
    c = sample_per_direction(pairs, directions_for("en_centric", LANGS), cap=10, seed=2)
    assert a == b and a != c and len(a) == 40
    assert {p.direction for p in a} == set(directions_for("en_centric", LANGS))
    assert len(sample_per_direction(pairs, [("de", "zh")], cap=None, seed=0)) == 30
    with pytest.raises(ValueError, match="no training pairs"):
        sample_per_direction(pairs[:5], [("de", "zh")], cap=3, seed=0)
    with pytest.raises(ValueError, match="cap"):
        sample_per_direction(pairs, [("de", "zh")], cap=0, seed=0)


def test_replay_fraction_per_direction():
    stage1 = sample_per_direction(corpus(40), directions_for("en_centric", LANGS), cap=40, seed=0)
    replay = replay_sample(stage1, 0.05, seed=0)
    assert len(replay) == 4 * 2 and set(replay) <= set(stage1)
    assert {p.direction for p in replay} == {p.direction for p in stage1}
    assert replay_sample(stage1, 0.0, seed=0) == []
    assert sorted(replay_sample(stage1, 1.0, seed=0), key=str) == sorted(stage1, key=str)
    with pytest.raises(ValueError):
        replay_sample(stage1, 1.5, seed=0)
