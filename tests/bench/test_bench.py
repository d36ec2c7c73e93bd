"""The benchmark's plumbing on CPU: the minimal smoke run's JSON schema, PNG and text summary, the host-overhead
section, the graph fields, the time budget, the targets' met logic, the naive loop and the popularity draws. Timings
are never checked."""
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lora_route.bench.budget import TimeBudget
from lora_route.bench.config import LAYER_PROVIDERS, PRESETS, BenchPreset, HostOverheadSpec, Workload
from lora_route.bench.host_overhead import HOST_PROVIDERS
from lora_route.bench.layer_bench import AGREEMENT_TOLERANCE, LayerBench
from lora_route.bench.naive import group_rows, naive_loop_linear
from lora_route.bench.report import auto_preference
from lora_route.bench.runner import run_benchmark, write_results
from lora_route.bench.summary import format_summary
from lora_route.bench.targets import TARGETS, evaluate_targets
from lora_route.bench.timing import Timer, summarize
from lora_route.bench.workloads import row_adapters, sequence_adapters
from lora_route.cli.bench import main as bench_main
from lora_route.kernels import cpu_ext, reference
from lora_route.kernels.plan import shape_class

LAYER_KEYS = {"shape", "hidden", "ffn", "rank", "num_adapters", "workload", "kind", "tokens", "sequences", "seq_len",
              "popularity", "active_adapters", "provider", "status", "reason", "timing", "median_ms",
              "max_rel_error", "agrees_with_reference", "ratio_to_base", "ratio_to_peft_single", "ratio_to_peft_mixed",
              "graph_status", "graph_reason", "graph_median_ms", "graph_max_rel_error", "graph_ratio_to_base"}
TRAIN_KEYS = {"provider", "backend", "tokens", "status", "reason", "step_median_ms", "time_ratio_to_single_lora",
              "memory_metric", "memory_ratio_to_single_lora"}
