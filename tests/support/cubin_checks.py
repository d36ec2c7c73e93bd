"""What the GPU-build tests share: compile a script's recorded Triton launches for real architectures (in a subprocess
without ``TRITON_INTERPRET``) and check each launch's cubin against the limits of those GPUs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

ARCHS = (80, 90)
# Shared memory one block may use: sm_80 code also runs on sm_86 (A10, RTX 30xx), which allows 99 KiB per block
# (A100: 163 KiB); H100 allows 227 KiB.
SHARED_LIMIT = {80: 99 * 1024, 90: 227 * 1024}


def compiled_launches(script: Path, what: str) -> list[dict]:
    """The JSON report of ``script`` (``triton_cubins.py`` or ``fused_cubins.py``) run for :data:`ARCHS`: one entry
    per launch and architecture; ``what`` names the launches in the failure message."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(script), *map(str, ARCHS)], check=False, capture_output=True,
                            text=True, env=env, timeout=900)
    assert result.returncode == 0, f"compiling {what} failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout)


def over_shared_limit(cubins: list[dict], describe: Callable[[dict], str]) -> list[str]:
    """The launches that use more shared memory per block than their architecture allows."""
    return [f"{describe(e)}: {e['shared']} B" for e in cubins if e["shared"] > SHARED_LIMIT[e["arch"]]]


def half_precision_spills(cubins: list[dict], describe: Callable[[dict], str]) -> list[str]:
    """The fp16/bf16 launches (the fast paths) that spill registers; fp32 launches (FMA products) may spill and are
    not held to this."""
    return [f"{describe(e)}: {e['registers']} registers, {e['stack']} B stack, {e['local']} B local"
            for e in cubins if e["dtype"] != "float32" and (e["stack"] or e["local"])]
