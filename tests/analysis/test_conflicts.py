"""Conflict / synergy analysis: per-layer gradient cosines, strategy routing tables, the training comparison."""
import json

import pytest
import torch
from tiny_models import tiny_causal_lm
from train_helpers import tiny_tokenizer, toy_pairs

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.patch import apply_routed_lora
from lora_route.analysis.conflicts import (
    delta_matrices,
    gradient_conflicts,
    plot_delta_heatmaps,
    plot_gradient_heatmaps,
    run_strategy_comparison,
    strategy_config,
)


def _batch(seed, negate_labels=False):
    ids = torch.randint(3, 128, (2, 8), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_gradient_cosines_per_layer():
    model = apply_routed_lora(tiny_causal_lm("llama", layers=3),
                              RoutedLoRAConfig(method="lora", languages=["en", "de", "zh"], r=4, dropout=0.0))
    batches = {("en", "de"): [_batch(0)], ("de", "en"): [_batch(0)], ("en", "zh"): [_batch(1), _batch(2)]}
    result = gradient_conflicts(model, batches)
    assert result.layers == [0, 1, 2] and result.cosine.shape == (3, 3, 3)
    assert torch.allclose(result.cosine, result.cosine.transpose(1, 2))
    assert torch.allclose(result.cosine[:, 0, 1], torch.ones(3, dtype=torch.float64))  # identical data
    assert torch.allclose(result.overall.diagonal(), torch.ones(3, dtype=torch.float64))
    assert float(result.overall[0, 2]) < 1 - 1e-6
    assert all(p.grad is None for p in model.parameters())
    data = result.to_dict()
    assert data["directions"] == ["en-de", "de-en", "en-zh"] and set(data["cosine"]) == {"0", "1", "2"}


def test_gradients_need_shared_trainable_parameters():
    model = tiny_causal_lm("llama")
    full = gradient_conflicts(model, {("en", "de"): [_batch(0)], ("de", "en"): [_batch(1)]})
    assert full.layers == [0, 1]  # an unpatched, trainable model: all layer weights are the shared set
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="trainable"):
        gradient_conflicts(model, {("en", "de"): [_batch(0)]})


def test_strategy_routing_tables():
    directions = [("de", "en"), ("is", "en"), ("en", "de"), ("en", "zh"), ("de", "zh")]
    together = strategy_config("together", directions, r=2)
    assert {together.routing_table[f"{s}-{t}"] for s, t in directions} == {"shared"}
    separate = strategy_config("separate", directions)
    assert len({separate.routing_table[f"{s}-{t}"] for s, t in directions}) == 5
    grouped = strategy_config("grouped", directions)  # DAT paper groups: de, is -> group1; zh -> group6
    assert grouped.routing_table["de-en"] == grouped.routing_table["is-en"] == grouped.routing_table["en-de"]
    assert grouped.routing_table["en-zh"] == grouped.routing_table["de-zh"] == "group.group6"
    with pytest.raises(ValueError, match="unknown strategy"):
        strategy_config("mixed", directions)


def test_delta_matrix_signs():
    scores = {"separate": {"de-en": {"loss": 2.0, "bleu": 10.0}, "en-de": {"loss": 1.0, "bleu": 20.0}},
              "together": {"de-en": {"loss": 2.5, "bleu": 8.0}, "en-de": {"loss": 0.5, "bleu": 25.0}}}
    loss = delta_matrices(scores, ["en", "de"], "loss")["together"]
    assert loss["per_direction"] == {"de-en": -0.5, "en-de": 0.5}  # conflict on de-en, synergy on en-de
    assert loss["matrix"] == [[None, 0.5], [-0.5, None]]
    assert delta_matrices(scores, ["en", "de"], "bleu")["together"]["per_direction"] == {"de-en": -2.0,
                                                                                          "en-de": 5.0}


def test_strategy_comparison_end_to_end(tmp_path):
    from lora_route.train.config import TrainingSection

    tokenizer = tiny_tokenizer()
    directions = [("de", "en"), ("en", "de"), ("zh", "en"), ("en", "zh")]
    train = toy_pairs(directions, count=6)
    evaluation = toy_pairs(directions, count=2)
    settings = TrainingSection(max_steps=3, batch_size=4, lr=1e-2, warmup_ratio=0.0)
    result = run_strategy_comparison(lambda: tiny_causal_lm("gemma3"), tokenizer, train, evaluation, settings,
                                     tmp_path, adapter={"r": 2, "alpha": 4.0, "dropout": 0.0})
    assert set(result["scores"]) == {"together", "separate", "grouped"}
    assert result["training"]["together"]["adapters"] == 1 and result["training"]["separate"]["adapters"] == 4
    assert result["training"]["grouped"]["adapters"] == 2
    saved = json.loads((tmp_path / "conflicts.json").read_text())
    assert saved["delta"]["grouped"]["per_direction"].keys() == {"de-en", "en-de", "zh-en", "en-zh"}
    png = plot_delta_heatmaps(saved, tmp_path / "delta.png")
    assert png.stat().st_size > 0


def test_gradient_heatmap(tmp_path):
    model = apply_routed_lora(tiny_causal_lm("llama"),
                              RoutedLoRAConfig(method="lora", languages=["en", "de"], r=2, dropout=0.0))
    result = gradient_conflicts(model, {("en", "de"): [_batch(0)], ("de", "en"): [_batch(3)]})
    assert plot_gradient_heatmaps(result, tmp_path / "g.png").stat().st_size > 0
