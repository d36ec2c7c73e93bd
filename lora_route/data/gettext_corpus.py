"""Multi-way parallel text from gettext catalogs (``<dir>/<locale>/LC_MESSAGES/*.mo``) aligned through the English msgid.

Every Debian machine carries human translations of its programs' messages. Each English ``msgid`` with its
translations is one multi-way aligned sentence set: ``en-de`` pairs come from the German catalogs directly, and
``de-zh`` pairs from messages translated into both. Cleaning removes markup, not language: keyboard accelerators
(``_File``, ``C_onnect``, ``&Open``, ``~Save``, ``(_O)``), surrounding whitespace and trailing newlines, message
contexts, plural entries, empty and untranslated entries. Format specifiers (``%s``, ``{name}``, ``$(ARG)``) are kept
(a good system copies them). The same English message found in several catalogs is kept once (the most common
translation wins, ties go to the alphabetically first catalog); the catalog name is each pair's ``origin``. Splits
come from a hash of the English message, so no message (in any language) is in two splits. Compiled ``.mo`` files
contain no fuzzy entries (``msgfmt`` drops them unless ``--use-fuzzy``), so nothing fuzzy reaches the corpus.
"""
from __future__ import annotations

import functools
import gettext
import logging
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lora_route.common.languages import check_language
from lora_route.data.corpus import TranslationPair, check_split, hash_split

logger = logging.getLogger(__name__)

DEFAULT_LOCALE_DIRS = ("/usr/share/locale",)
# Locale folder names tried for a language code, in order (first existing wins); other codes map to themselves.
LOCALE_ALIASES: dict[str, tuple[str, ...]] = {
    "zh": ("zh_CN", "zh-CN", "zh_Hans"),
    "pt": ("pt", "pt_PT"),
    "nb": ("nb", "nb_NO", "no"),
}
# Debian packages whose catalogs make up the corpus (for the message printed when a language is thin).
CATALOG_PACKAGES = (
    "iso-codes", "libc-l10n", "libglib2.0-data", "libgtk2.0-common", "libgdk-pixbuf2.0-common", "xkb-data",
    "gsettings-desktop-schemas", "at-spi2-common", "shared-mime-info", "libpam-runtime", "gnupg-l10n", "git",
    "apt", "dpkg", "gettext", "coreutils", "bash", "tar", "sed", "grep", "findutils", "diffutils", "wget",
    "make", "binutils-common", "man-db", "systemd", "packagekit", "appstream", "psmisc", "procps", "login",
    "adduser", "xz-utils", "krb5-locales", "libgstreamer1.0-0", "postgresql-client-15",
)
_MIN_WORDS_RE = re.compile(r"[^\W\d_]{2,}")
_PAREN_ACCEL_RE = re.compile(r"\s*[(（][_&~][^\W_][)）]")
_ENTITY_RE = re.compile(r"&(?:[A-Za-z]+|#\d+|#x[0-9A-Fa-f]+);")


def _accelerator_positions(text: str, mark: str) -> list[int]:
    """Indices of ``mark`` characters that act as keyboard accelerators (before a letter, inside a word or at its
    start, never doubled, not inside identifiers such as ``pam_set_item``, ``GIT_DIR`` or ``ai_flags``)."""
    positions = []
    for match in re.finditer(r"\S+", text):
        token, start = match.group(), match.start()
        if token.count(mark) != 1:
            continue
        i = token.index(mark)
        after = token[i + 1: i + 2]
        if not after or not after.isalpha():
            continue
        head = token[:i].lstrip("(\"'«„“[")
        tail = re.sub(r"[\W\d]+$", "", token[i + 1:])
        if mark == "&" and _ENTITY_RE.match(token, i):
            continue
        if not head:
            ok = tail.isalpha()  # "_Open", "_öffnen", "_Домен" (a word, not "_(" or "_2")
        else:
            ok = head.isalpha() and (head[0].isupper() or not head[0].islower()) and head[1:] == head[1:].lower() \
                and tail.isalpha() and tail == tail.lower()  # "C_onnect", "Sa&ve"
        if ok:
            positions.append(start + i)
    return positions


