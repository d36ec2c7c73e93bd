"""Parallel text: Flores+ (multi-way), OPUS-100 (English-centric) and local files.

Hub names load with ``datasets.load_dataset`` (needs the hub); a local folder in the hub's file layout, or a single
jsonl / json / tsv / csv / parquet file, or a ``save_to_disk`` folder loads offline with the same schema. JSON-lines,
JSON, TSV and CSV files are read with the standard library, so a malformed line is reported with its file and line
number; parquet files need ``pyarrow``, ``save_to_disk`` folders and hub names ``datasets``.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from lora_route.common.files import read_jsonl
from lora_route.common.languages import check_language, parse_direction
from lora_route.data.corpus import TranslationPair, check_split

# ISO 639-1 code -> Flores+ config (ISO 639-3 + script).
FLORES_CODES = {
    "en": "eng_Latn", "de": "deu_Latn", "zh": "cmn_Hans", "ru": "rus_Cyrl", "cs": "ces_Latn", "is": "isl_Latn",
    "fr": "fra_Latn", "es": "spa_Latn", "ja": "jpn_Jpan", "it": "ita_Latn", "pt": "por_Latn", "nl": "nld_Latn",
    "pl": "pol_Latn", "uk": "ukr_Cyrl", "ar": "arb_Arab", "ko": "kor_Hang", "tr": "tur_Latn", "sv": "swe_Latn",
}
_FLORES_SPLITS = {"train": "dev", "dev": "dev", "test": "devtest", "devtest": "devtest"}
_OPUS_SPLITS = {"train": "train", "dev": "validation", "validation": "validation", "test": "test"}
_LOCAL_SUFFIXES = (".jsonl", ".json", ".tsv", ".csv", ".parquet")


def _load_file(path: Path) -> list[dict]:
    """The rows of one local data file: JSON lines, a JSON array of objects, TSV / CSV with a header row, or parquet.
    ValueError naming the file (and line) for a malformed or empty file."""
    suffix = path.suffix.lower()
    if suffix not in _LOCAL_SUFFIXES:
        raise ValueError(f"unsupported data file {path}; expected one of {list(_LOCAL_SUFFIXES)}")
    if suffix == ".jsonl":
        rows = read_jsonl(path)
    elif suffix == ".json":
        rows = _json_rows(path)
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet
        except ImportError as err:
            raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from err
        rows = pyarrow.parquet.read_table(str(path)).to_pylist()
    else:
        rows = _delimited_rows(path, "\t" if suffix == ".tsv" else ",")
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


def _json_rows(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); JSON-lines files end in .jsonl") from None
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ValueError(f"{path} must hold a JSON array of objects (or use JSON lines in a .jsonl file)")
    return data


def _delimited_rows(path: Path, delimiter: str) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        rows = []
        for row in reader:
            if None in row or None in row.values():
                raise ValueError(f"{path}:{reader.line_num}: expected {len(reader.fieldnames)} fields "
                                 f"({', '.join(reader.fieldnames)}), got another number")
            rows.append(row)
    return rows


def _columns(table) -> set[str]:
    """Column names of a ``datasets.Dataset`` or of a list of row dicts."""
    return set(table.column_names) if hasattr(table, "column_names") else set().union(*(row.keys() for row in table))


def _local_split_file(root: Path, names: Sequence[str]) -> Path:
    for name in names:
        matches = sorted(root.glob(name))
        if matches:
            return matches[0]
    raise FileNotFoundError(f"no data file under {root} matching any of {list(names)}")


def _flores_rows(source: str, code: str, split: str) -> dict[str, str]:
    """``{sentence id: text}`` of one Flores+ language and split."""
    root = Path(source).expanduser()
    if root.is_dir():
        path = _local_split_file(root, [f"{split}/{code}.parquet", f"{split}/{code}.jsonl",
                                        f"{split}/*/{code}.parquet", f"{code}/{split}-*.parquet",
                                        f"{code}/{split}.jsonl"])
        table = _load_file(path)
    else:
        from datasets import load_dataset

        table = load_dataset(source, code, split=split)
    columns = _columns(table)
    column = "text" if "text" in columns else "sentence"
    if column not in columns or "id" not in columns:
        raise ValueError(f"Flores data for {code}/{split} needs columns 'id' and 'text', has {sorted(columns)}")
    return {str(row["id"]): row[column] for row in table}


def load_flores_plus(languages: Sequence[str], split: str, *, source: str = "openlanguagedata/flores_plus",
                     directions: Sequence[tuple[str, str]] | None = None) -> list[TranslationPair]:
    """Multi-way Flores+ pairs aligned by sentence id; ``split`` train/dev -> ``dev``, test -> ``devtest``."""
    if split not in _FLORES_SPLITS:
        raise ValueError(f"unknown Flores+ split {split!r}; expected one of {sorted(_FLORES_SPLITS)}")
    languages = [check_language(lang) for lang in languages]
    missing = [lang for lang in languages if lang not in FLORES_CODES]
    if missing:
        raise ValueError(f"no Flores+ code known for {missing}; known: {sorted(FLORES_CODES)}")
    directions = directions or [(s, t) for s in languages for t in languages if s != t]
    texts = {lang: _flores_rows(source, FLORES_CODES[lang], _FLORES_SPLITS[split]) for lang in languages}
    pairs = []
    for src, tgt in directions:
        if src not in texts or tgt not in texts:
            raise ValueError(f"direction {src}-{tgt} uses a language outside {languages}")
        for sid in sorted(texts[src].keys() & texts[tgt].keys(), key=lambda k: (len(k), k)):
            pairs.append(TranslationPair(src, tgt, texts[src][sid], texts[tgt][sid], f"flores_plus:{sid}"))
    return pairs


def opus100_config(a: str, b: str) -> str:
    """OPUS-100's configuration name of the language pair {a, b}: the two codes in alphabetical order (``"de-en"``)."""
    return "-".join(sorted((a, b)))


