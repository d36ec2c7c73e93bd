"""What a benchmark run measures: MLP shapes, workloads, the small training model and the named presets.

A preset fixes every size so that two runs of the same preset on two devices measure the same thing. ``gpu`` is the
run behind the project's speed targets (Llama-3-8B and Gemma 3 270M MLP shapes, 4096-token prefill, decode of 1-256
sequences); ``gpu-quick`` measures only what the targets need, in under three minutes on an H200; ``cpu-smoke``
and ``minimal`` shrink every size so the same code path finishes on a CPU (the Triton backend then runs under
``TRITON_INTERPRET=1``). Smoke runs check plumbing; their timings are no performance evidence. ``host-overhead`` runs
only the host time per routed call at decode sizes (:class:`HostOverheadSpec`), which every other preset measures too.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, is_dataclass, replace

import torch

POPULARITIES = ("uniform", "zipf", "single")
WORKLOAD_KINDS = ("forward", "forward_backward", "decode")
LAYER_PROVIDERS = (
    "base", "peft_single", "peft_mixed", "naive_loop", "lora_route_triton", "lora_route_triton_fused", "lora_route_cuda",
    "lora_route_cpu", "lora_route_torch",
)
TRAIN_PROVIDERS = (
    "peft_single", "peft_mixed", "naive_loop",
    "lora_route_lora", "lora_route_molora_static", "lora_route_crosslora",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Six languages give the 30 ordered translation directions of the targets' mixed batch.
LANGUAGES = ("en", "de", "zh", "ru", "cs", "fr")


def json_native(spec) -> dict:
    """The fields of dataclass instance ``spec`` as JSON-native values (nested dataclasses as dicts, tuples as lists)."""
    if not is_dataclass(spec) or isinstance(spec, type):
        raise ValueError(f"expected a dataclass instance, got {type(spec).__name__}")
    return json.loads(json.dumps(asdict(spec)))


@dataclass(frozen=True)
class MLPShape:
    """A gated MLP block ``down(act(gate(x)) * up(x))`` with a LoRA of rank ``rank`` on each of the three
    projections and ``num_adapters`` adapters (one per translation direction)."""

    name: str
    hidden: int
    ffn: int
    rank: int
    num_adapters: int
    activation: str  # "silu" (Llama) or "gelu_tanh" (Gemma)

    def __post_init__(self):
        for field in ("hidden", "ffn", "rank", "num_adapters"):
            if getattr(self, field) < 1:
                raise ValueError(f"MLPShape {self.name!r}: {field} must be >= 1, got {getattr(self, field)}")
        if self.activation not in ("silu", "gelu_tanh"):
            raise ValueError(f"MLPShape {self.name!r}: activation must be 'silu' or 'gelu_tanh', got {self.activation!r}")


@dataclass(frozen=True)
class Workload:
    """One layer-level measurement: ``sequences`` × ``seq_len`` rows, each sequence on one adapter drawn by
    ``popularity``. ``decode`` has ``seq_len == 1`` and no gradient; ``forward_backward`` times forward + backward."""

    kind: str
    sequences: int
    seq_len: int
    popularity: str

    def __post_init__(self):
        if self.kind not in WORKLOAD_KINDS:
            raise ValueError(f"workload kind must be one of {WORKLOAD_KINDS}, got {self.kind!r}")
        if self.popularity not in POPULARITIES:
            raise ValueError(f"popularity must be one of {POPULARITIES}, got {self.popularity!r}")
        if self.sequences < 1 or self.seq_len < 1:
            raise ValueError(f"a workload needs >= 1 sequence of >= 1 token, got {self.sequences} × {self.seq_len}")
        if self.kind == "decode" and self.seq_len != 1:
            raise ValueError(f"a decode workload has one token per sequence, got seq_len={self.seq_len}")

    @property
    def tokens(self) -> int:
        return self.sequences * self.seq_len

    @property
    def name(self) -> str:
        """E.g. ``forward_4096``, ``forward_backward_4096``, ``decode_64`` (popularity is reported separately)."""
        return f"{self.kind}_{self.sequences if self.kind == 'decode' else self.tokens}"


@dataclass(frozen=True)
class TrainModelSpec:
    """A small Llama built from ``LlamaConfig`` with random weights, trained on a batch of ``sequences`` ×
    ``seq_len`` tokens that mixes the 30 directions of :data:`LANGUAGES` (balanced)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    sequences: int
    seq_len: int
    rank: int = 16

    def __post_init__(self):
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"hidden={self.hidden}, heads={self.heads}, kv_heads={self.kv_heads}: "
                             "hidden must divide by heads and heads by kv_heads")


