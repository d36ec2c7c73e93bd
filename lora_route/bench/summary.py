"""A benchmark result as one screen of text: device and versions, every target against its threshold, the PEFT and
naive-loop reference ratios beside this run's, the measured backend preference, decode eager vs replayed from a CUDA
graph, the host time per routed call, and what failed. Reads results of every schema version (missing sections are
said to be missing)."""
from __future__ import annotations

from lora_route.bench.targets import TARGET_DEVICE, TARGET_DTYPE

FIRST_ERRORS = 3
WIDTH = 125


def _number(value, digits: int = 3, unit: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _yes_no(value) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def _header(result: dict) -> list[str]:
    env, settings = result["environment"], result["settings"]
    capability = f", compute capability {env['compute_capability']}" if env.get("compute_capability") else ""
    budget = settings.get("time_budget_s")
    budget_text = "" if budget is None else (f" · time budget {budget:g} s"
                                             + (" (ran out)" if settings.get("time_budget_spent") else ""))
    backends = " ".join(f"{name}={_yes_no(ok)}" for name, ok in env.get("lora_route_backends", {}).items())
    return [
        f"== {result['label']} ==",
        f"device: {env['device_name']} ({env['device_type']}{capability})",
        f"preset {settings['preset']['name']} · {settings['dtype']} · {result['created_utc']} · "
        f"{result['duration_s']} s{budget_text} · git {(env.get('git_commit') or '?')[:10]}",
        f"versions: python {env.get('python')} · torch {env.get('torch')} (CUDA {env.get('torch_cuda')}) · "
        f"triton {env.get('triton')} · transformers {env.get('transformers')} · peft {env.get('peft')}",
        f"backends: {backends}",
    ]


def _best(target: dict) -> str:
    details = target.get("details", {})
    if "per_popularity" in details:
        return ", ".join(f"{pop}: {v['provider'].removeprefix('lora_route_')} {v['ratio_to_base']:.3f}"
                         for pop, v in details["per_popularity"].items())
    return ", ".join(f"{method.removeprefix('lora_route_')}[{v['backend']}]"
                     for method, v in details.get("mixed", {}).items())


def _targets(result: dict) -> list[str]:
    targets = result.get("targets", [])
    matches = sum(t["conditions_match"] for t in targets)
    lines = [f"targets (met only on a {TARGET_DEVICE}, {TARGET_DTYPE}; conditions match for {matches} of "
             f"{len(targets)}):",
             f"  {'target':34} {'threshold':>9} {'measured':>9} {'within':>6} {'met':>4}  best per popularity / method"]
    for target in targets:
        lines.append(f"  {target['name']:34} {'<= ' + format(target['threshold'], 'g'):>9} "
                     f"{_number(target['measured']):>9} {_yes_no(target['within_threshold']):>6} "
                     f"{_yes_no(target['met']):>4}  {_best(target)}"[:WIDTH].rstrip())
    return lines


def _references(result: dict) -> list[str]:
    rows = result.get("h100_reference", [])
    if not rows:
        return []
    return ["reference ratios to base (H100, peft 0.21) beside this run (uniform popularity):"] + [
        f"  {r['provider']:11} {r['workload']:22} H100 {r['reference_ratio_to_base_h100']:>6.1f}x   "
        f"here {_number(r['measured_ratio_to_base'], 2, 'x')}" for r in rows]


def _preference(result: dict) -> list[str]:
    preference = result.get("auto_preference") or {}
    parts = [f"{name}: {' > '.join(entry['order']) or 'nothing measured'}" for name, entry in preference.items()]
    return [f"auto_preference (fastest first): {' · '.join(parts) or 'n/a'}"]


def _decode(result: dict) -> list[str]:
    rows = [r for r in result.get("layer_results", []) if r["kind"] == "decode"]
    if not rows:
        return ["decode: not measured"]
    shape = next((t["details"].get("shape") for t in result.get("targets", []) if t["details"].get("shape")),
                 rows[0]["shape"])
    popularities = list(dict.fromkeys(r["popularity"] for r in rows if r["shape"] == shape))
    popularity = "uniform" if "uniform" in popularities else popularities[0]
    rows = [r for r in rows if r["shape"] == shape and r["popularity"] == popularity]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    cells = {(r["provider"], r["workload"]): r for r in rows}

    def cell(row: dict | None) -> str:
        if row is None or row["status"] != "ok":
            return row["status"] if row else "-"
        if row["provider"] == "base":
            return f"{row['median_ms']:.3f}/{_number(row.get('graph_median_ms'))} ms"
        return f"{_number(row['ratio_to_base'], 2)}/{_number(row.get('graph_ratio_to_base'), 2)}"

    lines = [f"decode on {shape}, {popularity} popularity: time x base, eager/graph replay (base: ms eager/graph)",
             f"  {'provider':24}" + "".join(f"{w:>17}" for w in workloads)]
    for provider in dict.fromkeys(r["provider"] for r in rows):
        lines.append(f"  {provider:24}" + "".join(f"{cell(cells.get((provider, w))):>17}" for w in workloads))
    graph_errors = [r for r in result.get("layer_results", []) if r.get("graph_status") == "error"]
    if graph_errors:
        first = graph_errors[0]
        lines.append(f"  graph capture errors: {len(graph_errors)}; first: {first['provider']} {first['shape']} "
                     f"{first['workload']}: {first['graph_reason']}"[:WIDTH])
    return lines


def _host_overhead(result: dict) -> list[str]:
    section = result.get("host_overhead")
    if not section:
        return ["host overhead: not measured"]
    spec = section["spec"]
    rows = section["results"]
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    wall = any(r["wall_us"] is not None for r in rows)
    unit = "host µs (wall µs)" if wall else "µs"
    cells = {(r["provider"], r["layer"], r["plan"]): r for r in rows}

    def cell(row: dict | None) -> str:
        if row is None:
            return ""
        if row["status"] != "ok":
            return row["status"]
        return f"{row['host_us']:.1f}" + (f" ({row['wall_us']:.1f})" if row["wall_us"] is not None else "")

    lines = [f"host time per routed_linear call: {spec['rows']} rows, random over {spec['num_a']} A x {spec['num_b']} "
             f"B experts, r={spec['rank']}, {section['dtype']}",
             f"  {unit} per call, with a prebuilt plan | without, per layer (d_in x d_out):",
             f"  {'provider':16}" + "".join(f"{layer:>36}" for layer in layers)]
    for provider in dict.fromkeys(r["provider"] for r in rows):
        parts = []
        for layer in layers:
            if provider == "f_linear":
                parts.append(f"{cell(cells.get((provider, layer, None))):>36}")
            else:
                pair = f"{cell(cells.get((provider, layer, True)))} | {cell(cells.get((provider, layer, False)))}"
                parts.append(f"{pair:>36}")
        lines.append(f"  {provider:16}" + "".join(parts))
    return lines


def _problems(result: dict) -> list[str]:
    host = (result.get("host_overhead") or {}).get("results", [])
    named = ([(f"{r['provider']} {r['shape']} {r['workload']} {r['popularity']}", r) for r in result["layer_results"]]
             + [(f"train {r['provider']}[{r.get('backend')}]", r) for r in result["training_results"]]
             + [(f"host {r['provider']} {r['layer']}", r) for r in host])
    errors = [(name, r) for name, r in named if r["status"] == "error"]
    skipped = [r for _, r in named if r["status"] == "skipped"]
    budget = result["settings"].get("time_budget_s")
    out_of_time = sum("time budget" in (r["reason"] or "") for r in skipped) if budget is not None else 0
    lines = [f"provider errors: {len(errors)}; skipped: {len(skipped)}"
             + (f" ({out_of_time} for the time budget)" if out_of_time else "")]
    lines += [f"  error: {name}: {r['reason']}"[:WIDTH] for name, r in errors[:FIRST_ERRORS]]
    return lines


def format_summary(result: dict) -> str:
    """The one-screen text of a benchmark ``result`` (the dict of :func:`lora_route.bench.run_benchmark`)."""
    if not isinstance(result, dict) or "environment" not in result or "settings" not in result:
        raise ValueError("result must be a benchmark result dict (with 'environment' and 'settings')")
    sections = [_header(result), _targets(result), _references(result), _preference(result), _decode(result),
                _host_overhead(result), _problems(result)]
    return "\n".join(line for section in sections for line in section)
