"""Every launch of the fused layer compiles to sm_80 (A100) and sm_90 (H100) machine code that fits those GPUs.

``fused_cubins.py`` (run in a subprocess without ``TRITON_INTERPRET``) records the launches that
``fused_linear_forward`` / ``fused_linear_backward`` make over decode and prefill shapes, compiles each one with Triton
for both architectures and reads registers, spills and shared memory from the cubin; the interpreter that runs the
CPU tests says nothing of them.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from cubin_checks import ARCHS, compiled_launches, half_precision_spills, over_shared_limit

triton = pytest.importorskip("triton")

KERNELS = {"_shrink_kernel", "_fused_linear_kernel", "_grad_shrink_kernel", "_bank_grad_kernel"}


@pytest.fixture(scope="module")
def cubins() -> list[dict]:
    return compiled_launches(Path(__file__).with_name("fused_cubins.py"), "the fused Triton launches")


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
    over = over_shared_limit(cubins, _describe)
    assert not over, "launches over the per-block shared memory limit:\n" + "\n".join(over)


def test_half_precision_launches_do_not_spill_registers(cubins):
    spilled = half_precision_spills(cubins, _describe)
    assert not spilled, "register spills:\n" + "\n".join(spilled)
