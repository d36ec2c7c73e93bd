#!/usr/bin/env python
"""Run the lora_route benchmark (same options as ``lora-route bench``); results go to benchmarks/results/.

    python benchmarks/run_benchmarks.py                      # GPU preset on CUDA, else the CPU smoke run
    python benchmarks/run_benchmarks.py --preset cpu-smoke   # CPU smoke run (Triton interpreter, tiny shapes)
"""
import sys

from lora_route.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
