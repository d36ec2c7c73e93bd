"""Test sets by name: the gettext catalogs' test split, Flores+ devtest, OPUS-100 test, the papers' protocol (OPUS-100
for English-centric directions, Flores+ for the others) or a local file, sampled per direction."""
from __future__ import annotations

from typing import Sequence

from lora_route.common.languages import direction_key
from lora_route.data.corpus import TranslationPair
from lora_route.data.gettext_corpus import load_gettext_corpus
from lora_route.data.loaders import load_flores_plus, load_local_pairs, load_opus100, opus100_config
from lora_route.data.sampling import directions_for, sample_per_direction

TEST_SOURCES = ("gettext", "flores_plus", "opus100", "papers", "local")


def load_test_pairs(source: str, languages: Sequence[str], *, directions: Sequence[tuple[str, str]] | None = None,
                    path: str | None = None, per_direction: int | None = None, seed: int = 0
                    ) -> list[TranslationPair]:
    """Test pairs of ``directions`` (default every ordered pair of ``languages``), at most ``per_direction`` each."""
    if source not in TEST_SOURCES:
        raise ValueError(f"unknown test source {source!r}; choose one of {TEST_SOURCES}")
    wanted = list(directions) if directions else directions_for("en_centric" if source == "opus100" else "all",
                                                                 languages)
    hub = {"source": path} if path else {}
    if source == "gettext":
        pairs = load_gettext_corpus(languages, "test", [path] if path else None, directions=wanted)
    elif source == "flores_plus":
        pairs = load_flores_plus(languages, "test", directions=wanted, **hub)
    elif source == "opus100":
        pairs = [p for p in load_opus100(sorted({opus100_config(*d) for d in wanted if "en" in d}), "test", **hub)
                 if p.direction in wanted]
    elif source == "papers":
        english = [d for d in wanted if "en" in d]
        others = [d for d in wanted if "en" not in d]
        pairs = [p for p in load_opus100(sorted({opus100_config(*d) for d in english}), "test") if p.direction
                 in english] if english else []
        pairs += load_flores_plus(languages, "test", directions=others) if others else []
    else:
        if not path:
            raise ValueError("--test local needs --test-path FILE")
        pairs = [p for p in load_local_pairs(path, split="test") if p.direction in wanted]
    present = {p.direction for p in pairs}
    missing = [direction_key(s, t) for s, t in wanted if (s, t) not in present]
    if missing:
        raise ValueError(f"test source {source!r} has no pairs for {missing}; choose --directions it covers")
    return sample_per_direction(pairs, wanted, per_direction, seed)
