"""Paired bootstrap resampling per group: sacreBLEU's own test on one direction, macro averages over several."""
import random

import pytest
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from lora_route.eval.outputs import TranslationOutput
from lora_route.eval.significance import comparison_table, paired_bootstrap

WORDS = "the cat sat on a mat while dog and bird sang over green hills near old towns".split()


def _outputs(direction, count, noise, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        ref = " ".join(rng.choice(WORDS) for _ in range(8))
        words = ref.split()
        hyp = " ".join(w if rng.random() > noise else rng.choice(WORDS) for w in words)
        rows.append(TranslationOutput(direction[0], direction[1], f"source {i}", ref, hyp))
    return rows


def _systems(directions, count=40):
    system, baseline = [], []
    for k, direction in enumerate(directions):
        good = _outputs(direction, count, 0.1, seed=k)
        bad = _outputs(direction, count, 0.5, seed=k)
        system += good
        baseline += [TranslationOutput(g.src_lang, g.tgt_lang, g.src, g.ref, b.hyp) for g, b in zip(good, bad)]
    return system, baseline


def test_one_direction_is_sacrebleus_paired_bootstrap_exactly():
    system, baseline = _systems([("de", "en")])
    ours = {c.metric: c for c in paired_bootstrap(system, baseline, {"all": [("de", "en")]})}
    refs = [[o.ref for o in system]]
    test = PairedTest([("baseline", [o.hyp for o in baseline]), ("system", [o.hyp for o in system])],
                      {"BLEU": BLEU(tokenize="13a"), "chrF2++": CHRF(word_order=2)}, refs, test_type="bs",
                      n_samples=1000)
    _, scores = test()
    for metric, key in (("bleu", "BLEU"), ("chrf", "chrF2++")):
        baseline_result, system_result = scores[key]
        assert ours[metric].system == pytest.approx(system_result.score)
        assert ours[metric].baseline == pytest.approx(baseline_result.score)
        assert ours[metric].p_value == pytest.approx(system_result.p_value)
    assert ours["bleu"].significant and ours["bleu"].delta_low > 0


def test_groups_average_their_directions_and_equal_systems_are_not_significant():
    directions = [("de", "en"), ("en", "de"), ("de", "zh")]
    system, baseline = _systems(directions, count=30)
    groups = {"en_centric": directions[:2], "non_english": directions[2:], "zero_shot": []}
    rows = paired_bootstrap(system, baseline, groups)
    assert {(r.group, r.metric) for r in rows} == {(g, m) for g in ("en_centric", "non_english")
                                                  for m in ("bleu", "chrf")}
    single = {r.metric: r for r in paired_bootstrap(system, baseline, {"x": [directions[0]]})}
    other = {r.metric: r for r in paired_bootstrap(system, baseline, {"x": [directions[1]]})}
    en_centric = {r.metric: r for r in rows if r.group == "en_centric"}
    for metric in ("bleu", "chrf"):
        assert en_centric[metric].system == pytest.approx((single[metric].system + other[metric].system) / 2)
    same = paired_bootstrap(system, system, groups)
    assert all(r.delta == 0 and not r.significant and r.p_value > 0.5 for r in same)
    table = comparison_table({"unilora": rows}, "lora")
    assert "| unilora | en_centric | 2 |" in table and "p=" in table


def test_unpaired_outputs_are_refused():
    system, baseline = _systems([("de", "en")], count=5)
    shuffled = list(reversed(baseline))
    with pytest.raises(ValueError, match="not of the same sentences in the same order"):
        paired_bootstrap(system, shuffled, {"all": [("de", "en")]})
    with pytest.raises(ValueError, match="not evaluated"):
        paired_bootstrap(system, baseline, {"all": [("en", "zh")]})
