"""End-to-end training step of a small Llama (``LlamaConfig``, random weights) on a batch that mixes the 30
directions of six languages, one provider at a time on copies of the same model and batch.

A step is forward + causal-LM loss + backward + AdamW update of the adapter parameters. Providers:
- ``peft_single``: PEFT, one LoRA on every sequence (PEFT's training default: float32 adapters);
- ``peft_mixed``: PEFT with 30 LoRAs and ``adapter_names=`` — PEFT refuses this in training mode, the refusal is
  recorded as the skip reason;
- ``naive_loop``: 30 LoRAs applied by a per-direction loop (:mod:`.naive`);
- ``lora_route_<method>`` for ``lora`` (single LoRA), ``molora_static`` (one LoRA per direction) and ``crosslora``
  (source-language A, target-language B): :func:`lora_route.adapters.patch.apply_routed_lora` + ``route(model, src, tgt)``,
  once per backend in ``backends`` (selected through ``LORA_ROUTE_BACKEND``).
Every adapter targets ``gate_proj``/``up_proj``/``down_proj`` with rank ``spec.rank``, alpha = 2 r, dropout 0.

Memory: ``peak_allocated_bytes`` is ``torch.cuda.max_memory_allocated`` over one step (CUDA only);
``saved_activation_bytes`` (every device) is the size of the distinct storages autograd saves for backward during
the forward, model parameters excluded — the activation memory a provider adds, measured without an allocator.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM

from lora_route.adapters.config import RoutedLoRAConfig
from lora_route.adapters.patch import apply_routed_lora, route
from lora_route.bench.config import LANGUAGES, TrainModelSpec
from lora_route.bench.errors import ProviderUnavailable
from lora_route.bench.layer_bench import PROJECTIONS
from lora_route.bench.naive import patch_naive_loop
from lora_route.bench.peft_baseline import attach_peft_loras, peft_adapter_name
from lora_route.bench.timing import Timer
from lora_route.bench.workloads import sequence_adapters
from lora_route.kernels.dispatch import backend_override

DIRECTIONS = tuple((src, tgt) for src in LANGUAGES for tgt in LANGUAGES if src != tgt)
ROUTED_METHODS = ("lora", "molora_static", "crosslora")


def build_small_llama(spec: TrainModelSpec, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """A ``LlamaForCausalLM`` with random weights from ``spec`` (SDPA attention), on ``device`` in ``dtype``."""
    config = LlamaConfig(
        vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        max_position_embeddings=max(128, spec.seq_len), tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: seconds on a GPU instead of a minute on the host
        return LlamaForCausalLM(config).to(dtype=dtype)


@dataclass(frozen=True)
class TrainBatch:
    """``input_ids`` (sequences, seq_len) and each sequence's direction: index into :data:`DIRECTIONS`, src, tgt."""

    input_ids: Tensor
    direction_ids: Tensor
    src: list[str]
    tgt: list[str]

    @property
    def tokens(self) -> int:
        return self.input_ids.numel()

    def row_directions(self) -> Tensor:
        """(sequences * seq_len,) direction id per row of a linear layer's input."""
        return self.direction_ids.repeat_interleave(self.input_ids.shape[1]).to(self.input_ids.device)


def make_batch(spec: TrainModelSpec, device: torch.device, seed: int) -> TrainBatch:
    """Random token ids; directions balanced over the 30 directions (``uniform`` popularity)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, spec.vocab, (spec.sequences, spec.seq_len), generator=generator).to(device)
    directions = sequence_adapters("uniform", spec.sequences, len(DIRECTIONS), seed)
    pairs = [DIRECTIONS[i] for i in directions.tolist()]
    return TrainBatch(input_ids, directions, [s for s, _ in pairs], [t for _, t in pairs])


@dataclass
class TrainSetup:
    """A provider's model and its loss for the batch (``loss()`` runs the routed forward)."""

    model: nn.Module
    loss: Callable[[], Tensor]
    adapter_dtype: str


