"""Decoding a real model, timed side by side in one process (wall clock on the CPU; on a GPU after a synchronise):

- :func:`routed_decode_overhead`: mixed-direction greedy decoding — ``prompts`` prompts cycling through every
  direction among ``languages``, exactly ``new_tokens`` new tokens each — by the unpatched model, the same model
  patched with UniLoRA (random B, so that the delta is not zero) on the backend ``backend="auto"`` picks (and, where
  that is not the torch backend, once more on the torch backend) and PEFT's mixed-adapter batch (one LoRA per
  direction on the same modules, rows routed by ``adapter_names=``); the median of ``reps`` alternating
  repetitions and each one's ratio to the unpatched model, and the median of the ratios within each repetition
  (which a slow spell of the machine moves less); then, in one more untimed call each, the median µs per forward of
  the targeted modules (prompt and one-token steps apart), which shows how much of the difference the adapted
  modules themselves take.
- :func:`first_line_stopping`: messages per second of the evaluation's decoding
  (:func:`lora_route.eval.evaluate.decode_pairs`) of a test set as it is — greedy decoding that takes each row out of
  the batch once its first line is complete or it has emitted EOS, its output layer screened in bfloat16
  (:mod:`lora_route.eval.output_argmax`) — in batches of the evaluation's size and in one batch, the same without the
  screen (the whole float32 output layer at every step), and as it was before: transformers' ``generate``, every
  row on to EOS or the token budget; and how many outputs agree.
"""
from __future__ import annotations

import copy
import statistics
import time
from functools import partial
from typing import Any, Callable, Sequence

import torch
from torch import nn

from lora_route.adapters.config import DEFAULT_TARGET_MODULES, RoutedLoRAConfig
from lora_route.adapters.patch import apply_routed_lora, route, routed_modules
from lora_route.bench.peft_baseline import attach_peft_loras, peft_adapter_name
from lora_route.common.plotting import pyplot, save_png
from lora_route.eval.evaluate import decode_pairs
from lora_route.eval.generation import translate
from lora_route.kernels.dispatch import backend_override, resolve_backend

