"""The network shipped in models/ as the default: it opens, says how it was made, and renders fast on CPU."""
from __future__ import annotations

import json
import time

import imageio.v3 as iio
import numpy as np
import pytest
import engine
from engine.bundled import ROOT
from run_main import ok, run

MAX_MB = 30  # the most a shipped model file may weigh


@pytest.fixture(scope="module")
def default_path():
    return engine.default_network()


STARTER_SHIPPED = "placeholder" not in json.loads((ROOT / "models" / "registry.json").read_text())["default"]


@pytest.mark.skipif(not STARTER_SHIPPED, reason="the trained StyleGAN2 starter has not replaced the untrained "
                                                "placeholder yet (models/README.md says where training stands)")
def test_the_default_is_the_trained_stylegan2_starter(default_path):
    registry = json.loads((ROOT / "models" / "registry.json").read_text())
    assert default_path.name == registry["default"]
    facts = engine.provenance(default_path)
    training = facts["training"]
    assert training["dataset"]["name"] == "toyfaces" and training["kimg"] > 0
    assert training["machine"] and training["training_time_s"] > 0 and "finetune" in training["command"]
    log = ROOT / training["log"]
    assert log.is_file() and "kimg" in log.read_text()         # the run's log ships beside it
    assert engine.network_info(engine.load_network(default_path)["G_ema"])["family"] == "stylegan2"


def test_every_shipped_model_is_small_and_listed():
    registry = json.loads((ROOT / "models" / "registry.json").read_text())
    for entry in registry["models"]:
        path = ROOT / "models" / entry["file"]
        assert path.is_file(), entry
        assert path.stat().st_size < MAX_MB * 1e6, f"{path.name} is over {MAX_MB} MB"


def test_the_default_renders_in_under_two_seconds_on_cpu(default_path):
    renderer = engine.Renderer(engine.load_network(default_path), "cpu")
    state = engine.initial_state(str(default_path), renderer.num_ws, seeds=(0,))
    renderer.render(state)                                     # first call builds caches
    start = time.perf_counter()
    result = renderer.render(engine.with_base(state, engine.Source.from_seed(1)))
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"{elapsed:.2f} s"
    assert result.image.dtype == np.uint8 and result.image.std() > 10   # a picture, not a flat colour


def test_generate_without_a_network_writes_four_different_images(tmp_path):
    ok(run("generate", "--seeds", "0-3", "--trunc", "0.7", "--outdir", "out", cwd=tmp_path,
           models=ROOT / "models"))
    images = [iio.imread(tmp_path / "out" / f"seed{s:04d}.png").astype(np.float32) for s in range(4)]
    size = engine.network_info(engine.load_network(engine.default_network())["G_ema"])["resolution"]
    assert all(img.shape == (size, size, 3) for img in images)
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(images[i] - images[j]).mean() > 8, (i, j)   # four different seeds, not one image four times
