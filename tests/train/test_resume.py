"""Kill-and-resume gives the uninterrupted loss curve; corrupt or foreign checkpoints are refused."""
import json

import pytest
from tiny_models import randomize_adapters
from train_helpers import tiny_setup, toy_pairs

from lora_route.data.collate import encode_pairs
from lora_route.train.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints
from lora_route.train.config import TrainingSection
from lora_route.train.distributed import setup_distributed
from lora_route.train.trainer import Trainer

DIRECTIONS = [("en", "de"), ("de", "en"), ("en", "zh"), ("zh", "de")]


def make_trainer(out, adapter_seed=None, fingerprint="recipe-a", **settings):
    model, tok = tiny_setup()
    if adapter_seed is not None:
        randomize_adapters(model, seed=adapter_seed)
    examples = encode_pairs(toy_pairs(DIRECTIONS, 6), tok, max_length=200).examples
    options = dict(epochs=1.0, max_steps=6, batch_size=4, grad_accum=2, lr=5e-3, rdrop_alpha=0.3, warmup_ratio=0.2,
                   save_every=3, keep_checkpoints=5)
    options.update(settings)
    return Trainer(model, examples, examples[:6], TrainingSection(**options), pad_token_id=tok.pad_token_id,
                   output_dir=out, seed=3, fingerprint=fingerprint, ctx=setup_distributed("cpu"), progress=False)


def losses(history):
    return [(r["step"], r["loss"], r["lr"]) for r in history]


def test_resume_reproduces_uninterrupted_run(tmp_path):
    full = make_trainer(tmp_path / "full").train()
    assert full.steps_done == 6 and full.completed
    first = make_trainer(tmp_path / "cut").train(stop_after_steps=3)
    assert first.steps_done == 3 and not first.completed
    assert latest_checkpoint(tmp_path / "cut").name == "checkpoint-00000003"
    # different adapter values prove the weights come from the checkpoint, not from the seed
    resumed = make_trainer(tmp_path / "cut", adapter_seed=9).train(resume=True)
    assert resumed.start_step == 3 and resumed.completed
    assert losses(first.history) + losses(resumed.history) == losses(full.history)
    assert resumed.dev_losses[-1] == full.dev_losses[-1]
    logged = [json.loads(line) for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in logged if "loss" in r] == [r["loss"] for r in full.history]


def test_refuses_foreign_or_corrupt_checkpoints(tmp_path):
    make_trainer(tmp_path, max_steps=3).train()
    with pytest.raises(CheckpointError, match="different recipe"):
        make_trainer(tmp_path, fingerprint="recipe-b", max_steps=3).train(resume=True)
    model, tok = tiny_setup(r_uni=8, method="unilora")
    trainer = make_trainer(tmp_path, max_steps=3)
    trainer.model = model
    trainer.params = [p for p in model.parameters() if p.requires_grad]
    with pytest.raises(CheckpointError, match="does not match the model"):
        trainer.train(resume=True)
    checkpoint = latest_checkpoint(tmp_path)
    weights = checkpoint / "trainable.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        make_trainer(tmp_path, max_steps=3).train(resume=True)
    (checkpoint / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        make_trainer(tmp_path, max_steps=3).train(resume=True)


def test_keep_limits_checkpoints_and_no_partial_folders(tmp_path):
    make_trainer(tmp_path, max_steps=4, save_every=1, keep_checkpoints=2).train()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000003", "checkpoint-00000004"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    state = json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())
    assert state["step"] == 4 and set(state["sha256"]) == {"optimizer.safetensors", "rng-rank0.safetensors",
                                                           "trainable.safetensors"}


@pytest.mark.parametrize("damage, message", [
    ("missing_key", r"state.json is not a valid checkpoint state \(step: Field required\)"),
    ("wrong_type", r"state.json is not a valid checkpoint state \(sha256: Input should be a valid dictionary\)"),
    ("pickle_weights", "trainable.safetensors is not a readable safetensors file"),
])
def test_damaged_checkpoint_states_raise_checkpoint_errors(tmp_path, damage, message):
    """A state.json without a key or with a wrong type used to raise KeyError / AttributeError, a pickle renamed to
    .safetensors a SafetensorError."""
    import hashlib
    import pickle

    make_trainer(tmp_path, max_steps=3).train()
    checkpoint = latest_checkpoint(tmp_path)
    state = json.loads((checkpoint / "state.json").read_text())
    if damage == "missing_key":
        del state["step"]
    elif damage == "wrong_type":
        state["sha256"] = ["trainable.safetensors"]
    else:
        (checkpoint / "trainable.safetensors").write_bytes(pickle.dumps({"weights": [1.0]}))
        state["sha256"]["trainable.safetensors"] = hashlib.sha256(
            (checkpoint / "trainable.safetensors").read_bytes()).hexdigest()
    (checkpoint / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=message):
        make_trainer(tmp_path, max_steps=3).train(resume=True)


def test_an_interrupted_checkpoint_replacement_is_recovered(tmp_path, monkeypatch):
    import os

    import lora_route.common.files as files

    make_trainer(tmp_path, max_steps=3).train()
    checkpoint = latest_checkpoint(tmp_path)
    before = (checkpoint / "state.json").read_text()
    monkeypatch.setattr(files, "_exchange", lambda first, second: False)
    real_rename, renames = os.rename, []

    def crash_on_second_rename(src, dst):
        renames.append(dst)
        if len(renames) == 2:
            raise KeyboardInterrupt("killed between the renames")
        real_rename(src, dst)

    monkeypatch.setattr(files.os, "rename", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path, max_steps=3).train()        # rewrites checkpoint-00000003
    monkeypatch.undo()
    assert not checkpoint.exists()
    assert latest_checkpoint(tmp_path) == checkpoint and (checkpoint / "state.json").read_text() == before
    assert make_trainer(tmp_path, max_steps=3).train(resume=True).completed