# Issue targets (never asserted): routed decoding within 5 % of the unpatched model; first-line stopping at least
# 3× the messages per second of decoding on for the base model, 1.5× for trained adapters.
MAX_ROUTED_DECODE_RATIO = 1.05
MIN_BASE_STOP_SPEEDUP = 3.0
MIN_ADAPTER_STOP_SPEEDUP = 1.5


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def routed_decode_overhead(model: nn.Module, tokenizer, *, languages: Sequence[str] = ("en", "de", "zh"),
                           prompts: int = 12, new_tokens: int = 24, reps: int = 5, r: int = 16, r_uni: int = 64,
                           seed: int = 0) -> dict[str, Any]:
    """Seconds per ``generate`` call of the unpatched ``model``, a UniLoRA-patched copy (on the backend ``"auto"``
    picks, ``routed_backend``, and on the torch backend too where that is another one) and PEFT's mixed batch
    (copies in ``model``'s mode, which is expected to be eval: PEFT refuses ``adapter_names`` in training mode), and
    each ratio to the unpatched model."""
    if prompts < 1 or new_tokens < 1 or reps < 1:
        raise ValueError(f"prompts, new_tokens and reps must be >= 1, got {prompts}, {new_tokens}, {reps}")
    directions = [(s, t) for s in languages for t in languages if s != t]
    if not directions:
        raise ValueError(f"need at least two languages, got {list(languages)}")
    rows = [directions[i % len(directions)] for i in range(prompts)]
    src, tgt = [s for s, _ in rows], [t for _, t in rows]
    device = next(model.parameters()).device
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer([f"Translate the following sentence:\nMessage number {i} of the test\n"
                           for i in range(prompts)], return_tensors="pt", padding=True).to(device)
    finally:
        tokenizer.padding_side = padding_side
    settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
                "pad_token_id": tokenizer.pad_token_id}

    patched = apply_routed_lora(copy.deepcopy(model), RoutedLoRAConfig("unilora", list(languages), r=r,
                                                                       alpha=2.0 * r, r_uni=r_uni, dropout=0.0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in routed_modules(patched).values():
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=generator) * 0.01)
    routed_backend = resolve_backend("auto", torch.empty(1, 1, dtype=next(patched.parameters()).dtype, device=device),
                                     r)
    calls: dict[str, Callable[[], object]] = {
        "unpatched": lambda: model.generate(**batch, **settings),
        "lora_route_unilora": lambda: _routed_generate(patched, batch, settings, src, tgt),
    }
    models = {"unpatched": model, "lora_route_unilora": patched}
    if routed_backend != "torch":
        calls["lora_route_unilora_torch"] = lambda: _routed_generate(patched, batch, settings, src, tgt, "torch")
        models["lora_route_unilora_torch"] = patched
    peft_model = attach_peft_loras(copy.deepcopy(model), DEFAULT_TARGET_MODULES, r, 2.0 * r, len(directions),
                                   autocast_adapter_dtype=False)
    names = [peft_adapter_name(directions.index(row)) for row in rows]
    calls["peft_mixed"] = lambda: peft_model.generate(**batch, **settings, adapter_names=names)
    models["peft_mixed"] = peft_model

    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.no_grad():
        for call in calls.values():
            call()
        for _ in range(reps):
            for name, call in calls.items():
                _synchronize(device)
                started = time.perf_counter()
                call()
                _synchronize(device)
                times[name].append(time.perf_counter() - started)
        module_us = {name: _targeted_module_times(models[name], call, device) for name, call in calls.items()}
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "prompts": prompts, "new_tokens": new_tokens, "directions": len(directions), "reps": reps,
        "adapter": {"method": "unilora", "r": r, "r_uni": r_uni, "target_modules": list(DEFAULT_TARGET_MODULES)},
        "routed_backend": routed_backend,
        "seconds": times, "median_s": medians,
        "module_us_per_call": module_us,
        "module_extra_us_per_decode_call": {name: times_us["decode"] - module_us["unpatched"]["decode"]
                                            for name, times_us in module_us.items()},
        "ratio_to_unpatched": {name: medians[name] / medians["unpatched"] for name in calls},
        "paired_ratio_median": {name: statistics.median(t / u for t, u in zip(values, times["unpatched"]))
                                for name, values in times.items()},
        "target_ratio": MAX_ROUTED_DECODE_RATIO,
        "met": medians["lora_route_unilora"] / medians["unpatched"] <= MAX_ROUTED_DECODE_RATIO,
    }


def _targeted_module_times(model: nn.Module, call: Callable[[], object], device: torch.device) -> dict[str, float]:
    """Median µs per forward of ``model``'s modules at the :data:`DEFAULT_TARGET_MODULES` paths (the routed layers,
    PEFT's LoRA layers or the plain ``nn.Linear``) during one untimed ``call()``: ``prefill`` for the prompt's
    forward, ``decode`` for one-token steps (a separate pass, so that the hooks do not touch the timed calls)."""
    per_call: dict[str, list[float]] = {"prefill": [], "decode": []}
    started: dict[nn.Module, float] = {}

    def before(module, args):
        _synchronize(device)
        started[module] = time.perf_counter()

    def after(module, args, output):
        _synchronize(device)
        kind = "decode" if args[0].dim() >= 3 and args[0].shape[1] == 1 else "prefill"
        per_call[kind].append((time.perf_counter() - started.pop(module)) * 1e6)

    handles = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in DEFAULT_TARGET_MODULES:
            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        call()
    finally:
        for handle in handles:
            handle.remove()
    return {kind: statistics.median(values) if values else float("nan") for kind, values in per_call.items()}


def _routed_generate(model, batch, settings, src, tgt, backend: str | None = None):
    with route(model, src, tgt), backend_override(backend):
        return model.generate(**batch, **settings)


