"""Linguistic conflict / synergy analysis (DAT paper, §3): gradient agreement between directions, and the
"together" vs "separate" vs "grouped" training comparison with its per-direction delta matrix.

**Gradient cosine.** For every direction d the gradient ``g_d`` of its seed-set loss with respect to a *shared*
parameter set (the model's trainable parameters, grouped by decoder layer) is taken; ``cos(g_d, g_e)`` per layer
shows which directions pull the shared parameters apart (< 0: conflict) or together (> 0: synergy). With a freshly
initialised shared LoRA (B = 0) only the B factors receive gradient: ``∂L/∂B = (∂L/∂W) Aᵀ``, a random projection
of the full-weight gradient onto the r rows of A, so their cosines estimate those of the ΔW gradients.

**Training comparison.** Seed 003 compares multilingual training (one adapter for everything), separate training
(one model per direction) and group multilingual training (one adapter per language group). Here all three are
method ``dat`` routing tables over the same kernels, trained with the same Trainer settings (same steps, batch,
data, seed — the same budget):

* ``together``: every direction → one shared adapter;
* ``separate``: every direction → its own adapter (parameters never shared, so gradients never interact; the
  equivalent of separate models with the same total budget);
* ``grouped``: direction → adapter of the group of its non-pivot language (target language when neither side is
  the pivot), groups from the DAT paper's table unless given.

Each direction is then scored on held-out pairs: token cross-entropy (``metric="loss"``, fast on CPU) or
BLEU / chrF++ of greedy translations. The delta of a strategy is its score minus separate training's
(for the loss: separate's loss minus the strategy's), so **positive = synergy dominates, negative = conflicts
dominate** — the DAT paper's reading of multilingual minus separate training.
"""
from __future__ import annotations

import math
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from lora_route.adapters.config import LANGUAGE_FREE_METHODS, RoutedLoRAConfig
from lora_route.adapters.dat_languages import dat_language_groups
from lora_route.adapters.patch import apply_routed_lora, route
from lora_route.analysis.awareness import causal_lm_loss_sum
from lora_route.common.files import write_json
from lora_route.common.languages import direction_key, parse_direction
from lora_route.common.plotting import pyplot, save_png
from lora_route.data.collate import collate, encode_pairs
from lora_route.eval.evaluate import decode_pairs
from lora_route.eval.metrics import bleu_chrf
from lora_route.train.distributed import setup_distributed
from lora_route.train.trainer import Trainer

STRATEGIES = ("together", "separate", "grouped")
METRICS = ("loss", "bleu", "chrf")

__all__ = [
    "STRATEGIES", "METRICS", "GradientConflicts", "direction_gradients", "gradient_conflicts", "strategy_config",
    "run_strategy_comparison", "delta_matrices", "plot_delta_heatmaps", "plot_gradient_heatmaps",
]

Direction = tuple[str, str]
_LAYER = re.compile(r"\.(\d+)\.")


def _route(model: nn.Module, direction: Direction):

    config = getattr(model, "routed_lora_config", None)
    if config is None or config.method in LANGUAGE_FREE_METHODS:
        return nullcontext()
    return route(model, direction[0], direction[1])


# ------------------------------------------------------------------------------------------------ gradient cosine
@dataclass(frozen=True)
class GradientConflicts:
    """``cosine`` (layers, D, D) per decoder layer and ``overall`` (D, D) over all shared parameters, float64."""

    directions: list[Direction]
    layers: list[int]
    cosine: Tensor
    overall: Tensor

    def to_dict(self) -> dict[str, Any]:
        names = [direction_key(*d) for d in self.directions]
        return {"directions": names, "layers": self.layers,
                "cosine": {str(layer): self.cosine[i].tolist() for i, layer in enumerate(self.layers)},
                "overall": self.overall.tolist(),
                "mean_off_diagonal_per_layer": {
                    str(layer): _mean_off_diagonal(self.cosine[i]) for i, layer in enumerate(self.layers)}}


