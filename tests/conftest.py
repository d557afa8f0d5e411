"""Shared test setup: Qt offscreen, and the skip of GPU tests where no CUDA device is found."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything imports Qt

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device; none found")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
