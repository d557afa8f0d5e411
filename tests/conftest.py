"""Shared test setup: Qt offscreen, and the skip of GPU tests where no CUDA device is found."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything imports Qt

import pytest
import torch


def pytest_sessionstart(session):
    # Build (or load) the compiled CPU ops before any test runs, so the one-off build (a minute or
    # two, cached on disk) never lands inside a test that waits on a signal with a timeout.
    from cuda_ops import build
    build.load_kernels("cpu")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device; none found")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
