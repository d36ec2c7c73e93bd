"""The papers' translation prompt (UniLoRA / CrossLoRA, after Hendy et al. 2023).

``"Translate the following {src_name} sentences into {tgt_name}:\\n{source}\\n"`` — the model continues with the
translation; no loss is computed on the prompt. Templates are plain ``str.format`` strings with the fields
``{src_name}``, ``{tgt_name}`` (English language names), ``{src}``, ``{tgt}`` (ISO codes) and ``{source}``.
"""
from __future__ import annotations

import string

from lora_route.common.languages import language_name

DEFAULT_TEMPLATE = "Translate the following {src_name} sentences into {tgt_name}:\n{source}\n"
TEMPLATE_FIELDS = ("src_name", "tgt_name", "src", "tgt", "source")


def check_template(template: str) -> None:
    """ValueError unless ``template`` is a format string using only :data:`TEMPLATE_FIELDS`, ``{source}`` included."""
    if not isinstance(template, str):
        raise ValueError(f"template must be a string, got {type(template).__name__}")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ValueError(f"template {template!r} is not a valid format string: {err}") from None
    unknown = sorted(names - set(TEMPLATE_FIELDS))
    if unknown:
        raise ValueError(f"template uses unknown field(s) {unknown}; allowed: {', '.join(TEMPLATE_FIELDS)}")
    if "source" not in names:
        raise ValueError("template has no {source} field for the sentence to translate")


def format_prompt(source: str, src_lang: str, tgt_lang: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The prompt asking to translate ``source`` from ``src_lang`` into ``tgt_lang`` (ISO codes)."""
    if not isinstance(source, str):
        raise ValueError(f"source must be a string, got {type(source).__name__}")
    check_template(template)
    return template.format(src_name=language_name(src_lang), tgt_name=language_name(tgt_lang), src=src_lang,
                           tgt=tgt_lang, source=source)
