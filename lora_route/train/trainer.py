"""One training stage: mixed- or grouped-direction batches through a routed-LoRA model, AdamW + schedule,
gradient accumulation, clipping, autocast on GPU, R-Drop, dev loss, JSONL log, checkpoints and exact resume.

Loss normalisation: every optimizer step minimises the mean over *all target tokens of the step* (all micro-batches
and all ranks), so gradient accumulation and DDP give the same update as one large batch.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from lora_route.adapters.patch import load_balancing_loss, route
from lora_route.common.files import write_text_atomic
from lora_route.data.collate import Batch, EncodedPair, collate
from lora_route.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from lora_route.train.config import TrainingSection
from lora_route.train.distributed import DistContext
from lora_route.train.objective import TargetLogits, token_loss_sums

LOG_FILE = "log.jsonl"
# fp16 steps in a row the gradient scaler may skip (each halves the loss scale) before training stops.
MAX_CONSECUTIVE_OVERFLOWS = 24


class NonFiniteTrainingError(FloatingPointError):
    """A training step's loss or gradient is not finite (the message names the step)."""


def epoch_micro_batches(examples: Sequence[EncodedPair], batch_size: int, world_size: int, seed: int, epoch: int,
                        batching: str) -> list[list[list[int]]]:
    """Global micro-batches of one epoch; each holds one list of example indices per rank (rank r takes every
    world_size-th example of the global chunk, as ``DistributedSampler`` does).

    ``mixed``: one seeded permutation of all examples, so directions interleave inside each batch.
    ``grouped``: every batch holds a single direction; batches are shuffled across directions.
    Chunks too small to give every rank an example are dropped (only possible when world_size > 1).
    """
    if batching not in ("mixed", "grouped"):
        raise ValueError(f"batching must be 'mixed' or 'grouped', got {batching!r}")
    if not examples:
        raise ValueError("no training examples")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    size = batch_size * world_size
    if batching == "mixed":
        order = torch.randperm(len(examples), generator=generator).tolist()
        chunks = [order[i: i + size] for i in range(0, len(order), size)]
    else:
        groups: dict[tuple[str, str], list[int]] = {}
        for i, example in enumerate(examples):
            groups.setdefault((example.src_lang, example.tgt_lang), []).append(i)
        chunks = []
        for key in sorted(groups):
            members = groups[key]
            order = [members[j] for j in torch.randperm(len(members), generator=generator).tolist()]
            chunks.extend(order[i: i + size] for i in range(0, len(order), size))
        chunks = [chunks[j] for j in torch.randperm(len(chunks), generator=generator).tolist()]
    return [[chunk[r::world_size] for r in range(world_size)] for chunk in chunks if len(chunk) >= world_size]


def lr_lambda(scheduler: str, warmup_steps: int, total_steps: int, min_lr_ratio: float):
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based): linear warm-up over
    ``warmup_steps``, then cosine / linear decay to ``min_lr_ratio``, inverse square root, or constant."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if scheduler == "constant":
            return 1.0
        if scheduler == "inverse_sqrt":
            return math.sqrt(max(warmup_steps, 1) / (step + 1))
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if scheduler == "cosine" else 1.0 - progress
        return min_lr_ratio + (1.0 - min_lr_ratio) * shape

    return factor