@dataclass(frozen=True)
class HostOverheadSpec:
    """Host time per ``routed_linear`` call at decode sizes: ``rows`` rows routed at random over ``num_a`` A and
    ``num_b`` B experts of rank ``rank``, for each ``(d_in, d_out)`` of ``layers``; each timed repetition makes
    ``calls`` calls."""

    rows: int = 64
    num_a: int = 30
    num_b: int = 30
    rank: int = 16
    # A layer where the GEMMs cost next to nothing, and the Gemma 3 270M gate projection.
    layers: tuple[tuple[int, int], ...] = ((64, 64), (640, 2048))
    calls: int = 50

    def __post_init__(self):
        for field in ("rows", "num_a", "num_b", "rank", "calls"):
            if getattr(self, field) < 1:
                raise ValueError(f"HostOverheadSpec: {field} must be >= 1, got {getattr(self, field)}")
        if not self.layers or any(len(layer) != 2 or min(layer) < 1 for layer in self.layers):
            raise ValueError(f"HostOverheadSpec: layers must be (d_in, d_out) pairs of sizes >= 1, got {self.layers}")


@dataclass(frozen=True)
class BenchPreset:
    """Every size of one run. ``reps``/``warmup`` count CPU repetitions (and the host-overhead repetitions on every
    device); ``rep_ms``/``warmup_ms`` are the ``triton.testing.do_bench`` budgets on a GPU (``train_rep_ms`` for the
    end-to-end step). No ``shapes``: no layer benchmark; no ``train``: no training step; no ``host_overhead``: no
    host-overhead section."""

    name: str
    shapes: tuple[MLPShape, ...]
    prefill_tokens: int
    prefill_seq_len: int
    decode_sequences: tuple[int, ...]
    popularities: tuple[str, ...]
    train: TrainModelSpec | None
    dtype: str
    reps: int
    warmup: int
    rep_ms: int = 200
    warmup_ms: int = 50
    train_rep_ms: int = 3000
    host_overhead: HostOverheadSpec | None = None

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.prefill_tokens % self.prefill_seq_len:
            raise ValueError(f"prefill_tokens={self.prefill_tokens} is not a multiple of "
                             f"prefill_seq_len={self.prefill_seq_len}")
        unknown = set(self.popularities) - set(POPULARITIES)
        if unknown:
            raise ValueError(f"unknown popularity {sorted(unknown)}; choose from {POPULARITIES}")
        if self.reps < 1 or self.warmup < 0:
            raise ValueError(f"reps must be >= 1 and warmup >= 0, got reps={self.reps}, warmup={self.warmup}")
        if not (self.shapes or self.train or self.host_overhead):
            raise ValueError(f"preset {self.name!r} measures nothing: no shapes, no training model, no host overhead")

    def workloads(self) -> list[Workload]:
        """Forward and forward+backward at ``prefill_tokens``, then decode at each ``decode_sequences``."""
        prefill_sequences = self.prefill_tokens // self.prefill_seq_len
        out = []
        for popularity in self.popularities:
            out.append(Workload("forward", prefill_sequences, self.prefill_seq_len, popularity))
            out.append(Workload("forward_backward", prefill_sequences, self.prefill_seq_len, popularity))
            out.extend(Workload("decode", n, 1, popularity) for n in self.decode_sequences)
        return out

    def to_dict(self) -> dict:
        """JSON-native fields (tuples become lists)."""
        return json_native(self)

    def with_overrides(self, **changes) -> "BenchPreset":
        """A copy with some fields replaced (``None`` values are ignored); re-validated."""
        return replace(self, **{key: value for key, value in changes.items() if value is not None})


