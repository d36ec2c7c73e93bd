"""The DAT paper's 50-language / 8-group table shipped as data, and the dat configs built from it."""
import pytest

from lora_route.adapters.dat_languages import dat_config, dat_config_names, dat_language_groups, dat_table


def test_table_has_fifty_languages_in_eight_groups():
    table = dat_table()
    assert len(table["languages"]) == 50 and table["pivot"] == "en"
    sizes = {g: len(v["languages"]) for g, v in table["groups"].items()}
    assert sizes == {"group1": 7, "group2": 6, "group3": 5, "group4": 6, "group5": 6, "group6": 6, "group7": 5,
                     "group8": 8}
    assert table["languages"]["fr"]["group"] == "group4"  # as the paper's table has it
    assert table["languages"]["is"]["resource"] == "Low"
    assert set(dat_config_names()) == {"fifty", "six", "six-typology"}


def test_dat_configs_route_xx_en_per_language_and_en_xx_per_group():
    six = dat_config("six", r=8)
    assert six.r == 8 and six.method == "dat"
    assert six.routing_table["is-en"] == "xx_en.is" and six.routing_table["en-is"] == "en_xx.group1"
    assert six.routing_table["en-de"] == "en_xx.group1" and six.routing_table["en-zh"] == "en_xx.group6"
    assert len(six.dat_adapters) == 5 + 4
    assert len(dat_config("fifty").dat_adapters) == 49 + 8  # N_L + N_G (DAT paper, §4.2)
    typology = dat_config("six-typology")
    assert typology.routing_table["en-ru"] == typology.routing_table["en-cs"] == "en_xx.balto-slavic"
    assert dat_language_groups("fifty", ["en", "uk", "ky"]) == {"uk": "group3", "ky": "group8"}


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown DAT config"):
        dat_language_groups("seven")
    with pytest.raises(ValueError, match="no group for language"):
        dat_language_groups("six-typology", ["en", "fr"])
