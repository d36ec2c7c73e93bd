"""gettext corpus: .mo reading, accelerator cleaning, multi-way alignment, dedupe, hash splits (small catalogs)."""
import struct
import warnings

import pytest

from lora_route.common.languages import parse_direction
from lora_route.data.corpus import TranslationPair, hash_split
from lora_route.data.gettext_corpus import clean_message, load_gettext_corpus, load_multiway_catalog, read_catalog


def write_mo(path, messages, charset="UTF-8"):
    """A GNU .mo file from {msgid: msgstr} (msgid may be a (singular, plural) tuple with a list of forms)."""
    entries = {"": f"Content-Type: text/plain; charset={charset}\nPlural-Forms: nplurals=2; plural=(n != 1);\n"}
    for key, value in messages.items():
        if isinstance(key, tuple):
            entries["\x00".join(key)] = "\x00".join(value)
        else:
            entries[key] = value
    keys = sorted(entries)
    ids = b"".join(k.encode() + b"\x00" for k in keys)
    strs = b"".join(entries[k].encode() + b"\x00" for k in keys)
    n = len(keys)
    start = 7 * 4 + 16 * n
    offsets, pos = [], 0
    for k in keys:
        offsets.append((len(k.encode()), start + pos))
        pos += len(k.encode()) + 1
    str_offsets, pos = [], 0
    for k in keys:
        str_offsets.append((len(entries[k].encode()), start + len(ids) + pos))
        pos += len(entries[k].encode()) + 1
    header = struct.pack("<7I", 0x950412DE, 0, n, 7 * 4, 7 * 4 + 8 * n, 0, 0)
    body = b"".join(struct.pack("<2I", *o) for o in offsets) + b"".join(struct.pack("<2I", *o) for o in str_offsets)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + body + ids + strs)


MESSAGES = {
    "de": {
        "_Open the selected file": "Die ausgewählte Datei _öffnen",
        "Cannot open file %s for reading\n": "Datei %s kann nicht zum Lesen geöffnet werden\n",
        "Only in German catalog here": "Nur im deutschen Katalog hier",
        "Same text in both languages": "Same text in both languages",
        ("%d file was removed", "%d files were removed"): ["%d Datei wurde entfernt", "%d Dateien wurden entfernt"],
        "ctx\x04Context message of the program": "Kontextnachricht des Programms",
    },
    "zh_CN": {
        "_Open the selected file": "打开所选文件(_O)",
        "Cannot open file %s for reading\n": "无法打开文件 %s 进行读取\n",
        "Only in Chinese catalog here": "这里只在中文目录中",
    },
}


@pytest.fixture()
def locale_root(tmp_path):
    for locale, messages in MESSAGES.items():
        write_mo(tmp_path / locale / "LC_MESSAGES" / "demo.mo", messages)
    # the same English message in a second catalog with another translation: the first catalog's wins on ties
    write_mo(tmp_path / "de" / "LC_MESSAGES" / "zother.mo", {"Only in German catalog here": "Anders übersetzt hier"})
    return tmp_path


@pytest.mark.parametrize("text, expected", [
    ("C_onnect to server", "Connect to server"), ("_Cancel", "Cancel"), ("&Open file", "Open file"),
    ("Sa&ve as", "Save as"), ("打开(_O)", "打开"), ("~Save document", "Save document"),
    ("pam_set_item() failed", "pam_set_item() failed"), ("GIT_DIR not set", "GIT_DIR not set"),
    ("ai_flags not supported", "ai_flags not supported"), ("Audio & Video", "Audio & Video"),
    ("R&&D dept", "R&D dept"), ("Use &amp; here", "Use &amp; here"), ("Value %s\n", "Value %s"),
    ("{name} and %1$s stay", "{name} and %1$s stay"),
])
def test_clean_message(text, expected):
    assert clean_message(text) == expected


def test_read_catalog_skips_plurals_header_identical_and_strips_context(locale_root):
    catalog = read_catalog(locale_root / "de" / "LC_MESSAGES" / "demo.mo")
    assert catalog["Open the selected file"] == "Die ausgewählte Datei öffnen"
    assert catalog["Cannot open file %s for reading"] == "Datei %s kann nicht zum Lesen geöffnet werden"
    assert catalog["Context message of the program"] == "Kontextnachricht des Programms"
    assert "Same text in both languages" not in catalog
    assert not any("removed" in key for key in catalog)


