"""Language codes and directions: ISO 639-1 names as the prompt writes them, the papers' typology groups, and the
one way a direction is written (``"src-tgt"``) and read back."""
from __future__ import annotations

import re
from collections.abc import Sequence

# ISO 639-1 code (zh: Mandarin Chinese, simplified script) -> English name, as the prompt template writes it.
LANGUAGE_NAMES: dict[str, str] = {
    "af": "Afrikaans", "ar": "Arabic", "az": "Azerbaijani", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan",
    "cs": "Czech", "cy": "Welsh", "da": "Danish", "de": "German", "el": "Greek", "en": "English", "es": "Spanish",
    "et": "Estonian", "eu": "Basque", "fa": "Persian", "fi": "Finnish", "fr": "French", "ga": "Irish",
    "gl": "Galician", "gu": "Gujarati", "ha": "Hausa", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian",
    "hu": "Hungarian", "hy": "Armenian", "id": "Indonesian", "is": "Icelandic", "it": "Italian", "ja": "Japanese",
    "ka": "Georgian", "kk": "Kazakh", "km": "Khmer", "ko": "Korean", "ky": "Kyrgyz", "lt": "Lithuanian",
    "lv": "Latvian", "mg": "Malagasy", "mk": "Macedonian", "ml": "Malayalam", "mn": "Mongolian", "mr": "Marathi",
    "ms": "Malay", "mt": "Maltese", "my": "Burmese", "ne": "Nepali", "nl": "Dutch", "no": "Norwegian", "pl": "Polish",
    "ps": "Pashto", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "si": "Sinhala", "sk": "Slovak",
    "sl": "Slovenian", "sq": "Albanian", "sr": "Serbian", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil",
    "te": "Telugu", "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek",
    "vi": "Vietnamese", "xh": "Xhosa", "yo": "Yoruba", "zh": "Chinese", "zu": "Zulu",
}

# Typology groups of the papers' six languages (UniLoRA Table 4 / CrossLoRA Table 4), used for grouped experts
# and DAT's En→XX groups when no explicit grouping is given.
TYPOLOGY_GROUPS: dict[str, str] = {
    "en": "germanic", "de": "germanic", "is": "germanic", "nl": "germanic", "sv": "germanic", "da": "germanic",
    "no": "germanic", "cs": "balto-slavic", "ru": "balto-slavic", "pl": "balto-slavic", "uk": "balto-slavic",
    "bg": "balto-slavic", "sk": "balto-slavic", "lt": "balto-slavic", "lv": "balto-slavic",
    "zh": "sino-tibetan", "my": "sino-tibetan", "fr": "romance", "es": "romance", "it": "romance",
    "pt": "romance", "ro": "romance", "ca": "romance",
}

_LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(?:[_-][A-Za-z0-9]{2,8})*$")


def language_name(code: str) -> str:
    """English name of an ISO 639-1 code; ValueError for an unknown code."""
    try:
        return LANGUAGE_NAMES[code]
    except (KeyError, TypeError):
        raise ValueError(f"unknown language code {code!r}; known codes: {', '.join(sorted(LANGUAGE_NAMES))}") from None


def check_language(code: object, what: str = "language") -> str:
    """Return ``code`` if it looks like an ISO 639 code (``de``, ``zh``, ``pt_BR``), else raise ValueError."""
    if not isinstance(code, str) or not _LANGUAGE_CODE.match(code):
        raise ValueError(f"{what} {code!r} is not a language code such as 'de', 'zh' or 'pt_BR'")
    return code


def direction_key(src: str, tgt: str) -> str:
    """``"src-tgt"``: how directions are written in configs, routing tables, reports and export folders."""
    return f"{src}-{tgt}"


def parse_direction(text: str | Sequence[str]) -> tuple[str, str]:
    """``"de-en"`` / ``"de->en"`` / ``"de→en"`` / ``("de", "en")`` -> ``("de", "en")``; ValueError otherwise."""
    if isinstance(text, str):
        parts = text.strip().replace("->", "-").replace("→", "-").split("-")
        if len(parts) != 2:
            raise ValueError(f"direction {text!r} must look like 'de-en' (source-target)")
    elif isinstance(text, Sequence):
        parts = list(text)
        if len(parts) != 2:
            raise ValueError(f"direction {text!r} must have exactly two languages")
    else:
        raise ValueError(f"direction {text!r} must be a 'src-tgt' string or a (src, tgt) pair")
    src, tgt = (check_language(p.strip() if isinstance(p, str) else p, "direction language") for p in parts)
    if src == tgt:
        raise ValueError(f"direction {text!r} has the same source and target language")
    return src, tgt
