"""Every language the shipped routing tables use has a name for the prompt template."""
import json
from importlib import resources

from lora_route.common.languages import LANGUAGE_NAMES
from lora_route.data.prompts import format_prompt


def test_every_dat_table_language_can_be_prompted():
    table = json.loads(resources.files("lora_route.adapters").joinpath("dat_languages.json").read_text())
    for code, entry in table["languages"].items():
        assert LANGUAGE_NAMES.get(code) == entry["name"], code
        assert entry["name"] in format_prompt("x", code, "en")