def test_read_catalog_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_catalog(tmp_path / "missing.mo")
    bad = tmp_path / "bad.mo"
    bad.write_bytes(b"not a catalog at all")
    with pytest.raises(ValueError, match="cannot read gettext catalog"):
        read_catalog(bad)


def test_multiway_alignment_and_dedupe(locale_root):
    table = load_multiway_catalog(["en", "de", "zh"], [locale_root], min_chars=5)
    assert table.counts() == {"de": 4, "zh": 3}
    assert table.messages["Only in German catalog here"]["de"] == ("Nur im deutschen Katalog hier", "demo")
    pairs = load_gettext_corpus(["en", "de", "zh"], "train", [locale_root], min_chars=5, dev_fraction=0.0,
                                test_fraction=0.0, min_pairs=0)
    by_dir = {}
    for p in pairs:
        by_dir.setdefault(p.direction, []).append(p)
    assert {d: len(v) for d, v in by_dir.items()} == {
        ("de", "en"): 4, ("en", "de"): 4, ("en", "zh"): 3, ("zh", "en"): 3, ("de", "zh"): 2, ("zh", "de"): 2}
    dezh = {p.src: p.tgt for p in by_dir[("de", "zh")]}
    assert dezh["Datei %s kann nicht zum Lesen geöffnet werden"] == "无法打开文件 %s 进行读取"
    assert all(p.origin == "demo" for p in by_dir[("de", "zh")])


def test_hash_split_is_disjoint_and_deterministic(locale_root):
    splits = {s: load_gettext_corpus(["en", "de"], s, [locale_root], min_chars=5, dev_fraction=0.3,
                                     test_fraction=0.3, min_pairs=0) for s in ("train", "dev", "test")}
    english = {s: {p.src if p.src_lang == "en" else p.tgt for p in v} for s, v in splits.items()}
    assert sum(len(v) for v in english.values()) == 4
    assert not (english["train"] & english["dev"]) and not (english["dev"] & english["test"])
    assert hash_split("some message", 0.3, 0.3) == hash_split("some message", 0.3, 0.3)
    buckets = [hash_split(f"message {i}", 0.1, 0.2) for i in range(4000)]
    assert 0.07 < buckets.count("dev") / 4000 < 0.13 and 0.17 < buckets.count("test") / 4000 < 0.23


def test_thin_language_warns_and_bad_input_raises(locale_root):
    with pytest.warns(UserWarning, match="only 3 messages for 'zh'"):
        load_gettext_corpus(["en", "zh"], "train", [locale_root], min_chars=5, min_pairs=10)
    with pytest.raises(ValueError, match="unknown split"):
        load_gettext_corpus(["en", "de"], "validation", [locale_root])
    with pytest.raises(FileNotFoundError):
        load_gettext_corpus(["en", "de"], "train", [locale_root / "nope"])
    with pytest.raises(ValueError, match="language"):
        load_gettext_corpus(["en", "German!"], "train", [locale_root])
    with pytest.raises(ValueError, match="outside"):
        load_gettext_corpus(["en", "de"], "train", [locale_root], directions=[("en", "fr")])


def test_translation_pair_and_direction_validation():
    with pytest.raises(ValueError, match="both"):
        TranslationPair("en", "en", "a", "b")
    with pytest.raises(ValueError, match="empty"):
        TranslationPair("en", "de", "a", "  ")
    with pytest.raises(ValueError):
        TranslationPair("EN!", "de", "a", "b")
    assert parse_direction("de-en") == ("de", "en") == parse_direction("de->en") == parse_direction(("de", "en"))
    with pytest.raises(ValueError):
        parse_direction("de")


def test_system_catalogs_give_pairs_when_present():
    """On a Debian machine with the catalog packages installed the default corpus is non-trivial."""
    import pathlib

    if not any(pathlib.Path("/usr/share/locale/de/LC_MESSAGES").glob("*.mo")):
        pytest.skip("no German gettext catalogs on this machine (scripts/install_catalogs.sh installs them)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pairs = load_gettext_corpus(["en", "de"], "dev", directions=[("en", "de")])
    assert len(pairs) > 100
    assert all(p.src_lang == "en" and p.tgt_lang == "de" and p.src != p.tgt for p in pairs)
