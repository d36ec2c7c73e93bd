"""Compile every Triton launch of the fused layer launchers into GPU machine code, without a GPU.

Run as a script (``python tests/kernels/fused_cubins.py 80 90``) with ``TRITON_INTERPRET`` unset. Like
``triton_cubins.py`` (whose compile and cubin-reading helpers it loads by path): :func:`fused_linear_forward` /
:func:`fused_linear_backward` are called on CPU tensors over representative shapes with every kernel they launch
(the shrink, the fused GEMM forward, the grad shrink, the fused dx GEMM, the bank gradients) replaced by a stand-in
that records its arguments; each distinct launch is compiled for each ``sm_<arch>`` and its resources read from the
cubin. Prints a JSON list, one entry per (launch, arch): kernel, arch, dtype, constexprs, num_warps, num_stages,
shared (bytes), registers (per thread), stack and local (spilled bytes per thread).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

ROUTED_KERNELS = ("_shrink_kernel", "_grad_shrink_kernel", "_bank_grad_kernel")
FUSED_KERNELS = ("_fused_linear_kernel",)
# (dtype, rows, rank, cores, bias, d_in, d_out): decode (1 and 64 rows) and prefill (300 rows, two 128-row tiles),
# ranks 16 / 64 / 128, with and without the core U and the bias. d_out = 14336 (Llama-3-8B's gate/up) keeps the
# decode forward at 64-wide column tiles; the dx GEMMs (n_cols = d_in = 512) take the 32-wide decode tiles.
SHAPES = (
    (torch.bfloat16, 1, 16, 0, True, 512, 14336),
    (torch.bfloat16, 64, 16, 1, False, 512, 640),
    (torch.bfloat16, 64, 128, 1, True, 512, 14336),
    (torch.bfloat16, 300, 16, 0, True, 384, 640),
    (torch.bfloat16, 300, 16, 1, False, 384, 640),
    (torch.bfloat16, 300, 64, 1, True, 384, 640),
    (torch.bfloat16, 300, 128, 1, True, 384, 640),
    (torch.bfloat16, 300, 128, 0, False, 384, 640),
    (torch.float16, 1, 64, 1, True, 512, 14336),
    (torch.float16, 300, 32, 1, True, 384, 640),
    (torch.float16, 300, 128, 0, False, 384, 640),
    (torch.float32, 1, 16, 0, True, 512, 640),
    (torch.float32, 300, 16, 1, True, 384, 640),
    (torch.float32, 300, 128, 1, False, 384, 640),
)


def _load_triton_cubins():
    """The sibling ``triton_cubins.py`` (or the first one under tests/) as a module, for its helpers."""
    here = Path(__file__).resolve().parent
    candidates = [here / "triton_cubins.py", *sorted(here.parent.rglob("triton_cubins.py"))]
    path = next(candidate for candidate in candidates if candidate.exists())
    spec = importlib.util.spec_from_file_location("_triton_cubins_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record_launches() -> list[tuple[str, tuple, dict, object]]:
    """Distinct (kernel name, args, kwargs, jit function) launches of a fused forward and a full fused backward
    over :data:`SHAPES`."""
    from lora_route import plan_routes
    from lora_route.triton_kernels import fused_linear, routed_lora

    helpers = _load_triton_cubins()
    launches: list = []
    modules = {name: routed_lora for name in ROUTED_KERNELS} | {name: fused_linear for name in FUSED_KERNELS}
    originals = {name: getattr(module, name) for name, module in modules.items()}
    for name, module in modules.items():
        setattr(module, name, helpers.RecordingKernel(name, originals[name], launches))
    try:
        for dtype, rows, rank, cores, bias, d_in, d_out in SHAPES:
            banks = 3
            x = torch.randn(rows, d_in, dtype=dtype)
            weight = torch.randn(d_out, d_in, dtype=dtype)
            A = torch.randn(banks, rank, d_in, dtype=dtype)
            B = torch.randn(banks, d_out, rank, dtype=dtype)
            U = torch.randn(cores, rank, rank, dtype=dtype) if cores else None
            index = torch.arange(rows) % banks
            b_idx = index.flip(0)
            plan = routed_lora.SegmentPlan(*plan_routes(index, b_idx, index % cores if cores else None).tensors())
            row_scale = torch.rand(rows, dtype=dtype)
            out, z = fused_linear.fused_linear_forward(x, weight, torch.randn(d_out, dtype=dtype) if bias else None,
                                                       A, B, U, row_scale, 2.0, plan, b_idx)
            fused_linear.fused_linear_backward(out, x, z, weight, A, B, U, row_scale, 2.0, plan, index, (True,) * 5)
    finally:
        for name, module in modules.items():
            setattr(module, name, originals[name])
    distinct = {}
    for name, args, kwargs in launches:
        key = (name, tuple(str(a.dtype) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args),
               tuple(sorted(kwargs.items())))
        distinct.setdefault(key, (name, args, kwargs))
    return [(name, args, kwargs, originals[name]) for name, args, kwargs in distinct.values()]


def main(archs: list[int]) -> list[dict]:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    helpers = _load_triton_cubins()
    report = []
    for name, args, kwargs, jit_function in record_launches():
        constexprs = {key: value for key, value in kwargs.items() if key not in ("num_warps", "num_stages")}
        for arch in archs:
            compiled = helpers.compile_launch(jit_function, args, kwargs, arch)
            report.append({"kernel": name, "arch": arch, "dtype": helpers.operand_dtype(args),
                           "constexprs": constexprs, "num_warps": compiled.metadata.num_warps,
                           "num_stages": compiled.metadata.num_stages, "shared": compiled.metadata.shared,
                           **helpers.cubin_resources(compiled.asm["cubin"])})
    return report


if __name__ == "__main__":
    print(json.dumps(main([int(arch) for arch in sys.argv[1:]])))