def _mean_off_diagonal(matrix: Tensor) -> float | None:
    n = matrix.shape[0]
    if n < 2:
        return None
    return float((matrix.sum() - matrix.diagonal().sum()) / (n * n - n))


def direction_gradients(
    model: nn.Module, batches: Mapping[Direction, Sequence[Mapping[str, Tensor]]]
) -> dict[Direction, dict[int, Tensor]]:
    """Per direction, the flattened gradient (float64, CPU) of its summed token loss w.r.t. the trainable parameters
    of each decoder layer (layer index → vector). Gradients already on the parameters are left untouched.

    The shared set is whatever is trainable: a shared adapter (``method="lora"``) on a patched model, or every
    layer weight of an unpatched trainable model (memory: one full-model gradient per direction)."""
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad and _LAYER.search(name)]
    if not params:
        raise ValueError("the model has no trainable parameter inside a numbered layer; patch it with a shared "
                         "adapter first (e.g. apply_routed_lora(model, RoutedLoRAConfig(method='lora', ...)))")
    if not batches:
        raise ValueError("no directions given")
    saved = {name: p.grad for name, p in params}
    was_training = model.training
    model.eval()
    out: dict[Direction, dict[int, Tensor]] = {}
    try:
        for direction, direction_batches in batches.items():
            if not direction_batches:
                raise ValueError(f"no batches for direction {'-'.join(direction)}")
            for _, p in params:
                p.grad = None
            with _route(model, direction):
                for batch in direction_batches:
                    loss, _ = causal_lm_loss_sum(model, batch)
                    loss.backward()
            per_layer: dict[int, list[Tensor]] = {}
            for name, p in params:
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                per_layer.setdefault(int(_LAYER.search(name).group(1)), []).append(grad.detach().double().reshape(-1).cpu())
            out[direction] = {layer: torch.cat(parts) for layer, parts in sorted(per_layer.items())}
    finally:
        for name, p in params:
            p.grad = saved[name]
        model.train(was_training)
    return out


def _cosine_matrix(vectors: Sequence[Tensor]) -> Tensor:
    stacked = torch.stack(list(vectors))
    norms = stacked.norm(dim=1, keepdim=True)
    unit = stacked / torch.where(norms > 0, norms, torch.ones_like(norms))
    return unit @ unit.T


def gradient_conflicts(
    model: nn.Module, batches: Mapping[Direction, Sequence[Mapping[str, Tensor]]]
) -> GradientConflicts:
    """Cosine similarity of the directions' gradients, per decoder layer and overall (a zero gradient has cosine 0
    with everything)."""
    grads = direction_gradients(model, batches)
    directions = list(grads)
    layers = sorted(grads[directions[0]])
    cosine = torch.stack([_cosine_matrix([grads[d][layer] for d in directions]) for layer in layers])
    overall = _cosine_matrix([torch.cat([grads[d][layer] for layer in layers]) for d in directions])
    return GradientConflicts(directions, layers, cosine, overall)


# ------------------------------------------------------------------------------------------------ strategies
def _group_of(direction: Direction, groups: Mapping[str, str], pivot: str) -> str:
    src, tgt = direction
    language = tgt if tgt != pivot else src
    if language not in groups:
        raise ValueError(f"no language group for {language!r} (direction {src}-{tgt}); pass groups covering it")
    return groups[language]


