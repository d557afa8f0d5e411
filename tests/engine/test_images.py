"""Images: NVIDIA's uint8 conversion, grayscale, grids and atomic PNG writes read back with imageio."""
from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from engine.errors import StyleDeckError
from engine.images import image_grid, save_png, to_images, to_rgb, to_uint8


def test_to_uint8_is_nvidias_conversion():
    img = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 0.999, 1.0, 2.0]).reshape(1, 1, 1, 8).repeat(2, 3, 4, 1)
    image = to_uint8(img)
    assert image.shape == (2, 4, 8, 3) and image.dtype == np.uint8
    # (x * 127.5 + 128).clamp(0, 255) truncated: -1 -> 0.5 -> 0, 0 -> 128, 1 -> 255.5 -> 255
    assert image[0, 0, :, 0].tolist() == [0, 0, 64, 128, 191, 255, 255, 255]


def test_to_uint8_keeps_channel_order_and_layout():
    img = torch.zeros(1, 3, 2, 5)
    img[0, 0, 1, 4] = 1.0                            # red, bottom-right pixel
    image = to_uint8(img)[0]
    assert image[1, 4].tolist() == [255, 128, 128] and image[0, 0].tolist() == [128, 128, 128]


def test_grayscale_becomes_rgb_for_display():
    img = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    gray = to_uint8(img)
    assert gray.shape == (1, 4, 4, 1)
    rgb = to_images(img)[0]
    assert rgb.shape == (4, 4, 3) and np.array_equal(rgb[..., 0], gray[0, ..., 0])
    assert np.array_equal(rgb[..., 1], rgb[..., 2])
    assert to_rgb(np.zeros((2, 2, 4), np.uint8)).shape == (2, 2, 3)
    with pytest.raises(StyleDeckError):
        to_rgb(np.zeros((2, 2, 2), np.uint8))


def test_image_grid_lays_out_row_by_row():
    images = [np.full((2, 3, 3), i * 10, np.uint8) for i in range(5)]
    grid = image_grid(images, rows=2, cols=3)
    assert grid.shape == (4, 9, 3)
    assert grid[0, 0, 0] == 0 and grid[0, 3, 0] == 10 and grid[0, 6, 0] == 20
    assert grid[2, 0, 0] == 30 and grid[2, 3, 0] == 40 and grid[3, 8, 0] == 0   # empty cell is black
    assert image_grid(images).shape == (4, 9, 3)                                  # cols = ceil(sqrt(5)) = 3
    assert image_grid(images, cols=5).shape == (2, 15, 3)
    with pytest.raises(StyleDeckError, match="room"):
        image_grid(images, rows=1, cols=2)
    with pytest.raises(StyleDeckError, match="size"):
        image_grid([np.zeros((2, 2, 3), np.uint8), np.zeros((3, 2, 3), np.uint8)])


@pytest.mark.parametrize("shape", [(5, 7, 3), (5, 7, 4), (5, 7, 1), (5, 7)])
def test_save_png_round_trips(tmp_path, shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = save_png(tmp_path / "a.png", image)
    back = iio.imread(path)
    assert np.array_equal(back, image.reshape(back.shape)) and back.size == image.size
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]                      # no temp file left


def test_save_png_refuses_bad_images_and_leaves_nothing(tmp_path):
    with pytest.raises(StyleDeckError, match="uint8"):
        save_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(StyleDeckError, match="shape"):
        save_png(tmp_path / "a.png", np.zeros((4, 4, 2), np.uint8))
    assert list(tmp_path.iterdir()) == []
