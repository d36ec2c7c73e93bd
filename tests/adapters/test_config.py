"""Adapter families as configs: validation, JSON round trip, bank sizes and the static language router."""
import json

import pytest
import torch

from lora_route.adapters.config import METHODS, RoutedLoRAConfig
from lora_route.adapters.routing import LanguageRouter, expand_to_rows, expert_map_from_groups, shared_expert_map
from lora_route.common.languages import LANGUAGE_NAMES, language_name

LANGS = ["en", "de", "zh", "ru", "cs", "is"]


def test_language_names_cover_the_papers_languages():
    assert language_name("zh") == "Chinese"
    assert [LANGUAGE_NAMES[c] for c in LANGS] == ["English", "German", "Chinese", "Russian", "Czech", "Icelandic"]
    with pytest.raises(ValueError, match="xx"):
        language_name("xx")


@pytest.mark.parametrize("method", METHODS)
def test_config_round_trips_through_json(method):
    config = RoutedLoRAConfig(method, LANGS, r=8, alpha=16, target_modules=r".*mlp\.(gate|up)_proj")
    again = RoutedLoRAConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.layer_spec(0) == config.layer_spec(0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="nope"), "unknown method"),
    (dict(r=0), "r must be a positive integer"),
    (dict(alpha=-1), "alpha"),
    (dict(dropout=1.0), "dropout"),
    (dict(languages=["en", "en"]), "more than once"),
    (dict(languages="en"), "non-empty list"),
    (dict(languages=["English"]), "ISO 639"),
    (dict(target_modules="("), "does not compile"),
    (dict(layers=[-1]), "layers"),
    (dict(src_expert={"en": 0}), "missing"),
    (dict(tgt_expert={"en": 0, "de": 2, "zh": 2, "ru": 0, "cs": 0, "is": 0}), "without gaps"),
])
def test_config_rejects_bad_values(kwargs, message):
    values = dict(method="crosslora", languages=LANGS) | kwargs
    with pytest.raises(ValueError, match=message):
        RoutedLoRAConfig(**values)


def test_method_specific_validation():
    with pytest.raises(ValueError, match="top_k"):
        RoutedLoRAConfig("molora_topk", LANGS, num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="direction"):
        RoutedLoRAConfig("molora_static", LANGS, directions=[("en", "fr")])
    with pytest.raises(ValueError, match="pivot"):
        RoutedLoRAConfig("dat", ["de", "zh"])
    with pytest.raises(ValueError, match="language group"):
        RoutedLoRAConfig("dat", ["en", "ja"])
    with pytest.raises(ValueError, match="routing_table key"):
        RoutedLoRAConfig("dat", LANGS, routing_table={"de_zh": "en_xx.sino-tibetan"})


def test_layer_specs_per_method():
    groups = expert_map_from_groups(LANGS)
    assert groups == {"en": 0, "de": 0, "zh": 1, "ru": 2, "cs": 2, "is": 0}
    assert RoutedLoRAConfig("lora", LANGS).layer_spec(0) == (1, 1, False, (0,), 0)
    assert RoutedLoRAConfig("molora_static", LANGS).layer_spec(0).n_a == 30
    assert RoutedLoRAConfig("molora_topk", LANGS, top_k=2).layer_spec(0).router_experts == 6
    assert RoutedLoRAConfig("crosslora", LANGS).layer_spec(0)[:3] == (6, 6, False)
    grouped = RoutedLoRAConfig("unilora", LANGS, src_expert=groups, tgt_expert=groups)
    assert grouped.layer_spec(0)[:3] == (3, 3, True)
    shared = RoutedLoRAConfig("crosslora", LANGS, src_expert=shared_expert_map(LANGS))
    assert shared.layer_spec(0)[:2] == (1, 6)
    mlas = RoutedLoRAConfig("mlas", LANGS, directions=[("en", "de"), ("de", "en")], specific_layers=[1])
    assert mlas.layer_spec(0)[:4] == (1, 1, False, (0,))
    assert mlas.layer_spec(1)[:4] == (3, 3, False, (0, 1))
    dat = RoutedLoRAConfig("dat", LANGS)
    # 5 XX→En adapters (one per source language) + 3 En→XX adapters (germanic, sino-tibetan, balto-slavic)
    assert dat.layer_spec(0).n_a == 8
    assert dat.dat_adapters[:5] == [f"xx_en.{lang}" for lang in LANGS[1:]]