def load_opus100(pairs_of: Sequence[str], split: str, *, source: str = "Helsinki-NLP/opus-100",
                 both_directions: bool = True, limit: int | None = None) -> list[TranslationPair]:
    """OPUS-100 for language pairs such as ``["de-en", "en-zh"]`` (field ``translation`` = {lang: text}).

    ``split`` train/dev/test maps to OPUS's train/validation/test; each pair yields both directions unless
    ``both_directions`` is False (then only the order given). ``limit`` keeps the first N rows per pair.
    """
    if split not in _OPUS_SPLITS:
        raise ValueError(f"unknown OPUS-100 split {split!r}; expected one of {sorted(_OPUS_SPLITS)}")
    out = []
    for name in pairs_of:
        a, b = parse_direction(name)
        config = opus100_config(a, b)
        root = Path(source).expanduser()
        if root.is_dir():
            split_name = _OPUS_SPLITS[split]
            table = _load_file(_local_split_file(root, [f"{config}/{split_name}-*.parquet",
                                                        f"{config}/{split_name}.jsonl"]))
        else:
            from datasets import load_dataset

            table = load_dataset(source, config, split=_OPUS_SPLITS[split])
        if "translation" not in _columns(table):
            raise ValueError(f"OPUS-100 data for {config} needs a 'translation' column, has {sorted(_columns(table))}")
        rows = table if limit is None else [table[i] for i in range(min(limit, len(table)))]
        for i, row in enumerate(rows):
            record = row["translation"]
            if not record.get(a, "").strip() or not record.get(b, "").strip():
                continue
            out.append(TranslationPair(a, b, record[a], record[b], f"opus-100:{config}:{i}"))
            if both_directions:
                out.append(TranslationPair(b, a, record[b], record[a], f"opus-100:{config}:{i}"))
    return out


def load_local_pairs(path: str | Path, *, src_lang: str | None = None, tgt_lang: str | None = None,
                     split: str | None = None) -> list[TranslationPair]:
    """Pairs from a local jsonl / tsv / csv / parquet file or a ``save_to_disk`` folder.

    Accepted schemas: columns ``src_lang, tgt_lang, src, tgt[, origin]``; or ``src, tgt`` with ``src_lang`` /
    ``tgt_lang`` given; or an OPUS-style ``translation`` dict column with both languages given. For a
    ``DatasetDict`` folder, ``split`` picks the split (train/dev/test; dev also matches ``validation``).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"parallel data {path} does not exist")
    if path.is_dir():
        from datasets import DatasetDict, load_from_disk

        table = load_from_disk(str(path))
        if isinstance(table, DatasetDict):
            if split is None:
                raise ValueError(f"{path} holds splits {list(table)}; pass split=")
            check_split(split)
            name = split if split in table else _OPUS_SPLITS.get(split)
            if name not in table:
                raise ValueError(f"{path} has no split {split!r} (has {list(table)})")
            table = table[name]
    else:
        table = _load_file(path)
    columns = _columns(table)
    if {"src_lang", "tgt_lang", "src", "tgt"} <= columns:
        def pair(row, i):
            return TranslationPair(row["src_lang"], row["tgt_lang"], row["src"], row["tgt"],
                                   row.get("origin") or f"{path.name}:{i}")
    else:
        if src_lang is None or tgt_lang is None:
            raise ValueError(f"{path} has columns {sorted(columns)}; without src_lang/tgt_lang columns pass "
                             "src_lang= and tgt_lang=")
        check_language(src_lang)
        check_language(tgt_lang)
        if {"src", "tgt"} <= columns:
            def pair(row, i):
                return TranslationPair(src_lang, tgt_lang, row["src"], row["tgt"], f"{path.name}:{i}")
        elif "translation" in columns:
            def pair(row, i):
                return TranslationPair(src_lang, tgt_lang, row["translation"][src_lang],
                                       row["translation"][tgt_lang], f"{path.name}:{i}")
        else:
            raise ValueError(f"{path} needs columns src/tgt, src_lang/tgt_lang/src/tgt or translation; "
                             f"has {sorted(columns)}")
    pairs = []
    for i, row in enumerate(table, 1):
        try:
            pairs.append(pair(row, i))
        except (KeyError, TypeError, ValueError) as err:
            detail = f"lacks {err}" if isinstance(err, KeyError) else str(err)
            raise ValueError(f"{path}: row {i}: {detail}") from None
    return pairs
