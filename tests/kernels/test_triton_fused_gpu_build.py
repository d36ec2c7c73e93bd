"""Every launch of the fused layer compiles to sm_80 (A100) and sm_90 (H100) machine code that fits those GPUs.

``fused_cubins.py`` (run in a subprocess without ``TRITON_INTERPRET``) records the launches that
``fused_linear_forward`` / ``fused_linear_backward`` make over decode and prefill shapes, compiles each one with Triton
for both architectures and reads registers, spills and shared memory from the cubin; the interpreter that runs the
CPU tests says nothing of them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

ARCHS = (80, 90)
KERNELS = {"_shrink_kernel", "_fused_linear_kernel", "_grad_shrink_kernel", "_bank_grad_kernel"}
# Shared memory one block may use: sm_80 code also runs on sm_86 (A10, RTX 30xx), which allows 99 KiB per block
# (A100: 163 KiB); H100 allows 227 KiB.
SHARED_LIMIT = {80: 99 * 1024, 90: 227 * 1024}


@pytest.fixture(scope="module")
def cubins() -> list[dict]:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("fused_cubins.py")
    result = subprocess.run([sys.executable, str(script), *map(str, ARCHS)], check=False, capture_output=True,
                            text=True, env=env, timeout=900)
    assert result.returncode == 0, f"compiling the fused Triton launches failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout)


def _describe(entry: dict) -> str:
    blocks = {key: value for key, value in entry["constexprs"].items() if key.startswith(("BLOCK", "HAS", "RANK"))}
    return (f"{entry['kernel']} sm_{entry['arch']} {entry['dtype']} {blocks} warps={entry['num_warps']} "
            f"stages={entry['num_stages']}")


def test_every_kernel_compiles_for_every_architecture(cubins):
    assert {(entry["kernel"], entry["arch"]) for entry in cubins} == {(k, a) for k in KERNELS for a in ARCHS}
    assert {entry["dtype"] for entry in cubins} == {"float32", "float16", "bfloat16"}
    assert not any(entry["constexprs"].get("UPCAST") for entry in cubins), "UPCAST is for the interpreter only"
    fused = [entry["constexprs"] for entry in cubins if entry["kernel"] == "_fused_linear_kernel"]
    # decode (16- and 64-row tiles) and prefill (128-row tiles); forward with and without bias and row scale, dx
    assert {c["BLOCK_M"] for c in fused} >= {16, 64, 128}
    assert {(c["HAS_BIAS"], c["HAS_ROW_SCALE"], c["ZERO_Z_ROWS"]) for c in fused} >= {
        (True, True, True), (False, True, True), (False, False, False)}
    shrinks = [entry["constexprs"] for entry in cubins if entry["kernel"] == "_shrink_kernel"]
    assert {c["BLOCK_R"] for c in shrinks} >= {16, 64, 128}


def test_shared_memory_fits_each_architecture(cubins):
    over = [f"{_describe(e)}: {e['shared']} B" for e in cubins if e["shared"] > SHARED_LIMIT[e["arch"]]]
    assert not over, "launches over the per-block shared memory limit:\n" + "\n".join(over)


def test_half_precision_launches_do_not_spill_registers(cubins):
    """fp16/bf16 are the fast paths; fp32 launches (FMA products) may spill and are not held to this."""
    spilled = [f"{_describe(e)}: {e['registers']} registers, {e['stack']} B stack, {e['local']} B local"
               for e in cubins if e["dtype"] != "float32" and (e["stack"] or e["local"])]
    assert not spilled, "register spills:\n" + "\n".join(spilled)
