"""Compile every Triton launch that lora_route's launchers make into GPU machine code, without a GPU.

Run as a script (``python tests/triton_cubins.py 80 90``) with ``TRITON_INTERPRET`` unset: the launchers
(:func:`routed_forward` / :func:`routed_backward`) are called on CPU tensors over a set of representative shapes with
every kernel replaced by a stand-in that records its arguments instead of running; each distinct launch (kernel,
argument dtypes, constexprs, warps) is then compiled by Triton for each requested ``sm_<arch>`` and its resources
read from the cubin with the ``cuobjdump`` that ships with Triton. Prints a JSON list, one entry per (launch, arch):
kernel, arch, dtype, constexprs, num_warps, shared (bytes), registers (per thread), stack (spilled bytes per thread).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

KERNELS = ("_shrink_kernel", "_expand_kernel", "_grad_shrink_kernel", "_bank_grad_kernel")
# (dtype, rows, rank, cores): decode (1 and 64 sequences) and prefill/training-sized row counts, the ranks of the
# recipes (16) up to MAX_RANK, with and without the UniLoRA core U.
SHAPES = (
    (torch.bfloat16, 1, 16, 0),
    (torch.bfloat16, 64, 16, 1),
    (torch.bfloat16, 300, 16, 0),
    (torch.bfloat16, 300, 16, 1),
    (torch.bfloat16, 300, 64, 1),
    (torch.bfloat16, 300, 128, 1),
    (torch.float16, 300, 32, 1),
    (torch.float32, 300, 16, 1),
)


class RecordingKernel:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` records instead of launching."""

    def __init__(self, name: str, jit_function, launches: list):
        self.name, self.jit_function, self.launches = name, jit_function, launches

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            self.launches.append((self.name, args, kwargs))
        return record


def record_launches() -> list[tuple[str, tuple, dict]]:
    """Distinct (kernel name, args, kwargs) launches of a forward and a full backward over :data:`SHAPES`."""
    from lora_route import plan_routes
    from lora_route.triton_kernels import routed_lora

    launches: list = []
    originals = {name: getattr(routed_lora, name) for name in KERNELS}
    for name, kernel in originals.items():
        setattr(routed_lora, name, RecordingKernel(name, kernel, launches))
    try:
        for dtype, rows, rank, cores in SHAPES:
            d_in, d_out, banks = 96, 160, 3
            x = torch.randn(rows, d_in, dtype=dtype)
            A = torch.randn(banks, rank, d_in, dtype=dtype)
            B = torch.randn(banks, d_out, rank, dtype=dtype)
            U = torch.randn(cores, rank, rank, dtype=dtype) if cores else None
            index = torch.arange(rows) % banks
            plan = plan_routes(index, index.flip(0), index % cores if cores else None).tensors()
            row_scale = torch.rand(rows, dtype=dtype)
            out = torch.zeros(rows, d_out, dtype=dtype)
            z = routed_lora.routed_forward(x, A, B, U, row_scale, 2.0, plan, out)
            routed_lora.routed_backward(out, x, z, A, B, U, row_scale, 2.0, plan, (True,) * 5)
    finally:
        for name, kernel in originals.items():
            setattr(routed_lora, name, kernel)
    distinct = {}
    for name, args, kwargs in launches:
        key = (name, tuple(str(a.dtype) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args),
               tuple(sorted(kwargs.items())))
        distinct.setdefault(key, (name, args, kwargs))
    return [(name, args, kwargs, originals[name]) for name, args, kwargs in distinct.values()]


def cubin_resources(cubin: bytes) -> dict[str, int]:
    """Registers, stack (spill) and shared bytes of a single-kernel cubin, read with Triton's ``cuobjdump``."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        report = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True,
                                check=True).stdout
    fields = dict(item.split(":") for line in report.splitlines() if "REG:" in line for item in line.split()
                  if ":" in item and item.split(":")[1].isdigit())
    return {"registers": int(fields["REG"]), "stack": int(fields["STACK"]), "local": int(fields["LOCAL"])}


def compile_launch(jit_function, args: tuple, kwargs: dict, arch: int):
    """Triton's own argument specialisation for ``sm_<arch>``, then a full compile to a cubin."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(jit_function.signature, jit_function.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = jit_function._pack_args(backend, kwargs, bound_args, specialization,
                                                                    options)
    return triton.compile(ASTSource(jit_function, signature, constexprs, attrs), target=target,
                          options=options.__dict__)


def operand_dtype(args: tuple) -> str:
    """The launch's operand precision: its first 16-bit float tensor's dtype, else float32."""
    halves = [a.dtype for a in args if isinstance(a, torch.Tensor) and a.dtype in (torch.float16, torch.bfloat16)]
    return str(halves[0] if halves else torch.float32).removeprefix("torch.")


def main(archs: list[int]) -> list[dict]:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    report = []
    for name, args, kwargs, jit_function in record_launches():
        constexprs = {key: value for key, value in kwargs.items() if key != "num_warps"}
        for arch in archs:
            compiled = compile_launch(jit_function, args, kwargs, arch)
            report.append({"kernel": name, "arch": arch, "dtype": operand_dtype(args),
                           "constexprs": constexprs, "num_warps": compiled.metadata.num_warps,
                           "shared": compiled.metadata.shared, **cubin_resources(compiled.asm["cubin"])})
    return report


if __name__ == "__main__":
    print(json.dumps(main([int(arch) for arch in sys.argv[1:]])))