def _setup(provider: str, model: nn.Module, batch: TrainBatch, spec: TrainModelSpec) -> TrainSetup:
    alpha = 2.0 * spec.rank
    ids = batch.input_ids

    def plain_loss(module, **extra):
        return lambda: module(input_ids=ids, labels=ids, **extra).loss

    if provider in ("peft_single", "peft_mixed"):
        count = 1 if provider == "peft_single" else len(DIRECTIONS)
        peft_model = attach_peft_loras(model, PROJECTIONS, spec.rank, alpha, count, autocast_adapter_dtype=True)
        extra = {"adapter_names": [peft_adapter_name(i) for i in batch.direction_ids.tolist()]} if count > 1 else {}
        adapter_dtype = str(next(p for p in peft_model.parameters() if p.requires_grad).dtype)
        return TrainSetup(peft_model, plain_loss(peft_model, **extra), adapter_dtype)
    if provider == "naive_loop":
        row_groups = patch_naive_loop(model, PROJECTIONS, len(DIRECTIONS), spec.rank, alpha)
        rows = batch.row_directions()

        def naive_loss():
            with row_groups.use(rows):
                return model(input_ids=ids, labels=ids).loss
        return TrainSetup(model, naive_loss, "torch.float32")
    method = provider.removeprefix("lora_route_")
    if method not in ROUTED_METHODS:
        raise ValueError(f"unknown training provider {provider!r}")
    config = RoutedLoRAConfig(method=method, languages=list(LANGUAGES), r=spec.rank, alpha=alpha, dropout=0.0,
                              target_modules=PROJECTIONS)
    apply_routed_lora(model, config)

    def routed_loss():
        with route(model, batch.src, batch.tgt):
            return model(input_ids=ids, labels=ids).loss
    return TrainSetup(model, routed_loss, "torch.float32")


def saved_activation_bytes(model: nn.Module, loss_fn: Callable[[], Tensor]) -> tuple[int, Tensor]:
    """Bytes of the distinct storages autograd saves during one forward (parameter storages excluded), and the loss."""
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_fn()
    return sum(saved.values()), loss


def run_training_provider(provider: str, backend: str | None, base_model: nn.Module, batch: TrainBatch,
                          spec: TrainModelSpec, timer: Timer, rep_ms: int) -> dict:
    """Measure one provider (``backend`` only for ``lora_route_*``) on a deep copy of ``base_model``.
    Returns the result fields; raises :class:`ProviderUnavailable` when the provider cannot train this batch."""
    device = batch.input_ids.device
    model = copy.deepcopy(base_model)
    with backend_override(backend):
        setup = _setup(provider, model, batch, spec)
        setup.model.train()
        params = [p for p in setup.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)

        def step():
            setup.loss().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        try:
            activation_bytes, loss = saved_activation_bytes(setup.model, setup.loss)
        except ValueError as error:
            if provider != "peft_mixed":
                raise
            # PEFT refuses adapter_names in training mode; its own message is the skip reason.
            raise ProviderUnavailable(f"{type(error).__name__}: {error}") from error
        initial_loss = float(loss.detach())
        loss.backward()
        optimizer.zero_grad(set_to_none=True)
        timing = timer.measure(step, rep_ms=rep_ms)
        memory = {}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            resident = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            torch.cuda.synchronize(device)
            memory = {"peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
                      "resident_bytes_before_step": resident}
    trainable = sum(p.numel() for p in params)
    step = setup = model = optimizer = None  # release the model copy before emptying the CUDA cache
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "timing": timing.to_dict(),
        "tokens_per_s": batch.tokens / (timing.median_ms / 1e3),
        "saved_activation_bytes": activation_bytes,
        **memory,
        "initial_loss": initial_loss,
        "trainable_parameters": trainable,
    }


def training_providers(requested: tuple[str, ...], backends: list[str]) -> list[tuple[str, str | None]]:
    """``(provider, backend)`` pairs to run: every ``lora_route_*`` provider once per backend of ``backends``."""
    pairs = []
    for provider in requested:
        if provider.startswith("lora_route_"):
            pairs.extend((provider, backend) for backend in backends)
        else:
            pairs.append((provider, None))
    return pairs
