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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions run far faster on one thread, above all while another process keeps the CPU busy.

    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device; none found")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