LLAMA3_8B_MLP = MLPShape("llama3_8b_mlp", hidden=4096, ffn=14336, rank=16, num_adapters=30, activation="silu")
GEMMA3_270M_MLP = MLPShape("gemma3_270m_mlp", hidden=640, ffn=2048, rank=16, num_adapters=30, activation="gelu_tanh")
TINY_MLP = MLPShape("tiny_mlp", hidden=64, ffn=160, rank=4, num_adapters=30, activation="silu")
TINY_GEMMA_MLP = MLPShape("tiny_gemma_mlp", hidden=48, ffn=96, rank=4, num_adapters=30, activation="gelu_tanh")

GPU_TRAIN_MODEL = TrainModelSpec(hidden=2048, intermediate=5632, layers=8, heads=32, kv_heads=4, vocab=32000,
                                 sequences=32, seq_len=128)

PRESETS = {
    "gpu": BenchPreset(
        name="gpu",
        shapes=(LLAMA3_8B_MLP, GEMMA3_270M_MLP),
        prefill_tokens=4096,
        prefill_seq_len=128,
        decode_sequences=(1, 16, 64, 256),
        popularities=POPULARITIES,
        # A TinyLlama-width model, 8 layers: big enough that the MLP LoRA dominates the adapter cost.
        train=GPU_TRAIN_MODEL,
        dtype="bfloat16",
        reps=20,
        warmup=3,
        host_overhead=HostOverheadSpec(),
    ),
    # The targets' workloads alone, on an H200 in under three minutes (estimated, not yet measured): 8 layer workloads
    # x 8 providers x ~0.15 s (do_bench's 10 + 50 ms, preparing the provider, the float32 reference) ~ 10 s; 4 decode
    # workloads x 6 graph captures and replays ~ 3 s; 15 training steps x ~2 s (a copy of the model, a first step,
    # 0.5 s timed) ~ 30 s; host overhead ~ 5 s; Triton's first compile of each kernel specialisation on a fresh
    # machine ~ 1 min.
    "gpu-quick": BenchPreset(
        name="gpu-quick",
        shapes=(LLAMA3_8B_MLP,),
        prefill_tokens=4096,
        prefill_seq_len=128,
        decode_sequences=(64, 256),
        popularities=("uniform", "zipf"),
        train=GPU_TRAIN_MODEL,
        dtype="bfloat16",
        reps=10,
        warmup=2,
        rep_ms=50,
        warmup_ms=10,
        train_rep_ms=500,
        host_overhead=HostOverheadSpec(calls=20),
    ),
    "cpu-smoke": BenchPreset(
        name="cpu-smoke",
        shapes=(TINY_MLP, TINY_GEMMA_MLP),
        prefill_tokens=64,
        prefill_seq_len=4,
        decode_sequences=(1, 4, 16),
        popularities=POPULARITIES,
        train=TrainModelSpec(hidden=64, intermediate=160, layers=2, heads=4, kv_heads=2, vocab=256,
                             sequences=30, seq_len=8, rank=4),
        dtype="float32",
        reps=5,
        warmup=1,
        host_overhead=HostOverheadSpec(calls=5),
    ),
    "minimal": BenchPreset(
        name="minimal",
        shapes=(TINY_GEMMA_MLP,),
        prefill_tokens=16,
        prefill_seq_len=2,
        decode_sequences=(1, 4),
        popularities=POPULARITIES,
        train=TrainModelSpec(hidden=32, intermediate=64, layers=1, heads=2, kv_heads=1, vocab=64,
                             sequences=30, seq_len=4, rank=2),
        dtype="float32",
        reps=1,
        warmup=0,
        host_overhead=HostOverheadSpec(layers=((64, 64),), calls=2),
    ),
    # Host time per routed call alone (every backend this device runs), e.g. before and after a change to the op.
    "host-overhead": BenchPreset(
        name="host-overhead",
        shapes=(),
        prefill_tokens=0,
        prefill_seq_len=1,
        decode_sequences=(),
        popularities=(),
        train=None,
        dtype="float32",
        reps=15,
        warmup=3,
        host_overhead=HostOverheadSpec(),
    ),
}
