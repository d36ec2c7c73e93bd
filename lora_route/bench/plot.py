"""The run's PNG: per MLP shape, time × base layer of every provider for forward, forward+backward and decode
(grouped bars, log scale); then the training step's tokens/s and memory ratio; then the host time per routed call
per layer (µs, with a prebuilt plan and without). Written atomically."""
from __future__ import annotations

import os
from pathlib import Path

from lora_route.common.plotting import pyplot, save_png

PROVIDER_COLORS = {
    "base": "#7f7f7f", "peft_single": "#1f77b4", "peft_mixed": "#d62728", "naive_loop": "#ff7f0e",
    "lora_route_triton": "#2ca02c", "lora_route_triton_fused": "#98df8a", "lora_route_cuda": "#17becf",
    "lora_route_cpu": "#e377c2", "lora_route_torch": "#9467bd",
    "lora_route_lora": "#bcbd22", "lora_route_molora_static": "#2ca02c", "lora_route_crosslora": "#8c564b",
}


def _axes_style(ax, labels: list[str], ylabel: str, log: bool) -> None:
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel, fontsize=8)
    if log:
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", linewidth=0.8)
    ax.tick_params(axis="y", labelsize=7)


def _grouped_bars(ax, groups: list[str], series: dict[str, list[float | None]], ylabel: str) -> None:
    """One group per label of ``groups``, one bar per series (a missing value leaves a gap); log scale."""
    width = 0.8 / max(1, len(series))
    for offset, (name, values) in enumerate(series.items()):
        xs = [i + offset * width - 0.4 + width / 2 for i, v in enumerate(values) if v is not None]
        ax.bar(xs, [v for v in values if v is not None], width=width, label=name, color=PROVIDER_COLORS.get(name))
    _axes_style(ax, groups, ylabel, log=True)


def _provider_bars(ax, rows: list[dict], key: str, ylabel: str, log: bool) -> None:
    """One bar per training row (``provider[backend]``), coloured by provider."""
    rows = [r for r in rows if r.get(key) is not None]
    labels = [f"{r['provider']}[{r['backend']}]" if r.get("backend") else r["provider"] for r in rows]
    ax.bar(range(len(rows)), [r[key] for r in rows], color=[PROVIDER_COLORS.get(r["provider"]) for r in rows])
    _axes_style(ax, labels, ylabel, log)


def _layer_panel(ax, rows: list[dict], kind: str, title: str) -> None:
    rows = [r for r in rows if r["kind"] == kind and r["provider"] != "base" and r["ratio_to_base"] is not None]
    size = "sequences" if kind == "decode" else "tokens"
    groups = sorted({(r[size], r["popularity"]) for r in rows})
    labels = [f"{n} {'seq' if kind == 'decode' else 'tok'} {p}" for n, p in groups]
    index = {(r[size], r["popularity"], r["provider"]): r["ratio_to_base"] for r in rows}
    providers = [p for p in PROVIDER_COLORS if any(r["provider"] == p for r in rows)]
    _grouped_bars(ax, labels, {p: [index.get((n, pop, p)) for n, pop in groups] for p in providers},
                  "time × base layer")
    ax.set_title(title, fontsize=9)


def _host_panel(ax, rows: list[dict], layer: str) -> None:
    """µs per call of every measured provider on one layer: a bar with a prebuilt plan, a paler one without (the
    base layer has one bar)."""
    rows = [r for r in rows if r["layer"] == layer and r["status"] == "ok"]
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    times = {(r["provider"], r["plan"]): r["host_us"] for r in rows}
    for offset, (plan, label, alpha) in enumerate(((True, "with a plan", 1.0), (False, "without", 0.45))):
        xs = [i + (offset - 0.5) * 0.4 for i, p in enumerate(providers) if (p, plan) in times]
        heights = [times[(p, plan)] for p in providers if (p, plan) in times]
        ax.bar(xs, heights, width=0.4, color="#1f77b4", alpha=alpha, label=f"host time {label}")
    base = [times[(p, None)] for p in providers if (p, None) in times]
    ax.bar([i for i, p in enumerate(providers) if (p, None) in times], base, width=0.4, color="#7f7f7f")
    _axes_style(ax, providers, "µs per call", log=False)
    ax.set_yscale("log")
    ax.set_title(f"host time per routed_linear call, {layer} (d_in × d_out)", fontsize=9)


def write_plot_atomic(result: dict, path: str | os.PathLike) -> Path:
    """Render ``result`` (the run's JSON dict) to a PNG at ``path`` (temporary file + ``os.replace``)."""
    plt = pyplot("benchmark plots")
    layer = result["layer_results"]
    training = [r for r in result["training_results"] if r["status"] == "ok"]
    host = [r for r in (result.get("host_overhead") or {}).get("results", []) if r["status"] == "ok"]
    host_layers = list(dict.fromkeys(r["layer"] for r in host))[:3]
    shapes = list(dict.fromkeys(r["shape"] for r in layer))
    rows = len(shapes) + (1 if training else 0) + (1 if host_layers else 0)
    height = 4.2 * max(rows, 1)
    fig, axes = plt.subplots(max(rows, 1), 3, figsize=(18, height), squeeze=False)
    for row, shape in enumerate(shapes):
        shape_rows = [r for r in layer if r["shape"] == shape]
        for col, kind in enumerate(("forward", "forward_backward", "decode")):
            _layer_panel(axes[row][col], shape_rows, kind, f"{shape}: {kind.replace('_', ' + ')}")
    if training:
        panels = axes[len(shapes)]
        _provider_bars(panels[0], training, "tokens_per_s", "tokens / s", log=False)
        panels[0].set_title("training step: throughput", fontsize=9)
        _provider_bars(panels[1], training, "time_ratio_to_single_lora", "step time × single LoRA", log=True)
        panels[1].set_title("training step: time × single-LoRA step", fontsize=9)
        metric = training[0]["memory_metric"]
        _provider_bars(panels[2], training, "memory_ratio_to_single_lora", f"{metric} × single LoRA", log=False)
        panels[2].set_title(f"training step: {metric} × single-LoRA step", fontsize=9)
    if host_layers:
        panels = axes[len(shapes) + bool(training)]
        for col, ax in enumerate(panels):
            if col < len(host_layers):
                _host_panel(ax, host, host_layers[col])
            else:
                ax.axis("off")
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="upper center",
                   bbox_to_anchor=(0.5, 1 - 0.6 / height), fontsize=8, ncol=len(handles))
    env = result["environment"]
    fig.suptitle(f"{result['label']}\n{env['device_name']} · {result['settings']['dtype']} · torch {env['torch']} · "
                 f"triton {env['triton']} · CUDA {env['torch_cuda']}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 1.0 / height))  # room for the two title lines and the legend (inches)
    return save_png(fig, path)
