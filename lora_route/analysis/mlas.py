"""MLAS-LoRA initialisation (MLAS-LoRA paper): teacher layer relevance → layer map → neuron awareness → λ split →
sub-matrix extraction → SVD factors, written into a student patched with ``method="mlas"`` (or, for the ablations,
``"lora"`` / ``"molora_static"``) through :func:`lora_route.adapters.patch.init_from`.

Pipeline and the choices it makes (see also the docstrings of the step modules):

1. Relevance ``R_i(s,t)`` of every teacher layer per direction; the directions' scores are averaged and the top-L
   layers are taken, L = number of student layers that carry adapters (``layer_selection="random"``: L random teacher
   layers, the "-R-s" / "-Ms-*" ablations). Teacher and student layers are paired in depth order.
2. Awareness Φ per direction on the teacher modules with the same names as the student's routed modules (e.g.
   ``mlp.gate_proj``) in the mapped teacher layers. The teacher may be the student's own base model (the default
   of the CLI: Φ then comes from real backward passes on the student, before it is patched).
3. λ split of each module's output neurons; extraction of (d_out × d_in) sub-matrices of the teacher's weight:
   general neurons (row score: mean Φ over directions) → the general LoRA; a direction's specific neurons (row
   score: its Φ) → that direction's LoRA; column scores are the input awareness (mean, or the direction's).
4. SVD factors of rank r with ``scaling · B · A`` = the rank-r truncation of the sub-matrix (eq. 7–9), times
   ``scale`` (1.0 = the paper; lower values soften the injection — not in the paper, off by default).
   An adapter whose neuron set is empty (no general neuron, or a pair owning none) keeps LoRA's default init:
   a zero sub-matrix would give A = B = 0, which no gradient can move.

Ablations of MLAS-LoRA paper §4.4 (:data:`ABLATIONS`): ``-R-*`` use one LoRA for all pairs (method ``lora``), ``-M-*`` one
LoRA per pair without a general one (method ``molora_static``); ``*-i`` random init; ``-*s-*`` random teacher layers,
``-*r-*`` / ``-R-a`` relevance-selected layers; ``*-a`` whole sub-matrices (no general/specific distinction),
``*-spe`` / ``*-gen`` each pair's LoRA from its specific / from the general neurons.
"""
from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from lora_route.adapters.config import LANGUAGE_FREE_METHODS
from lora_route.adapters.lowrank import low_rank_factors
from lora_route.adapters.patch import init_from, route, routed_modules
from lora_route.analysis.awareness import DEFAULT_THRESHOLD, neuron_awareness, normalise_awareness, split_neurons
from lora_route.analysis.extraction import extract_submatrix
from lora_route.analysis.relevance import (
    decoder_layers,
    layer_relevance,
    map_teacher_to_student,
    random_layers,
    select_top_layers,
)
from lora_route.common.languages import direction_key

LAYER_SELECTIONS = ("relevance", "random")
INITS = ("svd", "random")
NEURON_MODES = ("split", "all", "specific", "general")

# name -> (student method, MLASInit fields)
ABLATIONS: dict[str, tuple[str, dict[str, str]]] = {
    "mlas": ("mlas", {"layer_selection": "relevance", "init": "svd", "neurons": "split"}),
    "-R-i": ("lora", {"init": "random"}),
    "-R-a": ("lora", {"layer_selection": "relevance", "init": "svd", "neurons": "all"}),
    "-R-s": ("lora", {"layer_selection": "random", "init": "svd", "neurons": "all"}),
    "-M-i": ("molora_static", {"init": "random"}),
    "-Ms-a": ("molora_static", {"layer_selection": "random", "init": "svd", "neurons": "all"}),
    "-Ms-spe": ("molora_static", {"layer_selection": "random", "init": "svd", "neurons": "specific"}),
    "-Ms-gen": ("molora_static", {"layer_selection": "random", "init": "svd", "neurons": "general"}),
    "-Mr-a": ("molora_static", {"layer_selection": "relevance", "init": "svd", "neurons": "all"}),
    "-Mr-spe": ("molora_static", {"layer_selection": "relevance", "init": "svd", "neurons": "specific"}),
    "-Mr-gen": ("molora_static", {"layer_selection": "relevance", "init": "svd", "neurons": "general"}),
}
_MODES_BY_METHOD = {"mlas": ("split",), "lora": ("all",), "molora_static": ("all", "specific", "general")}

__all__ = ["ABLATIONS", "MLASInit", "ablation_method", "teacher_module_name", "teacher_route", "initialise_mlas"]

Direction = tuple[str, str]


