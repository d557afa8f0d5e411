"""Helpers the app tests share (a module of its own: every conftest.py is imported as `conftest`)."""
from __future__ import annotations

from pathlib import Path

import engine

SHOW_TIMEOUT_MS = 30_000  # first render includes loading; generous for a busy 2-core CI box


def direct_renderer(path: str | Path) -> engine.Renderer:
    """A Renderer of our own, as a script would make one: the reference the window must match."""
    return engine.Renderer(engine.load_network(path, device="cpu"), "cpu")
