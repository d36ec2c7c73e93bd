"""Test-session setup: Triton's interpreter on machines without a CUDA GPU, and the ``cuda`` marker's skip.

``TRITON_INTERPRET=1`` must be in the environment before anything imports triton (triton reads it when kernels are
decorated), so it is set here, at conftest import, and only when no CUDA GPU is present.
"""
import os

import pytest
import torch

HAS_CUDA_GPU = torch.cuda.is_available()
if not HAS_CUDA_GPU:
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA_GPU:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