def first_line_stopping(models: dict[str, tuple[nn.Module, Any]], pairs: Sequence[Any], *, batch_size: int,
                        log: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """For each ``name → (model, tokenizer)``: seconds and messages per second of greedy ``decode_pairs`` over
    ``pairs`` in four modes — with first-line stopping (finished rows leave the batch, the output layer screened) in
    batches of ``batch_size``, the same with the whole float32 output layer at every step, the same as the first
    with every pair in one batch, and ``generate`` decoding every row to the end in batches of ``batch_size`` — the
    stopping modes' speedups over ``generate`` and how many of their outputs equal its outputs (in one batch the
    token budget follows the longest source of all, so rows that reach it may write more). One untimed batch warms
    each model up first, so that no mode pays for the first call."""
    if not pairs:
        raise ValueError("first_line_stopping needs at least one test pair")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    modes = (("stop_at_first_line", {}, batch_size),
             ("stop_at_first_line_full_output_layer", {"screen_output": False}, batch_size),
             ("stop_at_first_line_one_batch", {}, len(pairs)), ("decode_to_eos", {"stop_early": False}, batch_size))
    stopping_modes = [mode for mode, _, _ in modes[:3]]
    results = []
    for name, (model, tokenizer) in models.items():
        decode_pairs(model, tokenizer, pairs[:batch_size], batch_size=batch_size, progress=False)
        device = next(model.parameters()).device
        outputs, seconds = {}, {}
        for mode, settings, mode_batch in modes:
            _synchronize(device)
            started = time.perf_counter()
            outputs[mode] = decode_pairs(model, tokenizer, pairs, batch_size=mode_batch, progress=False,
                                         translate_fn=partial(translate, **settings))
            _synchronize(device)
            seconds[mode] = time.perf_counter() - started
            log(f"{name} {mode}: {seconds[mode]:.1f} s for {len(pairs)} messages")
        before = outputs["decode_to_eos"]
        speedups = {mode: seconds["decode_to_eos"] / seconds[mode] for mode in stopping_modes}
        target = MIN_BASE_STOP_SPEEDUP if getattr(model, "routed_lora_config", None) is None \
            else MIN_ADAPTER_STOP_SPEEDUP
        results.append({
            "model": name, "messages": len(pairs), "batch_size": batch_size, "seconds": seconds,
            "messages_per_s": {mode: len(pairs) / s for mode, s in seconds.items()},
            "speedup": speedups["stop_at_first_line"],
            "speedup_full_output_layer": speedups["stop_at_first_line_full_output_layer"],
            "speedup_one_batch": speedups["stop_at_first_line_one_batch"],
            "target_speedup": target, "met": speedups["stop_at_first_line"] >= target,
            "identical_outputs": {mode: sum(a == b for a, b in zip(outputs[mode], before)) for mode in stopping_modes},
            "differing": [{"mode": mode, "index": i, "output": a, "decode_to_eos": b} for mode in stopping_modes
                          for i, (a, b) in enumerate(zip(outputs[mode], before)) if a != b]})
    return results


def write_decoding_plot(result: dict, path) -> None:
    """PNG: the routed-decoding ratios to the unpatched model, and messages per second with and without stopping
    at the first line per model (temporary file + rename)."""
    plt = pyplot("decoding plots")
    overhead, stopping = result["routed_decode_overhead"], result["first_line_stopping"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    names = list(overhead["ratio_to_unpatched"])
    colors = {"unpatched": "#999999", "lora_route_unilora": "#1f77b4", "lora_route_unilora_torch": "#9467bd",
              "peft_mixed": "#d62728"}
    left.bar([name.replace("lora_route_", "") for name in names], [overhead["ratio_to_unpatched"][n] for n in names],
             color=[colors[n] for n in names])
    left.axhline(overhead["target_ratio"], color="black", linestyle="--", linewidth=1, label="target")
    left.set_ylabel("decode time × unpatched model")
    left.set_title(f"{overhead['prompts']} prompts × {overhead['new_tokens']} tokens, {overhead['directions']} "
                   "directions mixed", fontsize=9)
    left.legend(fontsize=8)
    models = [row["model"] for row in stopping]
    bars = (("decode_to_eos", "generate, every row to EOS"),
            ("stop_at_first_line_full_output_layer", "first line, full float32 output layer"),
            ("stop_at_first_line", "first line, screened output layer (evaluation)"),
            ("stop_at_first_line_one_batch", "the same, all messages in one batch"))
    for number, (mode, label) in enumerate(bars):
        right.bar([i + (number - 1.5) * 0.2 for i in range(len(models))],
                  [row["messages_per_s"][mode] for row in stopping], width=0.2, label=label)
    right.set_xticks(range(len(models)), labels=models)
    right.set_ylabel("messages / s")
    right.set_title("greedy decoding of the demo test set", fontsize=9)
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    fig.suptitle(result["label"], fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