ROOT = Path(__file__).resolve().parents[2]
# The Triton interpreter takes seconds per call; the smoke test leaves it to the committed CPU smoke run.
SMOKE_LAYER_PROVIDERS = tuple(p for p in LAYER_PROVIDERS if p not in ("lora_route_triton", "lora_route_triton_fused"))
# The backends a CPU smoke run measures: the torch backend, and the CPU kernels where lora_route._C is built.
CPU_BACKENDS = {"torch", "cpu"} if cpu_ext.available() else {"torch"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    result = run_benchmark(PRESETS["minimal"], device="cpu", layer_providers=SMOKE_LAYER_PROVIDERS, log=lambda _: None)
    out = tmp_path_factory.mktemp("bench")
    json_path, png_path, text_path = write_results(result, out)
    return result, json_path, png_path, text_path


def test_smoke_run_writes_json_png_and_summary(smoke_run):
    result, json_path, png_path, text_path = smoke_run
    assert json_path.name == "cpu_minimal.json" and png_path.name == "cpu_minimal.png"
    assert text_path.name == "cpu_minimal.txt" and text_path.read_text() == format_summary(result) + "\n"
    assert json.loads(json_path.read_text()) == result
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(json_path.parent.glob(".*")), "a temporary file was left behind"
    for path in (json_path, png_path, text_path):
        assert path.stat().st_mode & 0o044, "outputs must be readable by others"
    assert result["kind"] == "cpu_smoke" and result["performance_evidence"] is False
    assert "CPU SMOKE RUN" in result["label"]
    env = result["environment"]
    for key in ("device_name", "torch", "triton", "torch_cuda", "peft", "transformers", "lora_route_backends"):
        assert key in env


def test_smoke_host_overhead_section(smoke_run):
    result, *_ = smoke_run
    section = result["host_overhead"]
    spec = PRESETS["minimal"].host_overhead
    assert section["spec"]["layers"] == [list(layer) for layer in spec.layers] and section["dtype"] == "float32"
    rows = {(r["layer"], r["provider"], r["plan"]): r for r in section["results"]}
    assert len(rows) == len(section["results"]) == len(spec.layers) * (2 * len(HOST_PROVIDERS) - 1)
    for (layer, provider, plan), row in rows.items():
        if provider in ("triton", "triton_fused", "cuda"):  # never the Triton interpreter's times
            assert row["status"] == "skipped" and "CUDA only" in row["reason"] and row["host_us"] is None
        elif provider == "cpu" and not cpu_ext.available():
            assert row["status"] == "skipped" and "the cpu backend is not available" in row["reason"]
        else:
            assert row["status"] == "ok" and row["host_us"] > 0 and row["wall_us"] is None, row
            assert row["ratio_to_f_linear"] == pytest.approx(row["host_us"] / rows[(layer, "f_linear", None)]["host_us"])
            assert (plan is None) == (provider == "f_linear")


def test_smoke_decode_rows_say_why_they_have_no_graph_replay(smoke_run):
    result, *_ = smoke_run
    for row in result["layer_results"]:
        assert row["graph_status"] == "skipped" and row["graph_median_ms"] is None and row["graph_ratio_to_base"] is None
        if row["status"] != "ok":
            assert row["graph_reason"] == "the eager call did not run"
        elif row["kind"] == "decode":
            assert row["graph_reason"] == "CUDA graphs need a CUDA device; this run is on cpu"
        else:
            assert row["graph_reason"] == "graph replay is measured for decode workloads only"


def test_summary_fits_one_screen_and_names_every_target(smoke_run):
    result, *_ = smoke_run
    text = format_summary(result)
    lines = text.splitlines()
    assert len(lines) <= 60 and max(map(len, lines)) <= 125
    assert lines[0].startswith("== CPU SMOKE RUN") and "versions: python" in text
    for target in result["targets"]:
        assert target["name"] in text
    assert "peft_mixed  forward_4096           H100    5.8x" in text
    assert re.search(r"^auto_preference \(fastest first\): decode: (torch|cpu)", text, flags=re.MULTILINE)
    assert "decode on tiny_gemma_mlp, uniform popularity" in text
    assert "host time per routed_linear call: 64 rows, random over 30 A x 30 B experts, r=16, float32\n" in text
    assert "  µs per call, with a prebuilt plan | without, per layer (d_in x d_out):" in text
    assert re.search(r"^  torch_segments +[0-9.]+ \| [0-9.]+$", text, flags=re.MULTILINE)
    assert "provider errors: 0; skipped:" in text


def test_summary_reads_a_result_of_the_first_schema(smoke_run):
    result, *_ = smoke_run
    old = {key: value for key, value in result.items() if key != "host_overhead"}
    old["layer_results"] = [{k: v for k, v in row.items() if not k.startswith("graph_")}
                            for row in result["layer_results"]]
    text = format_summary(old)
    assert "host overhead: not measured" in text and "decode on tiny_gemma_mlp" in text
    with pytest.raises(ValueError, match="must be a benchmark result dict"):
        format_summary({"layer_results": []})


def test_a_spent_time_budget_skips_what_is_left_and_still_returns_every_row():
    preset = PRESETS["minimal"]
    result = run_benchmark(preset, device="cpu", layer_providers=("base", "lora_route_torch"),
                           train_providers=("lora_route_lora",), time_budget_s=1e-9, log=lambda _: None)
    rows = result["layer_results"] + result["training_results"] + result["host_overhead"]["results"]
    assert len(result["layer_results"]) == 2 * len(preset.workloads())
    assert rows and all(r["status"] == "skipped" and "time budget of 1e-09 s ran out" in r["reason"] for r in rows)
    assert result["settings"]["time_budget_s"] == 1e-9 and result["settings"]["time_budget_spent"] is True
    assert all(plan["timing"] is None for plan in result["plan_results"])
    assert "(" + str(len(rows)) + " for the time budget)" in format_summary(result)
    with pytest.raises(ValueError, match="a time budget must be > 0 seconds"):
        TimeBudget(0)


def test_sections_run_only_when_asked_for_and_present():
    preset = PRESETS["minimal"]
    result = run_benchmark(preset, device="cpu", run_layers=False, run_training=False, log=lambda _: None)
    assert result["layer_results"] == [] and result["training_results"] == [] and result["training_model"] is None
    assert result["host_overhead"]["results"]
    with pytest.raises(ValueError, match="nothing to run: preset 'host-overhead' has none of the sections"):
        run_benchmark(PRESETS["host-overhead"], device="cpu", run_host_overhead=False, log=lambda _: None)
    with pytest.raises(ValueError, match="measures nothing"):
        BenchPreset(name="empty", shapes=(), prefill_tokens=0, prefill_seq_len=1, decode_sequences=(),
                    popularities=(), train=None, dtype="float32", reps=1, warmup=0)
    with pytest.raises(ValueError, match="calls must be >= 1"):
        HostOverheadSpec(calls=0)
    with pytest.raises(ValueError, match="layers must be"):
        HostOverheadSpec(layers=((64,),))


def test_the_quick_gpu_preset_holds_what_the_targets_need():
    quick, full = PRESETS["gpu-quick"], PRESETS["gpu"]
    assert [shape.name for shape in quick.shapes] == ["llama3_8b_mlp"] and quick.train == full.train
    workloads = {w.name for w in quick.workloads()}
    assert {t.workload for t in TARGETS if t.workload} == workloads
    assert set(quick.popularities) == {"uniform", "zipf"} and quick.dtype == full.dtype
    assert quick.rep_ms < full.rep_ms and quick.train_rep_ms < full.train_rep_ms


def test_smoke_layer_results_schema_and_agreement(smoke_run):
    result, *_ = smoke_run
    rows = result["layer_results"]
    workloads = PRESETS["minimal"].workloads()
    assert len(rows) == len(workloads) * len(SMOKE_LAYER_PROVIDERS)
    for row in rows:
        assert LAYER_KEYS <= row.keys(), LAYER_KEYS - row.keys()
        assert row["status"] in ("ok", "skipped"), row
        if row["status"] == "ok":
            assert row["agrees_with_reference"], row
            assert row["median_ms"] > 0 and row["ratio_to_base"] > 0
        else:
            assert row["reason"] and row["median_ms"] is None and row["ratio_to_base"] is None
    by_provider = {}
    for row in rows:
        by_provider.setdefault((row["provider"], row["kind"]), set()).add(row["status"])
    assert by_provider[("lora_route_cuda", "forward")] == {"skipped"}  # no compiled extension on CPU
    assert by_provider[("peft_mixed", "forward")] == {"ok"}
    assert by_provider[("peft_mixed", "forward_backward")] == {"skipped"}
    assert by_provider[("lora_route_torch", "forward_backward")] == {"ok"}
    assert by_provider[("lora_route_cpu", "forward_backward")] == ({"ok"} if cpu_ext.available() else {"skipped"})
    assert all(r["ratio_to_base"] == 1.0 for r in rows if r["provider"] == "base")
    peft_train = next(r for r in rows if r["provider"] == "peft_mixed" and r["kind"] == "forward_backward")
    assert "training mode" in peft_train["reason"]
    assert len(result["plan_results"]) == len(workloads)
    choices = result["fastest_backends"]
    assert len(choices) == len(workloads) and all(c["fastest"] in CPU_BACKENDS for c in choices)  # the ones run
    assert all(c["shape_class"] == shape_class(c["rows"]) for c in choices)
    # the minimal preset's calls are all decode-sized
    assert set(result["auto_preference"]["decode"]["order"]) == CPU_BACKENDS
    assert result["auto_preference"]["prefill_or_training"]["order"] == []


def test_auto_preference_orders_backends_by_geometric_mean_slowdown():
    def row(rows, **medians):
        return {"shape_class": shape_class(rows), "median_ms": medians}

    fastest = [row(64, triton=2.0, cuda=1.0, torch=8.0), row(256, triton=1.0, cuda=1.5, torch=4.0),
               row(4096, triton=1.0, cuda=4.0, torch=5.0), row(4096, triton=3.0, cuda=2.0)]
    preference = auto_preference(fastest)
    decode = preference["decode"]
    assert decode["order"] == ["cuda", "triton", "torch"]  # cuda: sqrt(1 * 1.5) < triton: sqrt(2 * 1)
    assert decode["geomean_slowdown"]["cuda"] == pytest.approx(math.sqrt(1.5))
    prefill = preference["prefill_or_training"]
    assert prefill["order"] == ["triton", "cuda", "torch"]  # triton sqrt(1 * 1.5) < cuda sqrt(4 * 1)
    assert prefill["rows_measured"] == {"triton": 2, "cuda": 2, "torch": 1}


def test_auto_dispatch_follows_the_preference_of_the_calls_shape_class(monkeypatch):
    from lora_route.kernels import dispatch
    from lora_route.kernels.plan import DECODE_MAX_ROWS

    monkeypatch.setattr(dispatch, "unsupported_reason", lambda name, x, rank, weight=None: None)
    monkeypatch.setattr(dispatch, "AUTO_PREFERENCE", {"decode": ("cuda", "triton"), "prefill_or_training": ("triton",)})
    monkeypatch.delenv("LORA_ROUTE_BACKEND", raising=False)

    class CudaTensor:  # the dispatcher reads device and shape only; no GPU needed
        device = torch.device("cuda")

        def __init__(self, *shape):
            self.shape = shape

    assert dispatch.resolve_backend("auto", CudaTensor(DECODE_MAX_ROWS, 8)) == "cuda"
    assert dispatch.resolve_backend("auto", CudaTensor(2, DECODE_MAX_ROWS // 2 + 1, 8)) == "triton"
    monkeypatch.setattr(dispatch, "unsupported_reason",
                        lambda name, x, rank, weight=None: None if name == "torch" else "absent")
    assert dispatch.resolve_backend("auto", CudaTensor(4, 8)) == "torch"


def test_smoke_training_results(smoke_run):
    result, *_ = smoke_run
    rows = result["training_results"]
    for row in rows:
        assert TRAIN_KEYS <= row.keys(), TRAIN_KEYS - row.keys()
        assert row["status"] in ("ok", "skipped"), row
    ran = [r for r in rows if r["status"] == "ok"]
    assert {r["provider"] for r in ran} == {"peft_single", "naive_loop", "lora_route_lora", "lora_route_molora_static",
                                            "lora_route_crosslora"}
    assert all(r["backend"] == "torch" for r in ran if r["provider"].startswith("lora_route_"))
    assert next(r for r in rows if r["provider"] == "peft_mixed")["status"] == "skipped"
    # Every adapter starts at B = 0, so every provider starts from the base model's loss.
    losses = [r["initial_loss"] for r in ran]
    assert max(losses) - min(losses) < 1e-5
    assert all(r["saved_activation_bytes"] > 0 and r["tokens_per_s"] > 0 for r in ran)
    assert min(r["time_ratio_to_single_lora"] for r in ran if r["provider"] in ("peft_single", "lora_route_lora")) == 1.0
    assert result["training_model"]["directions"] == 30
    assert {t["name"] for t in result["targets"]} == {t.name for t in TARGETS}
    for target in result["targets"]:
        assert target["met"] is None and target["conditions_match"] is False  # a CPU run proves no target


def _layer_row(provider, workload, popularity, ratio):
    return {"shape": "llama3_8b_mlp", "workload": workload, "popularity": popularity, "provider": provider,
            "status": "ok", "ratio_to_base": ratio}


def _train_row(provider, backend, time_ratio, memory_ratio):
    return {"provider": provider, "backend": backend, "status": "ok", "time_ratio_to_single_lora": time_ratio,
            "memory_ratio_to_single_lora": memory_ratio, "memory_metric": "peak_allocated_bytes"}


def test_targets_take_worst_popularity_best_backend_and_need_a_hopper_gpu():
    layer = [
        _layer_row("lora_route_triton", "forward_4096", "uniform", 1.08),
        _layer_row("lora_route_cuda", "forward_4096", "uniform", 1.02),
        _layer_row("lora_route_triton", "forward_4096", "zipf", 1.20),
        _layer_row("lora_route_cuda", "forward_4096", "zipf", 1.30),
        _layer_row("peft_mixed", "forward_4096", "zipf", 0.5),  # not a lora_route provider: ignored
        _layer_row("lora_route_cuda", "decode_64", "uniform", 1.25),
    ]
    training = [_train_row("lora_route_molora_static", "triton", 1.05, 1.01),
                _train_row("lora_route_molora_static", "cuda", 1.20, 1.00),
                _train_row("lora_route_crosslora", "triton", 1.08, 1.10)]
    h100 = {"device_name": "NVIDIA H100 80GB HBM3", "device_type": "cuda", "compute_capability": "9.0"}
    targets = {t["name"]: t for t in evaluate_targets(layer, training, h100, "bfloat16")}
    forward = targets["forward_4096_vs_base"]
    assert forward["measured"] == pytest.approx(1.20) and forward["met"] is False
    assert forward["details"]["per_popularity"]["uniform"]["provider"] == "lora_route_cuda"
    assert targets["decode_64_vs_base"]["met"] is True
    assert targets["decode_256_vs_base"]["measured"] is None and targets["decode_256_vs_base"]["met"] is None
    assert targets["train_step_time_vs_single_lora"]["measured"] == pytest.approx(1.08)
    assert targets["train_step_time_vs_single_lora"]["met"] is True
    assert targets["train_step_memory_vs_single_lora"]["measured"] == pytest.approx(1.10)
    assert targets["train_step_memory_vs_single_lora"]["met"] is False
    h200 = {"device_name": "NVIDIA H200", "device_type": "cuda", "compute_capability": "9.0"}
    assert evaluate_targets(layer, training, h200, "bfloat16") == list(targets.values())
    assert all(t["met"] is None for t in evaluate_targets(layer, training, h200, "float16"))
    a100 = {"device_name": "NVIDIA A100-SXM4-80GB", "device_type": "cuda", "compute_capability": "8.0"}
    for target in evaluate_targets(layer, training, a100, "bfloat16"):
        assert target["met"] is None
    assert {t["name"]: t["within_threshold"] for t in evaluate_targets(layer, training, a100, "bfloat16")}[
        "decode_64_vs_base"] is True


def test_naive_loop_matches_reference_and_skips_unrouted_rows():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    weight, bias = torch.randn(9, 12, dtype=torch.float64), torch.randn(9, dtype=torch.float64)
    A, B = torch.randn(4, 3, 12, dtype=torch.float64), torch.randn(4, 9, 3, dtype=torch.float64)
    rows = torch.tensor([3, -1, 0, 0, 2, -1, 3, 1, 1, 0, -1, 2, 3, 3])
    groups = group_rows(rows)
    assert [adapter for adapter, _ in groups] == [0, 1, 2, 3]
    out = naive_loop_linear(x, weight, bias, A, B, groups, 0.5)
    expected = reference.routed_linear(x.reshape(14, 12), weight, bias, A, B, rows, rows, scale=0.5)
    torch.testing.assert_close(out.reshape(14, 9), expected)
    with pytest.raises(ValueError, match="do not fit"):
        naive_loop_linear(x, weight, bias, A[:, :, :5], B, groups, 0.5)


def test_relative_error_flags_a_wrong_route():
    bench = LayerBench(PRESETS["minimal"].shapes[0], torch.device("cpu"), torch.float32, seed=3)
    workload = Workload("forward", 4, 2, "uniform")
    x, dy = bench.inputs(workload, seed=4)
    call = bench.prepare("base", workload, x, dy, torch.zeros(4, dtype=torch.int64))
    output = call.forward()
    assert bench.relative_error(output, x, call.rows) == 0.0
    wrong_rows = torch.zeros(8, dtype=torch.int64)  # the base output checked as if adapter 0 were applied
    assert bench.relative_error(output, x, wrong_rows) > AGREEMENT_TOLERANCE[torch.float32]


def test_popularity_draws():
    uniform = sequence_adapters("uniform", 64, 30, seed=1)
    counts = torch.bincount(uniform, minlength=30)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 64
    assert torch.equal(uniform, sequence_adapters("uniform", 64, 30, seed=1))
    assert torch.equal(sequence_adapters("single", 5, 30, seed=1), torch.zeros(5, dtype=torch.int64))
    zipf = sequence_adapters("zipf", 4000, 30, seed=2)
    zipf_counts = torch.bincount(zipf, minlength=30)
    assert zipf_counts[0] > zipf_counts[1] > zipf_counts[5] and zipf.max() < 30
    assert row_adapters(torch.tensor([2, 0]), 3).tolist() == [2, 2, 2, 0, 0, 0]
    with pytest.raises(ValueError, match="unknown popularity"):
        sequence_adapters("bursty", 4, 30, seed=0)
    with pytest.raises(ValueError, match="decode"):
        Workload("decode", 4, 2, "uniform")


def test_timer_and_summary():
    assert summarize([3.0, 1.0, 2.0]).median_ms == 2.0
    stats = summarize([float(v) for v in range(1, 11)])
    assert stats.p20_ms < stats.median_ms < stats.p80_ms and stats.repetitions == 10
    with pytest.raises(ValueError, match="no timed"):
        summarize([])
    calls = []
    tensor = torch.zeros(2, requires_grad=True)

    def fn():
        assert tensor.grad is None
        calls.append(1)
        (tensor * 2).sum().backward()
    timing = Timer(torch.device("cpu"), reps=4, warmup=2, rep_ms=1, warmup_ms=0).measure(fn, [tensor])
    assert len(calls) == 6 and timing.repetitions == 4


def test_cli_runs_a_layer_only_benchmark(tmp_path, capsys):
    code = bench_main(["--preset", "minimal", "--device", "cpu", "--no-training", "--providers", "base",
                       "lora_route_torch", "--out-dir", str(tmp_path), "--name", "cli_run"])
    assert code == 0
    data = json.loads((tmp_path / "cli_run.json").read_text())
    assert {r["provider"] for r in data["layer_results"]} == {"base", "lora_route_torch"}
    assert data["training_results"] == [] and (tmp_path / "cli_run.png").exists()
    out = capsys.readouterr().out
    assert out.startswith((tmp_path / "cli_run.txt").read_text()) and "forward_4096_vs_base" in out
    assert f"wrote {tmp_path / 'cli_run.txt'}" in out
    assert bench_main(["--preset", "minimal", "--shapes", "no_such_shape", "--out-dir", str(tmp_path)]) == 2
    assert "run_benchmarks: error: preset 'minimal' has no shape ['no_such_shape']" in capsys.readouterr().err


def test_the_benchmark_script_runs_the_triton_kernels_in_the_interpreter_without_a_gpu(tmp_path):
    """The script used to import the kernels before the run set TRITON_INTERPRET, so every Triton row was an error."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernels run on it")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "benchmarks/run_benchmarks.py", "--preset", "minimal", "--device", "cpu",
                           "--no-training", "--no-host-overhead", "--providers", "base", "lora_route_triton",
                           "--out-dir", str(tmp_path), "--name", "script"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "script.json").read_text())["layer_results"]
    triton = [r for r in rows if r["provider"] == "lora_route_triton"]
    assert triton and all(r["status"] == "ok" and r["agrees_with_reference"] for r in triton), triton[0]


def test_a_failing_provider_is_recorded_and_the_run_goes_on():
    from lora_route.bench.runner import _measure_layer_provider

    class BrokenBench:
        device = torch.device("cpu")

        def prepare(self, *args):
            raise RuntimeError("kernel launch failed")

    timer = Timer(torch.device("cpu"), reps=1, warmup=0, rep_ms=1, warmup_ms=0)
    row = _measure_layer_provider(BrokenBench(), "lora_route_torch", None, None, None, None, timer, torch.float32,
                                  TimeBudget(None))
    assert row["status"] == "error" and row["reason"] == "RuntimeError: kernel launch failed"
    assert row["median_ms"] is None and row["graph_status"] == "skipped"


def test_a_failed_capture_is_recorded_and_the_run_goes_on():
    """A graph capture that raises becomes an error row (here the call fails, or the CPU machine has no CUDA)."""
    from lora_route.bench.runner import _measure_graph

    class CudaBench:
        device = torch.device("cuda")

        def synchronising_reason(self, provider):
            return None

    class Call:
        rows = None

        @staticmethod
        def run():
            raise RuntimeError("operation not permitted when stream is capturing")

    timer = Timer(torch.device("cpu"), reps=1, warmup=0, rep_ms=1, warmup_ms=0)
    decode = Workload("decode", 4, 1, "uniform")
    fields = _measure_graph(CudaBench(), "lora_route_torch", decode, Call(), None, timer, TimeBudget(None))
    assert fields["graph_status"] == "error" and fields["graph_reason"] and fields["graph_median_ms"] is None
    spent = TimeBudget(1e-9)
    assert _measure_graph(CudaBench(), "base", decode, Call(), None, timer, spent)["graph_reason"] == spent.skip_reason


def test_the_torch_backends_segments_formulation_is_not_captured():
    from lora_route.bench.config import TINY_GEMMA_MLP

    bench = LayerBench(TINY_GEMMA_MLP, torch.device("cpu"), torch.float32, seed=0)  # 30 adapters of rank 4, d = 48
    reason = bench.synchronising_reason("lora_route_torch")
    assert "segments formulation on gate_proj, up_proj, down_proj" in reason
    assert bench.synchronising_reason("lora_route_triton") is None
    few = LayerBench(dataclasses.replace(TINY_GEMMA_MLP, num_adapters=2), torch.device("cpu"), torch.float32, seed=0)
    assert few.synchronising_reason("lora_route_torch") is None


@pytest.mark.cuda
def test_minimal_run_on_gpu_runs_every_available_backend(tmp_path):
    result = run_benchmark(PRESETS["minimal"], device="cuda", log=lambda _: None)
    write_results(result, tmp_path)
    assert result["kind"] == "gpu" and result["performance_evidence"] is True
    rows = result["layer_results"] + result["training_results"]
    assert not [r for r in rows if r["status"] == "error"]
    triton_rows = [r for r in result["layer_results"] if r["provider"] == "lora_route_triton"]
    assert triton_rows and all(r["status"] == "ok" and r["agrees_with_reference"] for r in triton_rows)
    assert all(r["peak_allocated_bytes"] > 0 for r in result["training_results"] if r["status"] == "ok")
    replayed = [r for r in result["layer_results"] if r["kind"] == "decode" and r["status"] == "ok"
                and r["provider"] in ("base", "lora_route_triton", "lora_route_triton_fused", "lora_route_cuda")]
    assert replayed and all(r["graph_status"] == "ok" and r["graph_median_ms"] > 0 for r in replayed), replayed
    assert all(r["graph_max_rel_error"] <= AGREEMENT_TOLERANCE[torch.float32] for r in replayed)
    host = [r for r in result["host_overhead"]["results"] if r["provider"] in ("f_linear", "triton", "triton_fused")]
    assert host and all(r["status"] == "ok" and r["wall_us"] > 0 for r in host), host


def test_plot_of_a_host_overhead_run_draws_its_host_times(monkeypatch, tmp_path):
    """The PNG of a run with host times only used to be three empty panels."""
    from lora_route.bench import plot

    figures = []
    monkeypatch.setattr(plot, "save_png", lambda fig, path: figures.append(fig))
    host = [{"layer": layer, "provider": provider, "plan": plan, "status": "ok", "host_us": us}
            for layer in ("64x64", "640x2048")
            for provider, plan, us in (("f_linear", None, 8.0), ("torch_dense", True, 150.0),
                                       ("torch_dense", False, 230.0), ("cpu", True, 37.0), ("cpu", False, 120.0))]
    host.append({"layer": "64x64", "provider": "cuda", "plan": True, "status": "skipped", "host_us": None})
    result = {"label": "test", "layer_results": [], "training_results": [], "host_overhead": {"results": host},
              "settings": {"dtype": "float32"},
              "environment": {"device_name": "cpu", "torch": "x", "triton": "y", "torch_cuda": None}}
    plot.write_plot_atomic(result, tmp_path / "run.png")
    panels = {ax.get_title(): ax for ax in figures[0].axes}
    for layer in ("64x64", "640x2048"):
        ax = panels[f"host time per routed_linear call, {layer} (d_in × d_out)"]
        assert sorted(round(bar.get_height()) for bar in ax.patches) == [8, 37, 120, 150, 230]
        assert [label.get_text() for label in ax.get_xticklabels()] == ["f_linear", "torch_dense", "cpu"]
