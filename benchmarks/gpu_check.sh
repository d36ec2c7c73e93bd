#!/usr/bin/env bash
# GPU first light: everything a lent GPU machine should run, as one command from the repository root.
#
#   benchmarks/gpu_check.sh OUT_DIR [--quick]
#
# Steps, each announced by a timestamped line "[gpu_check HH:MM:SS] step N/5: ..." (a run cut off still tells how far
# it got) and each one's exit status recorded in OUT_DIR/steps.tsv; a failed step does not stop the next:
#   1 environment   nvidia-smi -> nvidia-smi.txt; python, torch, triton, transformers, peft, GPU -> environment.txt
#   2 build         lora_route._C against the torch installed here (build.log); falls back to the pure-Python
#                   package when the CUDA build fails, so that the later steps still run
#   3 tests         the cuda-marked tests of CUDA_TEST_PATHS (pytest-cuda.log, JUnit XML pytest-cuda.xml)
#   4 benchmark     benchmarks/run_benchmarks.py, preset gpu (gpu-quick with --quick) -> bench_<preset>.json/.png/.txt
#   5 summary       the steps and the benchmark's one-screen summary, printed and saved as summary.txt
# The whole output is also in OUT_DIR/gpu_check.log. Exit status: 0 when every step passed, 1 otherwise, 2 for bad
# arguments.
#
# Time: the run keeps within GPU_CHECK_BUDGET_S seconds (default 470, under 8 minutes; 360 with --quick): the build
# may take up to 300 s, the tests up to 180 s (90 s with --quick, 120 s / 60 s per test) while leaving the benchmark at
# least 150 s (120 s), and the benchmark gets what remains, passed on as its --time-budget-s so that it writes its
# results in time. The tests are stopped with SIGINT at their limit, so pytest still writes its JUnit XML.
# Environment: PYTHON (default python3), GPU_CHECK_ARCH (TORCH_CUDA_ARCH_LIST of the build, default 9.0),
# GPU_CHECK_BUDGET_S, CUDA_HOME (default /usr/local/cuda when that folder exists).
set -u -o pipefail

# The test files holding every cuda-marked test (tests/test_gpu_image.py checks this list against the suite).
CUDA_TEST_PATHS="tests/kernels/test_cuda_extension.py tests/kernels/test_cuda_graphs.py tests/kernels/test_ops_grid.py
tests/bench/test_bench.py"
STEPS=5