def strategy_config(strategy: str, directions: Sequence[Direction], *, groups: Mapping[str, str] | None = None,
                    pivot: str = "en", **adapter: Any):
    """``RoutedLoRAConfig(method="dat")`` whose routing table realises ``strategy`` over ``directions``;
    ``adapter`` holds further fields (r, alpha, dropout, target_modules, layers)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    directions = [tuple(d) for d in directions]
    if not directions:
        raise ValueError("no directions")
    languages = list(dict.fromkeys([pivot] + [lang for d in directions for lang in d]))
    if groups is None:
        groups = dat_language_groups("fifty", languages)
    missing = [lang for lang in languages if lang != pivot and lang not in groups]
    if missing:
        raise ValueError(f"no language group for {', '.join(missing)}")
    if strategy == "together":
        table = {direction_key(s, t): "shared" for s, t in directions}
    elif strategy == "separate":
        table = {direction_key(s, t): f"dir.{direction_key(s, t)}" for s, t in directions}
    else:
        table = {direction_key(s, t): f"group.{_group_of((s, t), groups, pivot)}" for s, t in directions}
    return RoutedLoRAConfig(method="dat", languages=languages, pivot=pivot,
                            language_groups={lang: groups[lang] for lang in languages if lang != pivot},
                            routing_table=table, **adapter)


def _direction_loss(model: nn.Module, examples, pad_token_id: int, batch_size: int) -> float:

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = collate(examples[i:i + batch_size], pad_token_id)
            loss, n = causal_lm_loss_sum(model, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                                                 "labels": batch.labels})
            total += float(loss)
            count += n
    return total / count


def run_strategy_comparison(
    model_factory: Callable[[], nn.Module],
    tokenizer,
    train_pairs: Sequence[Any],
    eval_pairs: Sequence[Any],
    settings,
    output_dir: str | os.PathLike,
    *,
    strategies: Sequence[str] = STRATEGIES,
    groups: Mapping[str, str] | None = None,
    pivot: str = "en",
    metric: str = "loss",
    adapter: Mapping[str, Any] | None = None,
    max_length: int = 256,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Train each strategy from a fresh ``model_factory()`` on ``train_pairs`` with the same ``settings``
    (:class:`lora_route.train.config.TrainingSection`) and score every direction of ``eval_pairs``.

    Returns (and writes to ``output_dir/conflicts.json``) per-direction scores per strategy and the delta matrices
    of :func:`delta_matrices`. ``metric``: ``"loss"`` (held-out token cross-entropy) or ``"bleu"`` / ``"chrf"``
    (greedy translations scored with sacreBLEU).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or "separate" not in strategies:
        raise ValueError(f"strategies must be among {STRATEGIES} and include 'separate' (the reference); "
                         f"got {list(strategies)}")
    if not train_pairs or not eval_pairs:
        raise ValueError("train_pairs and eval_pairs must not be empty")
    directions = list(dict.fromkeys(p.direction for p in train_pairs))
    untrained = sorted({p.direction for p in eval_pairs} - set(directions))
    if untrained:
        raise ValueError(f"eval pairs in untrained direction(s) {untrained}")
    out = Path(output_dir)
    ctx = setup_distributed(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_set = encode_pairs(train_pairs, tokenizer, max_length=max_length, what="training pairs").examples
    by_direction = {d: [p for p in eval_pairs if p.direction == d] for d in directions}
    by_direction = {d: pairs for d, pairs in by_direction.items() if pairs}
    eval_sets = {d: encode_pairs(pairs, tokenizer, max_length=max_length, what="evaluation pairs").examples
                 for d, pairs in by_direction.items()}
    scores: dict[str, dict[str, dict[str, float]]] = {}
    training: dict[str, Any] = {}
    for strategy in strategies:
        config = strategy_config(strategy, directions, groups=groups, pivot=pivot, **dict(adapter or {}))
        model = apply_routed_lora(model_factory(), config).to(ctx.device)
        trainer = Trainer(model, train_set, [], settings, pad_token_id=pad, output_dir=out / strategy, seed=seed,
                          fingerprint=f"conflicts:{strategy}", ctx=ctx, progress=progress)
        result = trainer.train()
        model.eval()
        training[strategy] = {"steps": result.steps_done, "adapters": len(config.dat_adapters),
                              "first_loss": result.history[0]["loss"], "last_loss": result.history[-1]["loss"]}
        per_direction: dict[str, dict[str, float]] = {}
        for d, examples in eval_sets.items():
            with route(model, d[0], d[1]):
                entry = {"loss": _direction_loss(model, examples, pad, batch_size)}
            if metric != "loss":

                hyps = decode_pairs(model, tokenizer, by_direction[d], batch_size=batch_size, progress=progress)
                entry.update({k: v for k, v in bleu_chrf(hyps, [p.tgt for p in by_direction[d]], d[1]).items()
                              if k in ("bleu", "chrf")})
            per_direction[direction_key(*d)] = entry
        scores[strategy] = per_direction
        del model, trainer
    languages = list(dict.fromkeys([pivot] + [lang for d in directions for lang in d]))
    result = {
        "metric": metric,
        "directions": [direction_key(*d) for d in directions],
        "languages": languages,
        "budget": {"max_steps": settings.max_steps, "epochs": settings.epochs, "batch_size": settings.batch_size,
                   "lr": settings.lr, "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs)},
        "training": training,
        "scores": scores,
        "delta": delta_matrices(scores, languages, metric),
    }
    write_json(out / "conflicts.json", result)
    return result


def delta_matrices(scores: Mapping[str, Mapping[str, Mapping[str, float]]], languages: Sequence[str],
                   metric: str) -> dict[str, Any]:
    """Per strategy other than ``separate``: ``{"per_direction": {dir: delta}, "matrix": src × tgt (None where
    untrained)}`` with delta > 0 meaning the strategy beats separate training (synergy)."""
    if "separate" not in scores:
        raise ValueError("scores need the 'separate' strategy as reference")
    index = {lang: i for i, lang in enumerate(languages)}
    out = {}
    for strategy, per_direction in scores.items():
        if strategy == "separate":
            continue
        deltas = {}
        matrix: list[list[float | None]] = [[None] * len(languages) for _ in languages]
        for direction, entry in per_direction.items():
            reference = scores["separate"][direction][metric]
            delta = reference - entry[metric] if metric == "loss" else entry[metric] - reference
            deltas[direction] = delta
            src, tgt = parse_direction(direction)
            matrix[index[src]][index[tgt]] = delta
        out[strategy] = {"per_direction": deltas, "matrix": matrix}
    return out


def plot_delta_heatmaps(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """One src × tgt heatmap per strategy of ``result["delta"]`` (diverging colours: green = synergy)."""
    plt = pyplot("heatmaps")
    deltas = result["delta"]
    languages = result["languages"]
    fig, axes = plt.subplots(1, len(deltas), figsize=(4.6 * len(deltas), 3.8), squeeze=False, constrained_layout=True)
    values = [v for d in deltas.values() for row in d["matrix"] for v in row if v is not None]
    bound = max((abs(v) for v in values), default=1.0) or 1.0
    for ax, (strategy, data) in zip(axes[0], deltas.items()):
        matrix = [[math.nan if v is None else v for v in row] for row in data["matrix"]]
        image = ax.imshow(matrix, cmap="RdYlGn", vmin=-bound, vmax=bound)
        ax.set_xticks(range(len(languages)), languages)
        ax.set_yticks(range(len(languages)), languages)
        ax.set_xlabel("target")
        ax.set_ylabel("source")
        ax.set_title(f"{strategy} − separate ({result['metric']})")
        for i, row in enumerate(data["matrix"]):
            for j, v in enumerate(row):
                if v is not None:
                    ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046)
    return save_png(fig, path, dpi=120, bbox_inches="tight")


def plot_gradient_heatmaps(conflicts: GradientConflicts, path: str | os.PathLike) -> Path:
    """Direction × direction gradient cosines: overall and for the layer with the lowest mean off-diagonal."""
    plt = pyplot("heatmaps")
    names = [direction_key(*d) for d in conflicts.directions]
    means = [(_mean_off_diagonal(conflicts.cosine[i]) or 0.0) for i in range(len(conflicts.layers))]
    worst = min(range(len(means)), key=means.__getitem__)
    panels = [("all layers", conflicts.overall), (f"layer {conflicts.layers[worst]} (most conflict)",
                                                  conflicts.cosine[worst])]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), squeeze=False, constrained_layout=True)
    for ax, (title, matrix) in zip(axes[0], panels):
        image = ax.imshow(matrix.numpy(), cmap="RdBu", vmin=-1, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_title(f"gradient cosine, {title}")
        fig.colorbar(image, ax=ax, fraction=0.046)
    return save_png(fig, path, dpi=120, bbox_inches="tight")
