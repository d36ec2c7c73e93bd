"""The DAT/DATM paper's language table (``dat_languages.json``, packaged beside this module) and dat configs built
from it."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.common.files import read_json

RESOURCE_DIR = Path(__file__).resolve().parent
DAT_TABLE_FILE = RESOURCE_DIR / "dat_languages.json"

__all__ = ["dat_table", "dat_config_names", "dat_language_groups", "dat_config"]


@lru_cache(maxsize=1)
def dat_table() -> dict[str, Any]:
    """The parsed, checked ``dat_languages.json``: ``pivot``, ``languages`` (code → name, script, family, subgroup,
    resource, group), ``groups`` (group → name, languages) and ``configs`` (name → languages [, groups])."""
    if not DAT_TABLE_FILE.is_file():
        raise FileNotFoundError(f"the DAT language table is missing: {DAT_TABLE_FILE}")
    data = read_json(DAT_TABLE_FILE)
    for key in ("pivot", "languages", "groups", "configs"):
        if key not in data:
            raise ValueError(f"{DAT_TABLE_FILE} lacks the key {key!r}")
    for group, entry in data["groups"].items():
        for code in entry["languages"]:
            if data["languages"].get(code, {}).get("group") != group:
                raise ValueError(f"{DAT_TABLE_FILE}: {code} is listed in {group} but its entry says otherwise")
    return data


def dat_config_names() -> list[str]:
    """Names of the packaged language configurations (``fifty``, ``six``, ``six-typology``)."""
    return list(dat_table()["configs"])


def dat_language_groups(config: str = "six", languages: Sequence[str] | None = None) -> dict[str, str]:
    """Language → En→XX group for the non-pivot languages of a packaged config (or of ``languages``, grouped by
    that config's grouping: the DAT paper's table unless the config brings its own groups)."""
    table = dat_table()
    if config not in table["configs"]:
        raise ValueError(f"unknown DAT config {config!r}; choose one of {', '.join(table['configs'])}")
    entry = table["configs"][config]
    languages = list(entry["languages"] if languages is None else languages)
    grouping = entry.get("groups") or {code: info["group"] for code, info in table["languages"].items()
                                       if "group" in info}
    unknown = [lang for lang in languages if lang != table["pivot"] and lang not in grouping]
    if unknown:
        raise ValueError(f"no group for language(s) {', '.join(unknown)} in DAT config {config!r}; "
                         f"known: {', '.join(sorted(grouping))}")
    return {lang: grouping[lang] for lang in languages if lang != table["pivot"]}


def dat_config(config: str = "six", languages: Sequence[str] | None = None, **overrides: Any):
    """``RoutedLoRAConfig(method="dat")`` with the languages and groups of a packaged config; ``overrides`` are
    further RoutedLoRAConfig fields (r, alpha, target_modules, ...)."""
    table = dat_table()
    groups = dat_language_groups(config, languages)
    langs = [table["pivot"]] + list(groups)
    return RoutedLoRAConfig(method="dat", languages=langs, pivot=table["pivot"], language_groups=groups, **overrides)
