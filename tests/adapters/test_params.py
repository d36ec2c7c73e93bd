"""Parameter accounting, and the papers' trainable shares for Llama-3-8B (built on the meta device)."""
import json

import pytest
from tiny_models import tiny_causal_lm
from torch import nn

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.paper_table import MUST_MATCH_TOLERANCE
from lora_route.adapters.params import count_parameters
from lora_route.adapters.patch import apply_routed_lora
from lora_route.cli import build_parser


def test_count_matches_the_bank_shapes():
    model = tiny_causal_lm("gemma3")
    frozen = count_parameters(model).total
    config = RoutedLoRAConfig("unilora", ["en", "de", "zh"], r=4, r_uni=8,
                              src_expert={"en": 0, "de": 0, "zh": 1})
    apply_routed_lora(model, config)
    count = count_parameters(model)
    # per layer: gate/up (32 -> 64) and down (64 -> 32); 2 A experts, 3 B experts, UniCore 2·r·r_uni per module
    per_layer = 2 * (2 * 4 * 32 + 3 * 64 * 4) + (2 * 4 * 64 + 3 * 32 * 4) + 3 * 2 * 4 * 8
    assert count.trainable == 2 * per_layer
    assert count.frozen == frozen
    assert count.share_percent == pytest.approx(100 * count.trainable / (frozen + count.trainable))
    with pytest.raises(ValueError, match="no parameters"):
        count_parameters(nn.Sequential())
    with pytest.raises(TypeError):
        count_parameters("model")


def test_paper_table_from_the_cli():
    args = build_parser("params").parse_args(["params", "--json"])
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        status = args.func(args)
    rows = {row["name"]: row for row in json.loads(out.getvalue())}
    assert status == 0
    must = {name: row for name, row in rows.items() if row["must_match"]}
    assert set(must) == {"UniLoRA, 6 experts", "UniLoRA, 3 group experts", "CrossLoRA, 6 experts",
                         "CrossLoRA, 3 group experts"}
    for name, paper in (("UniLoRA, 6 experts", 2.12), ("UniLoRA, 3 group experts", 1.10),
                        ("CrossLoRA, 6 experts", 2.08), ("CrossLoRA, 3 group experts", 1.06)):
        assert rows[name]["paper_percent"] == paper
        assert abs(rows[name]["share_percent"] - paper) <= MUST_MATCH_TOLERANCE, (name, rows[name])
    assert all(row["total"] - row["trainable"] == 8_030_261_248 for row in rows.values())  # Llama-3-8B
    lora = next(row for name, row in rows.items() if name.startswith("LoRA, r="))
    assert abs(lora["trainable"] - rows["UniLoRA, 6 experts"]["trainable"]) < 1_769_472  # one rank step
