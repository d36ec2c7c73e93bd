"""DDP on CPU (gloo, 2 processes) gives the single-process trajectory; only rank 0 logs and saves."""
import json
import os
import socket

import torch
import torch.multiprocessing as mp
from train_helpers import tiny_setup, toy_pairs

from lora_route.data.collate import encode_pairs
from lora_route.train.config import TrainingSection
from lora_route.train.distributed import setup_distributed, teardown_distributed
from lora_route.train.trainer import Trainer

DIRECTIONS = [("en", "de"), ("de", "en"), ("en", "zh"), ("zh", "en")]


def run(out, batch_size, resume=False, stop=None):
    model, tok = tiny_setup(dropout=0.0)
    examples = encode_pairs(toy_pairs(DIRECTIONS, 4), tok, max_length=200).examples
    settings = TrainingSection(max_steps=3, batch_size=batch_size, lr=1e-2, warmup_ratio=0.0, save_every=1)
    ctx = setup_distributed("cpu")
    trainer = Trainer(model, examples, examples[:6], settings, pad_token_id=tok.pad_token_id, output_dir=out,
                      seed=0, fingerprint="ddp", ctx=ctx, progress=False)
    result = trainer.train(resume=resume, stop_after_steps=stop)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return ctx, result, weights


def worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx, result, weights = run(out / "ddp", batch_size=2, stop=2)
    ctx2, resumed, weights = run(out / "ddp", batch_size=2, resume=True)
    torch.save({"losses": [r["loss"] for r in result.history + resumed.history],
                "dev": resumed.dev_losses[-1]["dev_loss"], "weights": weights}, out / f"rank{rank}.pt")
    teardown_distributed(ctx)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_matches_single_process(tmp_path):
    mp.start_processes(worker, args=(free_port(), tmp_path), nprocs=2, join=True, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    _, single, single_weights = run(tmp_path / "single", batch_size=4)
    losses = [r["loss"] for r in single.history]
    for got in ranks:
        assert len(got["losses"]) == 3
        torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(losses), rtol=1e-5, atol=1e-6)
        assert abs(got["dev"] - single.dev_losses[-1]["dev_loss"]) < 1e-5
        for name, value in single_weights.items():
            torch.testing.assert_close(got["weights"][name], value, rtol=1e-4, atol=1e-5)
    for name in single_weights:
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name])
    ddp = tmp_path / "ddp"
    assert sorted(p.name for p in ddp.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-00000002", "checkpoint-00000003"]
    state = json.loads((ddp / "checkpoint-00000003" / "state.json").read_text())
    assert state["world_size"] == 2 and {"rng-rank0.safetensors", "rng-rank1.safetensors"} <= set(state["sha256"])
    assert len([line for line in (ddp / "log.jsonl").read_text().splitlines() if '"loss"' in line]) == 3