@contextlib.contextmanager
def _deterministic(enabled: bool):
    """Deterministic kernels (warn where none exists) inside the block; the previous global setting after it."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


@dataclass
class TrainResult:
    """What a call to :meth:`Trainer.train` did: ``history`` holds one record per optimizer step of this call."""

    start_step: int
    steps_done: int
    total_steps: int
    history: list[dict] = field(default_factory=list)
    dev_losses: list[dict] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return self.steps_done >= self.total_steps


class Trainer:
    """Trains the trainable (adapter) parameters of a patched model on encoded examples.

    model: a causal LM patched by :func:`lora_route.apply_routed_lora`, already on ``ctx.device``.
    train / dev: encoded examples (see :func:`lora_route.data.collate.encode_pairs`).
    output_dir: checkpoints (``checkpoint-<step>``) and the JSONL log go here.
    fingerprint: identifies the recipe + stage; a checkpoint with another fingerprint is refused on resume.
    """

    def __init__(self, model: nn.Module, train: Sequence[EncodedPair], dev: Sequence[EncodedPair],
                 settings: TrainingSection, *, pad_token_id: int, output_dir: str | Path, seed: int,
                 fingerprint: str, ctx: DistContext, padding_side: str = "right", progress: bool = True):
        if not train:
            raise ValueError("the training set is empty")
        self.model, self.settings, self.ctx = model, settings, ctx
        self.train_set, self.dev_set = list(train), list(dev)
        self.pad_token_id, self.padding_side = pad_token_id, padding_side
        self.output_dir, self.seed, self.fingerprint = Path(output_dir), seed, fingerprint
        self.progress = progress and ctx.is_main
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters; apply_routed_lora first")
        config = getattr(model, "routed_lora_config", None)
        self.use_load_balancing = config is not None and config.method == "molora_topk"
        self.optimizer = torch.optim.AdamW(self.params, lr=settings.lr, betas=tuple(settings.betas),
                                           weight_decay=settings.weight_decay)
        self.micro_per_epoch = len(self._plan(0))
        if self.micro_per_epoch == 0:
            raise ValueError(f"{len(self.train_set)} examples give no batch for {ctx.world_size} processes")
        if settings.max_steps is not None:
            self.total_steps = settings.max_steps
        else:
            self.total_steps = max(1, math.ceil(settings.epochs * self.micro_per_epoch / settings.grad_accum))
        warmup = round(settings.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(settings.scheduler, warmup, self.total_steps, settings.min_lr_ratio))
        self.autocast_dtype = self._autocast_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.network: nn.Module = TargetLogits(model)
        if ctx.enabled:
            self.network = DistributedDataParallel(
                self.network, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
        self._plans: dict[int, list[list[list[int]]]] = {}
        self._overflows = 0

    # ------------------------------------------------------------------------------------------ helpers
    def _autocast_dtype(self) -> torch.dtype | None:
        precision = self.settings.precision
        if self.ctx.device.type != "cuda":
            if precision in ("bf16", "fp16"):
                raise ValueError(f"precision={precision} needs a GPU; on CPU training runs in fp32")
            return None
        if precision == "fp32":
            return None
        if precision == "fp16":
            return torch.float16
        if precision == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def _plan(self, epoch: int) -> list[list[list[int]]]:
        return epoch_micro_batches(self.train_set, self.settings.batch_size, self.ctx.world_size, self.seed, epoch,
                                   self.settings.batching)

    def _micro_batch(self, index: int) -> Batch:
        epoch, position = divmod(index, self.micro_per_epoch)
        if epoch not in self._plans:
            self._plans = {epoch: self._plan(epoch)}
        rows = self._plans[epoch][position][self.ctx.rank]
        return collate([self.train_set[i] for i in rows], self.pad_token_id, self.padding_side).to(self.ctx.device)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.autocast_dtype)

    def _loss_sums(self, batch: Batch, rdrop: bool):
        run = batch.repeat(2) if rdrop else batch
        with route(self.model, run.src, run.tgt), self._autocast():
            logits, targets = self.network(run.input_ids, run.attention_mask, run.labels, run.position_ids)
        sums = token_loss_sums(logits, targets, rdrop)
        balance = load_balancing_loss(self.model) if self.use_load_balancing and self.model.training else None
        return sums, balance

    def _write_log(self, record: dict) -> None:
        if self.ctx.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / LOG_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def _truncate_log(self, step: int) -> None:
        """Drop log records past ``step`` (written after the checkpoint a resumed run restarts from)."""
        path = self.output_dir / LOG_FILE
        if not self.ctx.is_main or not path.is_file():
            return
        kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))

    def _save(self, step: int) -> Path:
        return save_checkpoint(self.output_dir, step, model=self.model, optimizer=self.optimizer,
                               scheduler=self.scheduler, scaler=self.scaler, fingerprint=self.fingerprint,
                               extra={"total_steps": self.total_steps}, rank=self.ctx.rank,
                               world_size=self.ctx.world_size, barrier=self.ctx.barrier,
                               keep=self.settings.keep_checkpoints)

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def dev_loss(self) -> float | None:
        """Token-mean cross-entropy over the dev examples (no dropout), summed over ranks; None without dev set."""
        if not self.dev_set:
            return None
        was_training = self.model.training
        self.model.eval()
        shard = self.dev_set[self.ctx.rank::self.ctx.world_size]
        size = self.settings.batch_size
        batches = [shard[i: i + size] for i in range(0, len(shard), size)]
        if self.settings.eval_max_batches is not None:
            batches = batches[: self.settings.eval_max_batches]
        totals = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)
        for rows in batches:
            batch = collate(rows, self.pad_token_id, self.padding_side).to(self.ctx.device)
            sums, _ = self._loss_sums(batch, rdrop=False)
            totals += torch.stack([sums.ce.double(), torch.tensor(float(sums.tokens), device=totals.device,
                                                                   dtype=torch.float64)])
        self.ctx.all_reduce_sum(totals)
        self.model.train(was_training)
        if totals[1] == 0:
            return None
        loss = float(totals[0] / totals[1])
        if not math.isfinite(loss):
            raise NonFiniteTrainingError(f"the dev loss is {loss}: the adapters produce non-finite outputs")
        return loss

    def _skip_reason(self, step: int, loss: float, grad_norm: float) -> str | None:
        """None for a finite step; ``"overflow"`` for an fp16 step the gradient scaler skips; ``"non-finite"`` for a
        step skipped by ``skip_nonfinite_steps``. Raises :class:`NonFiniteTrainingError` otherwise."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self._overflows = 0
            return None
        if self.scaler.is_enabled():
            self._overflows += 1
            if self._overflows <= MAX_CONSECUTIVE_OVERFLOWS:
                return "overflow"
            raise NonFiniteTrainingError(
                f"step {step + 1}: {self._overflows} fp16 steps in a row overflowed (loss {loss}, gradient norm "
                f"{grad_norm}); lower training.lr or train with precision bf16 / fp32")
        if self.settings.skip_nonfinite_steps:
            return "non-finite"
        raise NonFiniteTrainingError(
            f"step {step + 1}: the loss is {loss} and the gradient norm {grad_norm}; nothing was saved for this step "
            "(lower training.lr, or set training.skip_nonfinite_steps: true to skip such steps)")

    # ------------------------------------------------------------------------------------------ training
    def train(self, resume: bool = False, stop_after_steps: int | None = None) -> TrainResult:
        """Run optimizer steps up to ``total_steps``.

        resume: continue from the newest checkpoint in ``output_dir`` (none there: start fresh).
        stop_after_steps: stop (with a checkpoint) after this many steps of this call, for time-limited jobs.
        """
        settings, ctx = self.settings, self.ctx
        start = 0
        checkpoint = latest_checkpoint(self.output_dir) if resume else None
        if checkpoint is not None:
            state = load_checkpoint(checkpoint, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                    scaler=self.scaler, fingerprint=self.fingerprint, rank=ctx.rank,
                                    world_size=ctx.world_size)
            start = state["step"]
            self._truncate_log(start)
        else:
            torch.manual_seed(self.seed * 7919 + ctx.rank)
            random.seed(self.seed * 7919 + ctx.rank)
            if ctx.is_main and (self.output_dir / LOG_FILE).exists():
                (self.output_dir / LOG_FILE).unlink()
        result = TrainResult(start, start, self.total_steps)
        end = self.total_steps if stop_after_steps is None else min(self.total_steps, start + stop_after_steps)
        with _deterministic(settings.deterministic):
            self._run(start, end, result)
        return result

    def _run(self, start: int, end: int, result: TrainResult) -> None:
        settings = self.settings
        if start == 0 and end > 0:
            dev = self.dev_loss()
            if dev is not None:
                result.dev_losses.append({"step": 0, "dev_loss": dev})
                self._write_log(result.dev_losses[-1])
        bar = None
        if self.progress and end > start:
            bar = tqdm(total=self.total_steps, initial=start, desc=self.output_dir.name, unit="step")
        self.model.train()
        for step in range(start, end):
            record = self._step(step)
            result.history.append(record)
            result.steps_done = step + 1
            if (step + 1) % settings.log_every == 0 or step + 1 == self.total_steps:
                self._write_log(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            last = step + 1 == self.total_steps
            if (settings.eval_every and (step + 1) % settings.eval_every == 0) or last:
                dev = self.dev_loss()
                if dev is not None:
                    entry = {"step": step + 1, "dev_loss": dev}
                    result.dev_losses.append(entry)
                    self._write_log(entry)
            if (settings.save_every and (step + 1) % settings.save_every == 0) or last or step + 1 == end:
                self._save(step + 1)
        if bar is not None:
            bar.close()

    def _step(self, step: int) -> dict:
        settings, ctx = self.settings, self.ctx
        started = time.perf_counter()
        rdrop = settings.rdrop_alpha > 0
        batches = [self._micro_batch(step * settings.grad_accum + j) for j in range(settings.grad_accum)]
        counts = torch.tensor([sum(b.num_target_tokens for b in batches), sum(b.num_tokens for b in batches)],
                              dtype=torch.float64, device=ctx.device)
        ctx.all_reduce_sum(counts)
        target_tokens = float(counts[0])
        totals = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # ce sum, kl sum, balance sum
        for j, batch in enumerate(batches):
            sync = ctx.enabled and j < len(batches) - 1
            with self.network.no_sync() if sync else contextlib.nullcontext():
                sums, balance = self._loss_sums(batch, rdrop)
                objective = sums.ce + (settings.rdrop_alpha * sums.kl if rdrop else 0.0)
                loss = objective * (ctx.world_size / target_tokens)
                if balance is not None:
                    loss = loss + settings.load_balancing_weight * balance / len(batches)
                self.scaler.scale(loss).backward()
            totals[0] += sums.ce.detach().double()
            if rdrop:
                totals[1] += sums.kl.detach().double()
            if balance is not None:
                totals[2] += balance.detach().double() / (len(batches) * ctx.world_size)
        self.scaler.unscale_(self.optimizer)
        if settings.max_grad_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, settings.max_grad_norm))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params
                                                                    if p.grad is not None])))
        ctx.all_reduce_sum(totals)  # every rank decides on the same loss and (already reduced) gradients
        ce, kl = float(totals[0]) / target_tokens, float(totals[1]) / target_tokens
        loss = ce + settings.rdrop_alpha * kl + settings.load_balancing_weight * float(totals[2])
        skipped = self._skip_reason(step, loss, grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        if skipped != "non-finite":
            self.scaler.step(self.optimizer)  # with fp16, the scaler itself skips steps whose gradients overflowed
            self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        finite = skipped is None
        record = {
            "step": step + 1, "epoch": round((step + 1) * settings.grad_accum / self.micro_per_epoch, 4),
            "loss": loss if finite else None, "ce": ce if finite else None, "lr": lr,
            "grad_norm": grad_norm if finite else None, "target_tokens": int(target_tokens),
            "tokens": int(counts[1]), "tokens_per_s": float(counts[1]) / seconds, "step_s": seconds,
        }
        if skipped is not None:
            record["skipped"] = skipped
        if rdrop:
            record["kl"] = kl if finite else None
        if self.use_load_balancing:
            record["load_balancing"] = float(totals[2]) if finite else None
        if ctx.device.type == "cuda":
            record["peak_mem_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
        return record