@dataclass
class MLASInit:
    """Switches of the MLAS initialisation (the paper's full method by default); JSON-safe via to_dict/from_dict.

    layer_selection: "relevance" (top-L by R) or "random" (seeded); init: "svd" or "random" (keep LoRA's default
    init: A Kaiming-uniform, B zero); neurons: "split" (mlas), "all", "specific" or "general" (see module doc);
    threshold: λ; scale: factor on the SVD-initialised ΔW (1.0 = paper); seed: for random layer selection.
    """

    layer_selection: str = "relevance"
    init: str = "svd"
    neurons: str = "split"
    threshold: float = DEFAULT_THRESHOLD
    scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, allowed in (("layer_selection", LAYER_SELECTIONS), ("init", INITS), ("neurons", NEURON_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"MLASInit.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not isinstance(self.threshold, (int, float)) or not 0 < self.threshold < 1:
            raise ValueError(f"MLASInit.threshold (λ) must lie in (0, 1), got {self.threshold!r}")
        if not isinstance(self.scale, (int, float)) or not self.scale > 0:
            raise ValueError(f"MLASInit.scale must be > 0, got {self.scale!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"MLASInit.seed must be an int, got {self.seed!r}")

    @classmethod
    def from_ablation(cls, name: str, **overrides: Any) -> "MLASInit":
        """Switches of a MLAS-LoRA ablation name (``"mlas"``, ``"-R-i"``, ..., ``"-Mr-gen"``) plus overrides."""
        if name not in ABLATIONS:
            raise ValueError(f"unknown MLAS ablation {name!r}; choose one of {', '.join(ABLATIONS)}")
        return cls(**{**ABLATIONS[name][1], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MLASInit":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MLASInit field(s): {', '.join(unknown)}")
        return cls(**dict(data))


def ablation_method(name: str) -> str:
    """The student method (``mlas`` / ``lora`` / ``molora_static``) of an ablation name."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown MLAS ablation {name!r}; choose one of {', '.join(ABLATIONS)}")
    return ABLATIONS[name][0]


_LAYER_NAME = re.compile(r"^(?P<prefix>.*?)\.(?P<index>\d+)\.(?P<suffix>.+)$")


def _split_name(name: str) -> tuple[int, str]:
    match = _LAYER_NAME.match(name)
    if match is None:
        raise ValueError(f"module {name} is not inside a numbered decoder layer; MLAS maps layers by index")
    return int(match["index"]), match["suffix"]


def teacher_module_name(student_module: str, teacher_layer: int) -> str:
    """Name of the teacher module matching ``student_module`` (``model.layers.4.mlp.up_proj``) in ``teacher_layer``."""
    match = _LAYER_NAME.match(student_module)
    if match is None:
        raise ValueError(f"module {student_module} is not inside a numbered decoder layer")
    return f"{match['prefix']}.{teacher_layer}.{match['suffix']}"


def _linear(module: nn.Module, name: str) -> nn.Linear:
    base = getattr(module, "base_layer", module)
    if not isinstance(base, nn.Linear):
        raise ValueError(f"teacher module {name} is a {type(base).__name__}, not a linear layer")
    return base


def teacher_route(teacher: nn.Module, direction: Direction):
    """Route a patched teacher (e.g. the student itself before its adapters are set) for one direction."""
    config = getattr(teacher, "routed_lora_config", None)
    if config is None or config.method in LANGUAGE_FREE_METHODS:
        return nullcontext()
    return route(teacher, direction[0], direction[1])


def initialise_mlas(
    student: nn.Module,
    teacher: nn.Module,
    batches: Mapping[Direction, Sequence[Mapping[str, Tensor]]],
    init: MLASInit | None = None,
) -> dict[str, Any]:
    """Initialise the adapters of ``student`` (patched with mlas / lora / molora_static) from ``teacher``.

    ``batches``: direction → batches of ``input_ids``, ``attention_mask`` and ``labels`` (-100 on the prompt), the
    seed sentences of that direction (used for both relevance and awareness). Every direction the student routes
    separately must be present. ``teacher`` may be ``student`` itself while its adapters are still at their default
    init (B = 0, so it computes the base model): its passes then run inside ``route`` for each direction. Returns a
    JSON-safe report (relevance, layer map, neuron counts, SVD errors).
    """
    init = init or MLASInit()
    config = getattr(student, "routed_lora_config", None)
    if config is None:
        raise ValueError("the student has no routed LoRA adapters: call apply_routed_lora(student, config) first")
    if config.method not in _MODES_BY_METHOD:
        raise ValueError(f"MLAS initialises methods {', '.join(_MODES_BY_METHOD)}, not {config.method!r}")
    if init.init == "svd" and init.neurons not in _MODES_BY_METHOD[config.method]:
        raise ValueError(f"neurons={init.neurons!r} does not fit method {config.method!r} "
                         f"(allowed: {_MODES_BY_METHOD[config.method]})")
    modules = routed_modules(student)
    report: dict[str, Any] = {"method": config.method, "init": init.to_dict()}
    if init.init == "random":
        report["note"] = "random initialisation: the adapters keep LoRA's default init (A Kaiming-uniform, B zero)"
        return report
    directions = list(config.directions) if config.method != "lora" else list(batches)
    missing = [d for d in directions if d not in batches or not batches[d]]
    if missing:
        raise ValueError(f"no seed batches for direction(s) {', '.join('-'.join(d) for d in missing)}")
    if not directions:
        raise ValueError("no directions to analyse: pass seed batches for at least one direction")

    student_layers = sorted({_split_name(name)[0] for name in modules})
    teacher_count = len(decoder_layers(teacher))
    if len(student_layers) > teacher_count:
        raise ValueError(f"the student adapts {len(student_layers)} layers but the teacher has only {teacher_count}")
    relevance = {}
    for d in directions:
        with teacher_route(teacher, d):
            relevance[d] = layer_relevance(teacher, batches[d])
    mean_relevance = torch.stack(list(relevance.values())).mean(0)
    if init.layer_selection == "relevance":
        chosen = select_top_layers(mean_relevance, len(student_layers))
    else:
        chosen = random_layers(teacher_count, len(student_layers), init.seed)
    layer_map = map_teacher_to_student(chosen, student_layers)
    report.update({
        "relevance": {direction_key(*d): r.tolist() for d, r in relevance.items()},
        "mean_relevance": mean_relevance.tolist(),
        "teacher_layers": chosen,
        "layer_map": {str(s): t for s, t in layer_map.items()},
    })

    teacher_names = {name: teacher_module_name(name, layer_map[_split_name(name)[0]]) for name in modules}
    # Hook the teacher's modules themselves: a RoutedLoRALinear runs the fused op on its base weight without calling
    # base_layer, so hooks there would never fire. Weights come from the base linear layer.
    teacher_modules = {t: teacher.get_submodule(t) for t in set(teacher_names.values())}
    teacher_weights = {t: _linear(module, t).weight for t, module in teacher_modules.items()}
    scores = {}
    for d in directions:
        with teacher_route(teacher, d):
            scores[d] = neuron_awareness(teacher, batches[d], teacher_modules)

    factors: dict[str, dict[int | str, tuple[Tensor, Tensor]]] = {}
    module_reports: dict[str, Any] = {}
    for name, module in modules.items():
        t_name = teacher_names[name]
        weight = teacher_weights[t_name].detach()
        phi_out = torch.stack([scores[d][t_name].output for d in directions])
        phi_in = torch.stack([scores[d][t_name].input for d in directions])
        split = split_neurons(phi_out, init.threshold)
        shape = (module.out_features, module.in_features)
        has_pairs = module.spec.n_a > 1
        jobs: list[tuple[int | str, Tensor | None, Tensor, Tensor]] = []  # key, members, row scores, column scores
        if config.method == "mlas":
            jobs.append(("general", split.general, phi_out.mean(0), phi_in.mean(0)))
        elif config.method == "lora":
            jobs.append((0, None, phi_out.mean(0), phi_in.mean(0)))
        if config.method != "lora" and has_pairs:
            for p, d in enumerate(directions):
                key = direction_key(*d)
                if init.neurons == "general":
                    jobs.append((key, split.general, phi_out.mean(0), phi_in.mean(0)))
                elif init.neurons == "all":
                    jobs.append((key, None, phi_out[p], phi_in[p]))
                else:
                    jobs.append((key, split.specific[p], phi_out[p], phi_in[p]))
        per_adapter, errors = {}, {}
        for key, members, row_scores, column_scores in jobs:
            if members is not None and members.numel() == 0:
                # No neuron of this kind: a zero sub-matrix would give A = B = 0, a LoRA that can never train.
                errors[str(key)] = {"members": 0, "init": "default (no neurons of this kind)"}
                continue
            extraction = extract_submatrix(weight, row_scores, column_scores, shape, members)
            sub = extraction.matrix.double() * float(init.scale)
            b, a = low_rank_factors(sub, module.r, module.scaling)
            per_adapter[key] = (a, b)
            energy = float((sub ** 2).sum())
            residual = float(((sub - module.scaling * b.double() @ a.double()) ** 2).sum())
            errors[str(key)] = {"members": int(shape[0] if members is None else members.numel()),
                                "relative_error": (residual / energy) ** 0.5 if energy > 0 else 0.0,
                                "awareness": extraction.score}
        if per_adapter:
            factors[name] = per_adapter
        module_reports[name] = {
            "teacher_module": t_name,
            "general_neurons": int(split.general.numel()),
            "specific_neurons": {direction_key(*d): int(split.specific[p].numel()) for p, d in enumerate(directions)},
            "max_normalised_awareness": float(normalise_awareness(phi_out).max(0).values.mean()),
            "adapters": errors,
        }
    if factors:
        init_from(student, factors)
    report["modules"] = module_reports
    return report
