"""The papers' prompt template."""
import pytest

from lora_route.data.prompts import DEFAULT_TEMPLATE, format_prompt


def test_default_template_matches_the_papers():
    assert format_prompt("Hallo Welt", "de", "zh") == (
        "Translate the following German sentences into Chinese:\nHallo Welt\n")
    assert DEFAULT_TEMPLATE.startswith("Translate the following {src_name} sentences into {tgt_name}:")


def test_custom_templates_and_errors():
    assert format_prompt("x", "en", "is", "[{src}->{tgt}] {source} =") == "[en->is] x ="
    with pytest.raises(ValueError, match="no \\{source\\}"):
        format_prompt("x", "en", "de", "Translate into {tgt_name}:")
    with pytest.raises(ValueError, match="unknown field"):
        format_prompt("x", "en", "de", "{lang}: {source}")
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        format_prompt("x", "xx", "de")
    with pytest.raises(ValueError, match="must be a string"):
        format_prompt(None, "en", "de")
