"""Pivot pseudo-corpus: filters on crafted bad pairs, pivot generation order, corpus files."""
import json

import pytest

from lora_route.data.corpus import TranslationPair
from lora_route.eval.langid import LanguageIdentifier
from lora_route.train.pseudo import (
    FILTERS,
    PseudoCandidate,
    build_pseudo_corpus,
    filter_candidates,
    generate_candidates,
    has_repetition,
    length_ratio,
    pivot_sources,
    text_length,
)

DE = "Die Datei konnte nicht geöffnet werden, weil sie nicht existiert."
EN = "The file could not be opened because it does not exist."
ZH = "无法打开该文件，因为它不存在。"
RU = "Не удалось открыть файл, так как он не существует."


def _cand(src_lang="de", tgt_lang="zh", src=DE, pivot=EN, tgt=ZH):
    return PseudoCandidate(src_lang, tgt_lang, src, pivot, tgt, "catalog.mo")


def test_each_filter_removes_its_crafted_bad_pair():
    bad = {
        "empty": _cand(tgt="   "),
        "copy": _cand(tgt=DE.upper()),                               # source copied (case/space-insensitive)
        "repetition": _cand(tgt="无法打开文件文件文件文件文件文件。"),
        "length_ratio": _cand(tgt="文件。"),                            # 10 words vs 3 characters
        "source_language": _cand(src="Nelze otevřít soubor, protože neexistuje na disku.", tgt=ZH),
        "pivot_language": _cand(pivot="Datei konnte nicht geöffnet werden, sie existiert nicht."),
        "target_language": _cand(tgt="ファイルが存在しないため、開くことができませんでした。"),  # ja, not zh
    }
    good = _cand()
    candidates = [good] + list(bad.values()) + [_cand(src=DE + " ", tgt=ZH + " ")]   # last: duplicate of good
    kept, report = filter_candidates(candidates, LanguageIdentifier())
    assert kept == [TranslationPair("de", "zh", DE, ZH, "pseudo-pivot:catalog.mo")]
    assert report.removed == {name: 1 for name in FILTERS}
    assert (report.total, report.kept, report.kept_per_direction) == (9, 1, {"de-zh": 1})
    for name, cand in bad.items():       # each bad pair alone is removed by exactly its filter
        _, single = filter_candidates([cand], LanguageIdentifier())
        assert single.removed[name] == 1 and single.kept == 0, name
    assert "| **kept** | 1 of 9 |" in report.markdown()


def test_copy_of_pivot_and_language_id_optional():
    _, report = filter_candidates([_cand(tgt=EN)], None)
    assert report.removed["copy"] == 1
    ja = "ファイルが存在しないため、開くことができませんでした。"
    kept, report = filter_candidates([_cand(tgt=ja)], None)      # off-target, but no language ID requested
    assert len(kept) == 1 and report.removed["target_language"] == 0


def test_length_and_repetition_helpers():
    assert text_length(ZH, "zh") == 15 and text_length(DE, "de") == 10
    assert length_ratio(DE, "de", ZH, "zh") == pytest.approx(1.5)
    assert length_ratio("a", "en", "", "de") == float("inf")
    assert has_repetition("the file the file the file the file")
    assert has_repetition("Datei Datei Datei")
    assert not has_repetition("Datei Datei")
    assert not has_repetition("Bitte warten ... die Datei wird geladen ...")
    assert not has_repetition(DE)
    with pytest.raises(ValueError):
        has_repetition("x", times=1)
    with pytest.raises(ValueError, match="max_length_ratio"):
        filter_candidates([], None, max_length_ratio=0.5)
    with pytest.raises(TypeError):
        filter_candidates([("de", "zh")], None)


def test_pivot_sources():
    pairs = [TranslationPair("en", "de", EN, DE, "a.mo"), TranslationPair("zh", "en", ZH, EN, "b.mo"),
             TranslationPair("de", "en", DE, EN, "c.mo")]
    assert pivot_sources(pairs) == [("de", DE, "a.mo"), ("zh", ZH, "b.mo")]
    with pytest.raises(ValueError, match="en-centric"):
        pivot_sources([TranslationPair("de", "zh", DE, ZH)])


class _WordTokenizer:
    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [t.split() for t in texts]}


def _dictionary_translate(model, tokenizer, sentences, src, tgt, **kwargs):
    table = {("de", "en", DE): EN, ("zh", "en", ZH): EN, ("ru", "en", RU): "",
             ("en", "zh", EN): ZH, ("en", "de", EN): DE, ("en", "ru", EN): RU}
    return [table[(s, t, x)] for x, s, t in zip(sentences, src, tgt)]


def test_generate_candidates_through_pivot():
    sources = [("de", DE, "a.mo"), ("zh", ZH, "b.mo"), ("ru", RU, "c.mo")]
    cands = generate_candidates(None, _WordTokenizer(), sources, ["en", "de", "zh", "ru"], progress=False,
                                translate_fn=_dictionary_translate)
    directions = [(c.src_lang, c.tgt_lang) for c in cands]
    assert directions == [("de", "zh"), ("de", "ru"), ("zh", "de"), ("zh", "ru"), ("ru", "de"), ("ru", "zh")]
    assert cands[0] == PseudoCandidate("de", "zh", DE, EN, ZH, "a.mo")
    assert cands[4].pivot == "" and cands[4].tgt == ""          # an empty pivot is not decoded further
    with pytest.raises(ValueError, match="non-pivot language"):
        generate_candidates(None, _WordTokenizer(), [("en", EN, "")], ["en", "de"], translate_fn=_dictionary_translate)
    with pytest.raises(ValueError, match="pivot language"):
        generate_candidates(None, _WordTokenizer(), sources, ["de", "zh"], translate_fn=_dictionary_translate)


def test_build_pseudo_corpus_files(tmp_path):
    sources = [("de", DE, "a.mo"), ("zh", ZH, "b.mo"), ("ru", RU, "c.mo")]
    out = tmp_path / "pseudo" / "stage2.jsonl"
    pairs, report = build_pseudo_corpus(None, _WordTokenizer(), sources, ["en", "de", "zh", "ru"], out,
                                        identifier=LanguageIdentifier(), progress=False,
                                        translate_fn=_dictionary_translate)
    assert report.total == 6 and report.removed["empty"] == 2 and report.kept == 4
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [TranslationPair(**r) for r in lines] == pairs
    assert set(lines[0]) == {"src_lang", "tgt_lang", "src", "tgt", "origin"}
    assert json.loads((tmp_path / "pseudo" / "stage2.report.json").read_text())["kept"] == 4
    assert len((tmp_path / "pseudo" / "stage2.candidates.jsonl").read_text().splitlines()) == 6


def test_sample_sources_excludes_and_caps():
    from lora_route.train.pseudo import sample_sources

    sources = [("de", f"Satz {i}", "a") for i in range(10)] + [("zh", f"句子{i}", "b") for i in range(3)]
    picked = sample_sources(sources, 4, seed=0, exclude={"Satz 0", "Satz 1"})
    assert [s for s in picked if s[0] == "zh"] == sources[10:]
    german = [s for s in picked if s[0] == "de"]
    assert len(german) == 4 and not {"Satz 0", "Satz 1"} & {s[1] for s in german}
    assert german == sorted(german, key=sources.index)                      # original order kept
    assert sample_sources(sources, 4, seed=0, exclude={"Satz 0", "Satz 1"}) == picked
    assert sample_sources(sources, None, seed=0) == sources
    with pytest.raises(ValueError):
        sample_sources(sources, 0, seed=0)
