"""Helpers for tests that use NVIDIA's reference vectors and perturbed networks (import as `reference_data`)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("STYLEDECK_REFERENCE", ROOT.parent / "shared" / "reference"))


def rel_error(out, ref) -> float:
    """||out - ref|| / ||ref||, the measure the reference vectors are judged by."""
    out = torch.as_tensor(out, dtype=torch.float64)
    ref = torch.as_tensor(ref, dtype=torch.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    return float((out - ref).norm() / ref.norm())


def load_reference(name: str) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(config, weights, expected) of a reference network: 'sg2_uncond' or 'sg3t'."""
    config_path = REFERENCE_DIR / f"{name}_config.json"
    if not config_path.exists():
        pytest.fail(f"reference vectors not found in {REFERENCE_DIR}; set STYLEDECK_REFERENCE to their folder")
    config = json.loads(config_path.read_text())
    weights = dict(np.load(REFERENCE_DIR / f"{name}_weights.npz"))
    expected = dict(np.load(REFERENCE_DIR / f"{name}_expected.npz"))
    return config, weights, expected


def state_of(weights: dict[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of a reference weights file under `prefix.` as a state dict."""
    return {k[len(prefix) + 1:]: torch.from_numpy(v) for k, v in weights.items() if k.startswith(prefix + ".")}


def perturbed(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every float parameter and buffer nudged, so that a weight loaded from the wrong place shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=gen) * 0.1)
    return net