def test_router_indices_per_method():
    src, tgt = ["de", "zh", "en"], ["en", "de", "cs"]
    cross = LanguageRouter(RoutedLoRAConfig("unilora", LANGS)).indices(src, tgt)
    assert len(cross) == 1
    assert cross[0].a_idx.tolist() == [1, 2, 0] and cross[0].b_idx.tolist() == [0, 1, 4]
    assert cross[0].u_idx.tolist() == [0, 0, 0]
    static_config = RoutedLoRAConfig("molora_static", LANGS)
    static = LanguageRouter(static_config).indices(src, tgt)[0]
    expected = [static_config.directions.index(pair) for pair in zip(src, tgt)]
    assert static.a_idx.tolist() == expected == static.b_idx.tolist()
    mlas = LanguageRouter(RoutedLoRAConfig("mlas", LANGS)).indices(src, tgt)
    assert mlas[0].a_idx.tolist() == [0, 0, 0] and mlas[1].a_idx.tolist() == [e + 1 for e in expected]
    assert LanguageRouter(RoutedLoRAConfig("molora_topk", LANGS)).indices(src, tgt) == ()
    dat_config = RoutedLoRAConfig("dat", LANGS)
    dat = LanguageRouter(dat_config).indices(["de", "en", "en"], ["en", "is", "ru"])[0]
    names = dat_config.dat_adapters
    assert [names[i] for i in dat.a_idx.tolist()] == ["xx_en.de", "en_xx.germanic", "en_xx.balto-slavic"]


def test_router_rejects_unknown_languages_and_undefined_directions():
    router = LanguageRouter(RoutedLoRAConfig("crosslora", LANGS))
    with pytest.raises(ValueError, match="'fr'"):
        router.indices(["fr"], ["en"])
    with pytest.raises(ValueError, match="2 languages but tgt has 1"):
        router.indices(["de", "en"], ["en"])
    with pytest.raises(ValueError, match="list of language codes"):
        router.indices("de", "en")
    dat = LanguageRouter(RoutedLoRAConfig("dat", LANGS))
    with pytest.raises(ValueError, match="de-zh"):
        dat.indices(["de"], ["zh"])
    extended = LanguageRouter(RoutedLoRAConfig("dat", LANGS, routing_table={"de-zh": "en_xx.sino-tibetan"}))
    assert extended.indices(["de"], ["zh"])[0].a_idx.tolist() == extended.indices(["en"], ["zh"])[0].a_idx.tolist()
    static = LanguageRouter(RoutedLoRAConfig("molora_static", LANGS, directions=[("en", "de")]))
    with pytest.raises(ValueError, match="de-en has no expert"):
        static.indices(["de"], ["en"])


def test_expand_to_rows_repeats_for_beams_and_rejects_other_mismatches():
    indices = LanguageRouter(RoutedLoRAConfig("crosslora", LANGS)).indices(["de", "zh"], ["en", "ru"])[0]
    rows = expand_to_rows(indices, num_sequences=4, seq_len=3)
    assert rows.a_idx.tolist() == [1] * 6 + [2] * 6
    assert rows.b_idx.tolist() == [0] * 6 + [3] * 6
    with pytest.raises(ValueError, match="3 sequences but route\\(\\) was given 2"):
        expand_to_rows(indices, num_sequences=3, seq_len=1)


def test_adapter_index_keys():
    mlas = RoutedLoRAConfig("mlas", LANGS)
    assert mlas.adapter_index("general") == 0
    assert mlas.adapter_index("de-en") == 1 + mlas.directions.index(("de", "en"))
    with pytest.raises(ValueError, match="no adapter named"):
        mlas.adapter_index("xx")
    dat = RoutedLoRAConfig("dat", LANGS)
    assert dat.adapter_index("en_xx.germanic") == dat.adapter_index("en-de")
    assert torch.tensor(0).dtype == torch.int64
