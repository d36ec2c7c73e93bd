"""Flores+ / OPUS-100 / local loaders on small local files written in the hubs' schema (no network)."""
import pytest
from datasets import Dataset, DatasetDict

from lora_route.data.corpus import TranslationPair, write_pairs_jsonl
from lora_route.data.loaders import load_flores_plus, load_local_pairs, load_opus100

FLORES = {"eng_Latn": ["The cat sleeps.", "It rains today.", "Books are good."],
          "deu_Latn": ["Die Katze schläft.", "Heute regnet es.", "Bücher sind gut."],
          "cmn_Hans": ["猫在睡觉。", "今天下雨。", "书很好。"]}


@pytest.fixture()
def flores_dir(tmp_path):
    for split in ("dev", "devtest"):
        for code, texts in FLORES.items():
            rows = {"id": list(range(len(texts))), "iso_639_3": [code[:3]] * len(texts),
                    "iso_15924": [code[4:]] * len(texts), "text": texts}
            if code == "cmn_Hans":  # one sentence missing: alignment by id must skip it
                rows = {k: v[:2] for k, v in rows.items()}
            (tmp_path / split).mkdir(exist_ok=True)
            Dataset.from_dict(rows).to_parquet(str(tmp_path / split / f"{code}.parquet"))
    return tmp_path


def test_flores_plus_multiway(flores_dir):
    pairs = load_flores_plus(["en", "de", "zh"], "dev", source=str(flores_dir))
    counts = {}
    for p in pairs:
        counts[p.direction] = counts.get(p.direction, 0) + 1
    assert counts[("en", "de")] == 3 and counts[("de", "zh")] == 2 and len(counts) == 6
    assert TranslationPair("de", "zh", "Heute regnet es.", "今天下雨。", "flores_plus:1") in pairs
    test = load_flores_plus(["en", "de"], "test", source=str(flores_dir), directions=[("de", "en")])
    assert [p.tgt for p in test] == FLORES["eng_Latn"]
    with pytest.raises(ValueError, match="no Flores"):
        load_flores_plus(["en", "xx"], "dev", source=str(flores_dir))
    with pytest.raises(ValueError, match="split"):
        load_flores_plus(["en", "de"], "validation2", source=str(flores_dir))


def test_opus100_local_layout(tmp_path):
    rows = {"translation": [{"de": "Hallo Welt", "en": "Hello world"}, {"de": "Danke", "en": "Thanks"},
                            {"de": "", "en": "empty German side is skipped"}]}
    (tmp_path / "de-en").mkdir()
    Dataset.from_dict(rows).to_parquet(str(tmp_path / "de-en" / "validation-00000-of-00001.parquet"))
    pairs = load_opus100(["en-de"], "dev", source=str(tmp_path))
    assert len(pairs) == 4
    assert pairs[0] == TranslationPair("en", "de", "Hello world", "Hallo Welt", "opus-100:de-en:0")
    assert pairs[1].direction == ("de", "en")
    assert len(load_opus100(["de-en"], "dev", source=str(tmp_path), both_directions=False, limit=1)) == 1
    with pytest.raises(FileNotFoundError):
        load_opus100(["cs-en"], "dev", source=str(tmp_path))


def test_local_jsonl_tsv_parquet_and_disk(tmp_path):
    pairs = [TranslationPair("en", "de", "Good morning", "Guten Morgen", "pseudo"),
             TranslationPair("de", "zh", "Guten Morgen", "早上好", "pseudo")]
    jsonl = write_pairs_jsonl(pairs, tmp_path / "p.jsonl")
    assert load_local_pairs(jsonl) == pairs
    tsv = tmp_path / "p.tsv"
    tsv.write_text("src\ttgt\nGood morning\tGuten Morgen\nThank you\tDanke\n")
    loaded = load_local_pairs(tsv, src_lang="en", tgt_lang="de")
    assert [(p.src, p.tgt) for p in loaded] == [("Good morning", "Guten Morgen"), ("Thank you", "Danke")]
    with pytest.raises(ValueError, match="src_lang"):
        load_local_pairs(tsv)
    Dataset.from_dict({"translation": [{"en": "Yes", "de": "Ja"}]}).to_parquet(str(tmp_path / "t.parquet"))
    assert load_local_pairs(tmp_path / "t.parquet", src_lang="de", tgt_lang="en")[0].src == "Ja"
    DatasetDict({"train": Dataset.from_dict({"src_lang": ["en"], "tgt_lang": ["de"], "src": ["No"], "tgt": ["Nein"]}),
                 "validation": Dataset.from_dict({"src_lang": ["en"], "tgt_lang": ["de"], "src": ["Hi"],
                                                  "tgt": ["Hallo"]})}).save_to_disk(str(tmp_path / "disk"))
    assert load_local_pairs(tmp_path / "disk", split="dev")[0].tgt == "Hallo"
    with pytest.raises(ValueError, match="split"):
        load_local_pairs(tmp_path / "disk")
    with pytest.raises(FileNotFoundError):
        load_local_pairs(tmp_path / "missing.jsonl")
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(ValueError, match="unsupported"):
        load_local_pairs(tmp_path / "x.txt")


def test_local_files_report_the_file_and_line_of_a_bad_row(tmp_path):
    """A malformed JSONL line or an empty file used to surface as a datasets / pyarrow error without a line."""
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"src_lang": "en", "tgt_lang": "de", "src": "Hello", "tgt": "Hallo"}\n{"src_lang": "en", oops\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: not valid JSON"):
        load_local_pairs(jsonl)
    jsonl.write_text('{"src_lang": "en", "tgt_lang": "de", "src": "Hello", "tgt": "Hallo"}\n'
                     '{"src_lang": "en", "tgt_lang": "de", "src": "Bye"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl: row 2: lacks 'tgt'"):
        load_local_pairs(jsonl)
    jsonl.write_text('{"src_lang": "en", "tgt_lang": "xx-!", "src": "Hello", "tgt": "Hallo"}\n')
    with pytest.raises(ValueError, match=r"row 1: tgt_lang 'xx-!' is not a language code"):
        load_local_pairs(jsonl)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl holds no rows"):
        load_local_pairs(empty)
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("src\ttgt\nHello\tHallo\nBye\tTschüss\textra\n")
    with pytest.raises(ValueError, match=r"pairs.tsv:3: expected 2 fields"):
        load_local_pairs(tsv, src_lang="en", tgt_lang="de")
    tsv.write_text("src\ttgt\nHello\tHallo\n")
    assert load_local_pairs(tsv, src_lang="en", tgt_lang="de") == [TranslationPair("en", "de", "Hello", "Hallo",
                                                                                   "pairs.tsv:1")]
