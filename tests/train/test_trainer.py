"""Batch plans, schedules, gradient accumulation, load balancing and a falling loss on a tiny model."""
import math

import pytest
import torch
from train_helpers import tiny_setup, toy_pairs

from lora_route.data.collate import encode_pairs
from lora_route.train.config import TrainingSection
from lora_route.train.distributed import setup_distributed
from lora_route.train.trainer import Trainer, epoch_micro_batches, lr_lambda

DIRECTIONS = [("en", "de"), ("de", "en"), ("en", "zh"), ("zh", "en")]


def build(tmp_path, method="crosslora", dropout=0.0, **settings):
    model, tok = tiny_setup(method=method, dropout=dropout)
    examples = encode_pairs(toy_pairs(DIRECTIONS, 8), tok, max_length=200).examples
    options = dict(epochs=1.0, batch_size=8, lr=1e-2, warmup_ratio=0.0, scheduler="constant")
    options.update(settings)
    trainer = Trainer(model, examples, examples[:8], TrainingSection(**options), pad_token_id=tok.pad_token_id,
                      output_dir=tmp_path, seed=0, fingerprint="t", ctx=setup_distributed("cpu"), progress=False)
    return trainer, examples


def test_micro_batches_mixed_and_grouped():
    _, tok = tiny_setup()
    examples = encode_pairs(toy_pairs(DIRECTIONS, 8), tok, max_length=200).examples
    mixed = epoch_micro_batches(examples, 8, 1, seed=0, epoch=0, batching="mixed")
    assert sorted(i for b in mixed for i in b[0]) == list(range(32))
    assert any(len({examples[i].src_lang + examples[i].tgt_lang for i in b[0]}) > 1 for b in mixed)
    grouped = epoch_micro_batches(examples, 8, 1, seed=0, epoch=0, batching="grouped")
    assert all(len({(examples[i].src_lang, examples[i].tgt_lang) for i in b[0]}) == 1 for b in grouped)
    assert epoch_micro_batches(examples, 8, 1, 0, 1, "mixed") != mixed
    assert epoch_micro_batches(examples, 8, 1, 0, 0, "mixed") == mixed
    two = epoch_micro_batches(examples, 4, 2, 0, 0, "mixed")
    assert [b[0] + b[1] for b in two] != [] and sorted(two[0][0] + two[0][1]) == sorted(mixed[0][0])
    with pytest.raises(ValueError):
        epoch_micro_batches(examples, 8, 1, 0, 0, "random")


def test_schedules():
    cosine = lr_lambda("cosine", 2, 10, 0.1)
    assert [cosine(0), cosine(1)] == [0.5, 1.0]
    assert cosine(2) == pytest.approx(1.0) and cosine(10) == pytest.approx(0.1)
    assert cosine(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    inv = lr_lambda("inverse_sqrt", 4, 100, 0.0)
    assert inv(3) == 1.0 and inv(15) == pytest.approx(0.5)
    assert lr_lambda("linear", 0, 10, 0.0)(5) == pytest.approx(0.5)
    assert lr_lambda("constant", 0, 10, 0.0)(9) == 1.0


def test_grad_accumulation_equals_big_batch(tmp_path):
    big, _ = build(tmp_path / "a", max_steps=2)
    small, _ = build(tmp_path / "b", max_steps=2, batch_size=4, grad_accum=2)
    a, b = big.train(), small.train()
    assert [r["loss"] for r in a.history] == pytest.approx([r["loss"] for r in b.history], rel=1e-5)
    for p, q in zip(big.params, small.params):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_loss_falls_and_log_written(tmp_path):
    trainer, _ = build(tmp_path, epochs=3.0, eval_every=4, dropout=0.1, lr=3e-2)
    result = trainer.train()
    assert result.total_steps == 12 and result.completed
    losses = [r["loss"] for r in result.history]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1
    assert result.dev_losses[-1]["dev_loss"] < result.dev_losses[0]["dev_loss"]
    assert result.dev_losses[0]["step"] == 0
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 12 + len(result.dev_losses)
    record = result.history[0]
    assert {"loss", "ce", "lr", "grad_norm", "tokens_per_s", "target_tokens", "epoch"} <= set(record)


def test_deterministic_mode_is_restored_after_training(tmp_path):
    trainer, _ = build(tmp_path, max_steps=1, deterministic=True)
    assert not torch.are_deterministic_algorithms_enabled()
    trainer.train()
    assert not torch.are_deterministic_algorithms_enabled()


def test_molora_topk_adds_load_balancing(tmp_path):
    trainer, _ = build(tmp_path, method="molora_topk", max_steps=1, load_balancing_weight=0.5)
    record = trainer.train().history[0]
    assert record["load_balancing"] > 0
    assert record["loss"] == pytest.approx(record["ce"] + 0.5 * record["load_balancing"])


def test_cpu_refuses_half_precision_and_empty_data(tmp_path):
    with pytest.raises(ValueError, match="needs a GPU"):
        build(tmp_path, precision="bf16")
    model, tok = tiny_setup()
    with pytest.raises(ValueError, match="empty"):
        Trainer(model, [], [], TrainingSection(), pad_token_id=0, output_dir=tmp_path, seed=0, fingerprint="t",
                ctx=setup_distributed("cpu"))


def _nan_loss_on(step_numbers, monkeypatch):
    """Make the loss of the given (1-based) optimizer steps NaN, as a diverging step would."""
    import lora_route.train.trainer as trainer_module

    real, calls = trainer_module.token_loss_sums, []

    def sums(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) in step_numbers:
            return type(result)(result.ce * float("nan"), result.kl, result.tokens)
        return result

    monkeypatch.setattr(trainer_module, "token_loss_sums", sums)


def test_a_non_finite_step_stops_training_and_names_the_step(tmp_path, monkeypatch):
    """A NaN loss used to train on, write NaN adapters and report success."""
    from lora_route.train.trainer import NonFiniteTrainingError

    trainer, _ = build(tmp_path, max_steps=4, eval_every=0)
    before = [p.detach().clone() for p in trainer.params]
    _nan_loss_on({1 + 2}, monkeypatch)        # the dev pass runs first, then steps 1, 2, 3
    with pytest.raises(NonFiniteTrainingError, match="step 2: the loss is nan"):
        trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.params)
    assert not any(torch.equal(p, b) for p, b in zip(trainer.params, before))   # step 1 had trained
    assert not list(tmp_path.glob("checkpoint-*"))


def test_skip_nonfinite_steps_skips_and_logs_them(tmp_path, monkeypatch):
    trainer, _ = build(tmp_path, max_steps=4, skip_nonfinite_steps=True)
    _nan_loss_on({1 + 2}, monkeypatch)
    result = trainer.train()
    assert result.completed and [r.get("skipped") for r in result.history] == [None, "non-finite", None, None]
    assert result.history[1]["loss"] is None and all(torch.isfinite(p).all() for p in trainer.params)
    assert "NaN" not in (tmp_path / "log.jsonl").read_text()
