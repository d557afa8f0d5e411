"""Saved images carry their recipe: PNG text chunk and sidecar, read back with what users use."""
from __future__ import annotations

import dataclasses
import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from engine.edit_state import initial_state, set_group_amount
from engine.errors import CorruptFileError, StyleDeckError
from engine.networks import stylegan2
from engine.recipe import read_image_recipe, recipe_sidecar, save_image
from engine.renderer import Renderer


@pytest.fixture(scope="module")
def rendered():
    torch.manual_seed(0)
    G = stylegan2.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                            channel_base=128, channel_max=16, num_fp16_res=0).eval()
    renderer = Renderer(G)
    state = initial_state("nets/tiny.safetensors", renderer.num_ws, seeds=(8, 9))
    state = dataclasses.replace(set_group_amount(state, 1, renderer.groups[0].layers, 0.6), psi=0.8)
    return renderer, state, renderer.render(state)


def test_saved_png_has_the_pixels_and_the_recipe(rendered, tmp_path):
    _, state, result = rendered
    path = save_image(tmp_path / "face.png", result, state)
    assert path == tmp_path / "face.png"
    assert np.array_equal(iio.imread(path), result.image)
    with Image.open(path) as im:                              # any PNG reader sees the chunk
        assert json.loads(im.text["styledeck"])["state"]["psi"] == 0.8
    loaded_state, ws = read_image_recipe(path)
    assert loaded_state == state
    assert ws.dtype == np.float32 and np.array_equal(ws, result.ws)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.json", "face.png"]  # no temporaries


def test_the_recipe_renders_the_same_image_again(rendered, tmp_path):
    renderer, state, result = rendered
    loaded_state, ws = read_image_recipe(save_image(tmp_path / "again.png", result, state))
    again = renderer.render(loaded_state)
    assert np.array_equal(again.image, result.image) and np.array_equal(again.ws, ws)


def test_sidecar_is_read_when_the_png_lost_its_metadata(rendered, tmp_path):
    _, state, result = rendered
    path = save_image(tmp_path / "stripped.png", result, state)
    iio.imwrite(path, iio.imread(path))                       # an editor that drops text chunks
    with Image.open(path) as im:
        assert "styledeck" not in im.text
    assert recipe_sidecar(path) == tmp_path / "stripped.json"
    loaded_state, ws = read_image_recipe(path)
    assert loaded_state == state and np.array_equal(ws, result.ws)
    assert read_image_recipe(recipe_sidecar(path))[0] == state  # the sidecar on its own too


def test_images_without_a_recipe_or_with_a_damaged_one(rendered, tmp_path):
    _, state, result = rendered
    plain = tmp_path / "plain.png"
    iio.imwrite(plain, result.image)
    with pytest.raises(CorruptFileError, match="no StyleDeck recipe"):
        read_image_recipe(plain)
    path = save_image(tmp_path / "bad.png", result, state)
    iio.imwrite(path, iio.imread(path))
    document = json.loads(recipe_sidecar(path).read_text())
    document["ws"]["shape"] = [3, 3]
    recipe_sidecar(path).write_text(json.dumps(document))
    with pytest.raises(CorruptFileError, match="'ws'"):
        read_image_recipe(path)
    document["ws"]["shape"] = list(result.ws.shape)
    document["state"]["mix"] = document["state"]["mix"][:1]
    recipe_sidecar(path).write_text(json.dumps(document))
    with pytest.raises(CorruptFileError, match="'mix'"):
        read_image_recipe(path)


def test_save_image_refuses_other_formats(rendered, tmp_path):
    _, state, result = rendered
    with pytest.raises(StyleDeckError, match="PNG"):
        save_image(tmp_path / "face.jpg", result, state)
    with pytest.raises(StyleDeckError, match="no image"):
        read_image_recipe(tmp_path / "missing.png")
