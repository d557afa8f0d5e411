"""The networks shipped in models/: each opens and says how it was made; the default renders fast on CPU."""
from __future__ import annotations

import dataclasses
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


REGISTRY = json.loads((ROOT / "models" / "registry.json").read_text())
SHIPPED = REGISTRY["models"]
SHIPPED_SG3 = [entry for entry in SHIPPED if entry["family"].startswith("stylegan3")]


def test_the_default_is_the_trained_stylegan2_starter(default_path):
    assert default_path.name == REGISTRY["default"]
    assert default_path.name in [entry["file"] for entry in SHIPPED]   # so the test below checks its metadata
    assert engine.network_info(engine.load_network(default_path)["G_ema"])["family"] == "stylegan2"


def test_every_shipped_model_is_small_and_listed():
    for entry in SHIPPED:
        path = ROOT / "models" / entry["file"]
        assert path.is_file(), entry
        assert path.stat().st_size < MAX_MB * 1e6, f"{path.name} is over {MAX_MB} MB"


@pytest.mark.parametrize("entry", SHIPPED, ids=lambda entry: entry["file"])
def test_every_shipped_model_says_how_it_was_made_and_is_what_the_registry_says(entry):
    path = ROOT / "models" / entry["file"]
    training = engine.provenance(path)["training"]
    assert training["dataset"]["name"] == "toyfaces" and training["kimg"] > 0
    assert training["machine"] and training["training_time_s"] > 0 and "finetune" in training["command"]
    log = ROOT / training["log"]
    assert log.is_file() and "kimg" in log.read_text()
    info = engine.network_info(engine.load_network(path)["G_ema"])
    assert (info["family"], info["resolution"]) == (entry["family"], entry["resolution"])


@pytest.mark.parametrize("entry", SHIPPED_SG3, ids=lambda entry: entry["file"])
def test_a_shipped_stylegan3_moves_its_picture_with_the_input_translation(entry):
    """What the README says of the StyleGAN3 starter: the picture follows the input translation
    instead of sticking to the screen. Moved right by 1/8 of its width, the picture equals the unmoved one
    shifted by that many pixels (StyleGAN3-T is built translation-equivariant), far more closely
    than it equals the unmoved one in place."""
    path = ROOT / "models" / entry["file"]
    renderer = engine.Renderer(engine.load_network(path), "cpu")
    state = engine.initial_state(str(path), renderer.num_ws, seeds=(0,))
    still = renderer.render(state).image.astype(np.float32)
    moved = renderer.render(dataclasses.replace(state, transform=(0.0, 0.125, 0.0))).image.astype(np.float32)
    shift = still.shape[1] // 8
    followed = np.abs(moved[:, shift:] - still[:, :-shift]).mean()
    stuck = np.abs(moved[:, shift:] - still[:, shift:]).mean()
    assert followed < 0.35 * stuck, (followed, stuck)


# Issue 6's rotation GIF.
@pytest.mark.parametrize("entry", SHIPPED_SG3, ids=lambda entry: entry["file"])
def test_a_shipped_stylegan3_turns_its_picture_with_the_input_rotation(entry):
    """The README's rotation GIF: turned by a quarter, a half and three quarters through the input
    (what the GIF, the Animate panel and --rotate do), the picture resembles the upright one turned by
    as much more than the upright one in place, within the disk a turn keeps in frame: every time
    (no face sticks to the screen, none falls apart into a blank or round one, which resembles both
    alike) and, over all of them, at least twice as much. (Per picture the margin is smaller for a face
    whose outline a half turn nearly keeps: there even a turn that is right but for its edges looks
    little better than none.)"""
    path = ROOT / "models" / entry["file"]
    renderer = engine.Renderer(engine.load_network(path), "cpu")
    followed_all, stuck_all = 0.0, 0.0
    for seed in range(8):
        state = engine.initial_state(str(path), renderer.num_ws, seeds=(seed,))
        upright = renderer.render(state).image.astype(np.float32)
        size = upright.shape[0]
        yy, xx = np.mgrid[:size, :size] + 0.5 - size / 2
        disk = (xx ** 2 + yy ** 2) <= (0.45 * size) ** 2
        for quarter in (1, 2, 3):
            turned = renderer.render(dataclasses.replace(state, transform=(90.0 * quarter, 0.0, 0.0))).image
            turned = turned.astype(np.float32)
            followed = np.abs(turned - np.rot90(upright, quarter))[disk].mean()
            stuck = np.abs(turned - upright)[disk].mean()
            assert followed < stuck, (seed, quarter, followed, stuck)
            followed_all += followed
            stuck_all += stuck
    assert followed_all < 0.5 * stuck_all, (followed_all, stuck_all)


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
