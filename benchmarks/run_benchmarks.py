#!/usr/bin/env python
"""Run the lora_route benchmark (same options as ``lora-route bench``); results go to benchmarks/results/.

    python benchmarks/run_benchmarks.py                      # GPU preset on CUDA, else the CPU smoke run
    python benchmarks/run_benchmarks.py --preset cpu-smoke   # CPU smoke run (Triton interpreter, tiny shapes)
"""
import os
import sys

import torch

# Triton decides when the kernels are imported whether they run in its CPU interpreter: without a GPU, ask for it
# before lora_route (which imports them) is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lora_route.cli.bench import main  # noqa: E402 - after TRITON_INTERPRET is settled

if __name__ == "__main__":
    sys.exit(main())
