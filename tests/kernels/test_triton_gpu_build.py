"""Every Triton launch compiles to sm_80 (A100) and sm_90 (H100) machine code that fits those GPUs, on any machine.

The interpreter that runs the kernels in the CPU tests accepts programs that the GPU compiler rejects and says nothing
of registers or shared memory; ``triton_cubins.py`` (run in a subprocess without ``TRITON_INTERPRET``) records
the launches the launchers make over representative shapes, compiles each one with Triton for both architectures and
reads its resources from the cubin.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from cubin_checks import ARCHS, compiled_launches, half_precision_spills, over_shared_limit

triton = pytest.importorskip("triton")

KERNELS = {"_shrink_kernel", "_expand_kernel", "_grad_shrink_kernel", "_bank_grad_kernel"}


@pytest.fixture(scope="module")
def cubins() -> list[dict]:
    return compiled_launches(Path(__file__).with_name("triton_cubins.py"), "the Triton launches")


def _describe(entry: dict) -> str:
    blocks = {key: value for key, value in entry["constexprs"].items() if key.startswith(("BLOCK", "HAS"))}
    return f"{entry['kernel']} sm_{entry['arch']} {entry['dtype']} {blocks} warps={entry['num_warps']}"


def test_every_kernel_compiles_for_every_architecture(cubins):
    assert {(entry["kernel"], entry["arch"]) for entry in cubins} == {(k, a) for k in KERNELS for a in ARCHS}
    assert {entry["dtype"] for entry in cubins} == {"float32", "float16", "bfloat16"}
    assert {entry["constexprs"]["BLOCK_R"] for entry in cubins} >= {16, 64, 128}
    assert not any(entry["constexprs"].get("UPCAST") for entry in cubins), "UPCAST is for the interpreter only"


def test_shared_memory_fits_each_architecture(cubins):
    over = over_shared_limit(cubins, _describe)
    assert not over, "launches over the per-block shared memory limit:\n" + "\n".join(over)


def test_half_precision_launches_do_not_spill_registers(cubins):
    spilled = half_precision_spills(cubins, _describe)
    assert not spilled, "register spills:\n" + "\n".join(spilled)