usage="usage: benchmarks/gpu_check.sh OUT_DIR [--quick]"
if [[ $# -lt 1 || $# -gt 2 || -z "$1" || "$1" == -* ]] || [[ $# -eq 2 && "$2" != "--quick" ]]; then
    echo "$usage" >&2
    exit 2
fi
quick=0
[[ $# -eq 2 ]] && quick=1
mkdir -p "$1" || { echo "gpu_check: cannot create OUT_DIR $1" >&2; exit 2; }
out_dir=$(cd "$1" && pwd)
cd "$(dirname "$0")/.." || exit 2

PYTHON=${PYTHON:-python3}
arch=${GPU_CHECK_ARCH:-9.0}
# The toolkit root for torch's extension builder, where none is set (a wrapper nvcc on PATH can hide it).
if [[ -z "${CUDA_HOME:-}" && -d /usr/local/cuda ]]; then
    export CUDA_HOME=/usr/local/cuda
fi
if (( quick )); then
    preset=gpu-quick budget=${GPU_CHECK_BUDGET_S:-360} tests_cap=90 per_test=60 bench_floor=120
else
    preset=gpu budget=${GPU_CHECK_BUDGET_S:-470} tests_cap=180 per_test=120 bench_floor=150
fi
bench_name=bench_${preset//-/_}
build_cap=300
deadline=$(( $(date +%s) + budget ))

exec > >(tee -a "$out_dir/gpu_check.log") 2>&1
say() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }
remaining() { echo $(( deadline - $(date +%s) )); }
at_least() { (( $1 > $2 )) && echo "$1" || echo "$2"; }
at_most() { (( $1 < $2 )) && echo "$1" || echo "$2"; }

printf 'step\tname\texit_status\tseconds\n' > "$out_dir/steps.tsv"
step_number=0
failed=0
run_step() {  # run_step NAME FUNCTION: announce, run, record the exit status
    local name=$1 started status
    step_number=$(( step_number + 1 ))
    say "step $step_number/$STEPS: $name ($(remaining) s of the budget left)"
    started=$(date +%s)
    "$2"
    status=$?
    printf '%s\t%s\t%s\t%s\n' "$step_number" "$name" "$status" "$(( $(date +%s) - started ))" >> "$out_dir/steps.tsv"
    if (( status != 0 )); then
        failed=1
        say "step $step_number/$STEPS: $name FAILED (exit status $status)"
    fi
}

environment() {
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi > "$out_dir/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (exit status $?)"
    else
        echo "nvidia-smi: not found on PATH" | tee "$out_dir/nvidia-smi.txt"
    fi
    timeout 120 "$PYTHON" - > "$out_dir/environment.txt" 2>&1 <<'EOF'
import platform
import sys
from importlib import metadata

print("python", platform.python_version(), sys.executable)
for package in ("torch", "triton", "transformers", "peft", "numpy", "pytest", "pytest-timeout"):
    try:
        print(package, metadata.version(package))
    except metadata.PackageNotFoundError:
        print(package, "not installed")
import torch

print("torch.version.cuda", torch.version.cuda)
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible to torch (torch.cuda.is_available() is False)")
print("device", torch.cuda.get_device_name(), "compute capability", ".".join(map(str, torch.cuda.get_device_capability())))
EOF
    local status=$?
    cat "$out_dir/environment.txt"
    return $status
}

build() {
    local status
    TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$(nproc) LORA_ROUTE_BUILD_CUDA=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        timeout "$build_cap" "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation -e . \
        > "$out_dir/build.log" 2>&1
    status=$?
    if (( status == 0 )); then
        tail -n 1 "$out_dir/build.log"
    else
        grep -m 1 -h -o "LORA_ROUTE_BUILD_CUDA=1 but .*" "$out_dir/build.log" \
            || grep -m 1 -h -E "error:|Error:" "$out_dir/build.log"
        say "the CUDA build failed (exit status $status, see build.log); installing the pure-Python package instead"
        LORA_ROUTE_BUILD_CUDA=0 PIP_DISABLE_PIP_VERSION_CHECK=1 \
            "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation -e . >> "$out_dir/build.log" 2>&1 \
            || say "the pure-Python install failed too (see build.log)"
    fi
    timeout 120 "$PYTHON" - <<'EOF' || status=1
import sys

try:
    import lora_route._C  # noqa: F401 - the compiled extension, present only where it was built
except ImportError as error:
    sys.exit(f"lora_route._C does not import: {error}")
import lora_route

backends = lora_route.backends()
print("lora_route._C imports; lora_route.backends():", backends)
if not backends["cuda"]:
    sys.exit("the cuda backend is not available: lora_route._C imports but torch sees no CUDA GPU")
EOF
    return $status
}

cuda_tests() {
    local -a timeout_option
    local status limit
    if "$PYTHON" -c "import pytest_timeout" 2> /dev/null; then
        timeout_option=("--timeout=$per_test")
    else
        timeout_option=(-o "faulthandler_timeout=$per_test")
    fi
    limit=$(at_least "$(at_most "$tests_cap" $(( $(remaining) - bench_floor )))" 30)
    say "pytest -m cuda on: ${CUDA_TEST_PATHS//$'\n'/ } (at most $limit s, ${timeout_option[*]})"
    # shellcheck disable=SC2086 # CUDA_TEST_PATHS is a whitespace-separated list of paths
    timeout -s INT --kill-after=15 "$limit" "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider "${timeout_option[@]}" \
        --junitxml="$out_dir/pytest-cuda.xml" $CUDA_TEST_PATHS 2>&1 | tee "$out_dir/pytest-cuda.log"
    status=$?
    if (( status == 0 )) && ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
        echo "no CUDA GPU visible: every cuda-marked test was skipped"
        status=1
    fi
    return $status
}

benchmark() {
    local left budget_s
    left=$(remaining)
    budget_s=$(at_least $(( left - 45 )) 30)
    say "benchmark preset $preset, time budget $budget_s s"
    timeout --kill-after=15 $(( budget_s + 30 )) "$PYTHON" benchmarks/run_benchmarks.py --preset "$preset" \
        --device cuda --out-dir "$out_dir" --name "$bench_name" --time-budget-s "$budget_s"
}

summary() {
    local text="$out_dir/$bench_name.txt" status=0
    {
        echo "gpu_check $preset: steps (exit status, seconds)"
        tail -n +2 "$out_dir/steps.tsv"
        [[ -f "$out_dir/pytest-cuda.log" ]] && echo "pytest: $(tail -n 1 "$out_dir/pytest-cuda.log")"
        if [[ -f "$text" ]]; then
            cat "$text"
        else
            echo "no benchmark summary: the benchmark step wrote no $text"
        fi
    } | tee "$out_dir/summary.txt"
    [[ -f "$text" ]] || status=1
    return $status
}

say "gpu_check into $out_dir, preset $preset, budget $budget s, python $PYTHON, arch $arch"
run_step "environment" environment
run_step "build lora_route._C" build
run_step "cuda-marked tests" cuda_tests
run_step "benchmark ($preset)" benchmark
run_step "summary" summary
if (( failed )); then
    say "done: some steps failed (see $out_dir/steps.tsv)"
else
    say "done: every step passed"
fi
exit "$failed"