def clean_message(text: str) -> str:
    """Remove accelerator marks and surrounding whitespace; keep everything else (format specifiers included)."""
    if not isinstance(text, str):
        raise TypeError(f"message must be str, got {type(text).__name__}")
    text = _PAREN_ACCEL_RE.sub("", text)
    for mark in ("_", "&", "~"):
        positions = _accelerator_positions(text, mark)
        if len(positions) == 1:
            text = text[: positions[0]] + text[positions[0] + 1:]
    text = text.replace("&&", "&")
    return text.strip()


def read_catalog(path: str | Path) -> dict[str, str]:
    """Singular messages of one ``.mo`` file, cleaned: ``{english: translation}`` (contexts dropped, plurals,
    the header and empty or untranslated entries skipped). Raises ValueError for an unreadable catalog."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gettext catalog {path} does not exist")
    try:
        with path.open("rb") as handle:
            translations = gettext.GNUTranslations(handle)
    except (OSError, UnicodeDecodeError, IndexError, ValueError) as err:
        raise ValueError(f"cannot read gettext catalog {path}: {err}") from err
    messages: dict[str, str] = {}
    # GNUTranslations keeps the parsed catalog in ``_catalog``: str keys are singular messages ("ctx\x04id" with
    # a context), (msgid, n) tuples are plural forms, "" is the header.
    for key, value in translations._catalog.items():
        if not isinstance(key, str) or not key:
            continue
        english = clean_message(key.split("\x04", 1)[-1])
        translated = clean_message(value)
        if english and translated and translated != english:
            messages.setdefault(english, translated)
    return messages


def locale_folder(root: Path, language: str, aliases: Mapping[str, Sequence[str]]) -> Path | None:
    """``root/<locale>/LC_MESSAGES`` for a language code, or None if the folder is absent."""
    for name in aliases.get(language, (language,)):
        folder = root / name / "LC_MESSAGES"
        if folder.is_dir():
            return folder
    return None


@dataclass(frozen=True)
class MultiwayCatalog:
    """English message -> {language: (translation, catalog name)}, plus what was skipped while reading."""

    messages: dict[str, dict[str, tuple[str, str]]]
    skipped_files: tuple[str, ...]

    def counts(self) -> dict[str, int]:
        """Messages translated per language."""
        counter: Counter[str] = Counter()
        for translations in self.messages.values():
            counter.update(translations.keys())
        return dict(sorted(counter.items()))


@functools.lru_cache(maxsize=8)
def _build_multiway(languages: tuple[str, ...], locale_dirs: tuple[str, ...], aliases: tuple, min_chars: int,
                    max_chars: int) -> MultiwayCatalog:
    alias_map = dict(aliases)
    candidates: dict[str, dict[str, Counter]] = {}  # english -> lang -> Counter[(translation, catalog)]
    skipped = []
    for language in languages:
        if language == "en":
            continue
        for root in locale_dirs:
            folder = locale_folder(Path(root), language, alias_map)
            if folder is None:
                continue
            for mo_file in sorted(folder.glob("*.mo")):
                try:
                    catalog = read_catalog(mo_file)
                except ValueError as err:
                    skipped.append(str(mo_file))
                    logger.warning("skipping %s", err)
                    continue
                for english, translated in catalog.items():
                    if not (min_chars <= len(english) <= max_chars) or len(_MIN_WORDS_RE.findall(english)) < 2:
                        continue
                    per_lang = candidates.setdefault(english, {}).setdefault(language, Counter())
                    per_lang[(translated, mo_file.stem)] += 1
    messages: dict[str, dict[str, tuple[str, str]]] = {}
    for english, per_lang in candidates.items():
        chosen = {}
        for language, options in per_lang.items():
            by_text: Counter[str] = Counter()
            first_catalog: dict[str, str] = {}
            for (text, catalog), count in sorted(options.items(), key=lambda item: item[0][1]):
                by_text[text] += count
                first_catalog.setdefault(text, catalog)
            best = min(by_text, key=lambda t: (-by_text[t], first_catalog[t], t))
            chosen[language] = (best, first_catalog[best])
        messages[english] = chosen
    return MultiwayCatalog(messages=messages, skipped_files=tuple(skipped))


def load_multiway_catalog(languages: Sequence[str], locale_dirs: Sequence[str | Path] | None = None, *,
                          locale_aliases: Mapping[str, Sequence[str]] | None = None, min_chars: int = 16,
                          max_chars: int = 300) -> MultiwayCatalog:
    """All catalogs of ``languages`` under ``locale_dirs`` merged into one multi-way table (cached per arguments)."""
    languages = tuple(sorted({check_language(lang) for lang in languages}))
    dirs = tuple(str(Path(d)) for d in (DEFAULT_LOCALE_DIRS if locale_dirs is None else locale_dirs))
    for folder in dirs:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"locale folder {folder} does not exist")
    if not 0 <= min_chars <= max_chars:
        raise ValueError(f"need 0 <= min_chars <= max_chars, got {min_chars}, {max_chars}")
    aliases = {**LOCALE_ALIASES, **(locale_aliases or {})}
    return _build_multiway(languages, dirs, tuple(sorted((k, tuple(v)) for k, v in aliases.items())), min_chars,
                           max_chars)


def load_gettext_corpus(languages: Sequence[str], split: str, locale_dirs: Sequence[str | Path] | None = None, *,
                        directions: Sequence[tuple[str, str]] | None = None, dev_fraction: float = 0.05,
                        test_fraction: float = 0.05, min_chars: int = 16, max_chars: int = 300,
                        locale_aliases: Mapping[str, Sequence[str]] | None = None, min_pairs: int = 1000,
                        salt: str = "lora_route") -> list[TranslationPair]:
    """Pairs of one split for ``directions`` (default: every ordered pair of ``languages``).

    English text is the cleaned msgid; a language with fewer than ``min_pairs`` messages triggers a warning that
    names the Debian packages to install. Pairs come sorted by direction, then by English message.
    """
    check_split(split)
    languages = sorted({check_language(lang) for lang in languages})
    if len(languages) < 2:
        raise ValueError(f"need at least two languages, got {languages}")
    if directions is None:
        directions = [(s, t) for s in languages for t in languages if s != t]
    for src, tgt in directions:
        if src not in languages or tgt not in languages:
            raise ValueError(f"direction {src}-{tgt} uses a language outside {languages}")
    table = load_multiway_catalog(languages, locale_dirs, locale_aliases=locale_aliases, min_chars=min_chars,
                                  max_chars=max_chars)
    counts = table.counts()
    for language in languages:
        if language != "en" and counts.get(language, 0) < min_pairs:
            warnings.warn(
                f"gettext corpus: only {counts.get(language, 0)} messages for {language!r} under "
                f"{list(locale_dirs or DEFAULT_LOCALE_DIRS)}; install the Debian catalogs "
                f"(apt-get install {' '.join(CATALOG_PACKAGES)}) or pass locale_dirs with more catalogs",
                stacklevel=2,
            )
    pairs = []
    for english in sorted(table.messages):
        if hash_split(english, dev_fraction, test_fraction, salt) != split:
            continue
        texts = {lang: value for lang, value in table.messages[english].items()}
        texts["en"] = (english, "")
        for src, tgt in directions:
            if src not in texts or tgt not in texts:
                continue
            (src_text, src_origin), (tgt_text, tgt_origin) = texts[src], texts[tgt]
            if src_text == tgt_text:
                continue
            origin = "+".join(dict.fromkeys(o for o in (src_origin, tgt_origin) if o))
            pairs.append(TranslationPair(src, tgt, src_text, tgt_text, origin))
    pairs.sort(key=lambda p: (p.src_lang, p.tgt_lang))
    return pairs
