"""Target photos: any readable format, size and aspect becomes uint8 [R, R, 3]; broken files are clear errors."""
from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from engine.errors import CorruptFileError
from engine.photo import load_photo


def test_wide_photo_is_cropped_or_padded_to_a_square(tmp_path):
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :20] = (255, 0, 0)                      # red strip on the far left: cropped away
    image[:, 20:60] = (0, 0, 255)                    # blue centre
    path = tmp_path / "wide.png"
    iio.imwrite(path, image)
    crop = load_photo(path, 16, fit="crop")
    assert crop.shape == (16, 16, 3) and crop.dtype == np.uint8
    assert np.all(crop == (0, 0, 255))
    pad = load_photo(path, 16, fit="pad")
    assert np.all(pad[0] == 255) and np.all(pad[-1] == 255)   # white bands above and below
    assert tuple(pad[8, 0]) == (255, 0, 0) and tuple(pad[8, 8]) == (0, 0, 255)


def test_grayscale_alpha_and_upscaling(tmp_path):
    gray = tmp_path / "gray.png"
    iio.imwrite(gray, np.full((8, 8), 100, np.uint8))
    out = load_photo(gray, 32)                       # 8 px grown to 32 (Lanczos keeps a flat image flat)
    assert out.shape == (32, 32, 3) and np.all(out == 100)
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 255                               # red, alpha 0 on the left half, 255 on the right
    rgba[:, 10:, 3] = 255
    path = tmp_path / "sticker.png"
    iio.imwrite(path, rgba)
    out = load_photo(path, 20)
    assert np.all(out[:, :10] == 255) and np.all(out[:, 10:] == (255, 0, 0))


def test_formats_opencv_lacks_are_read_with_pillow(tmp_path):
    image = np.zeros((24, 24, 3), np.uint8)
    image[..., 1] = 200
    gif = tmp_path / "photo.gif"
    Image.fromarray(image).save(gif)
    out = load_photo(gif, 12)
    assert out.shape == (12, 12, 3) and abs(int(out[6, 6, 1]) - 200) < 8
    jpg = tmp_path / "photo.JPG"
    Image.fromarray(image).save(jpg, quality=95)
    assert load_photo(jpg, 12).shape == (12, 12, 3)


def test_corrupt_empty_and_missing_files_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(CorruptFileError, match=r"empty\.png is empty"):
        load_photo(empty, 16)
    corrupt = tmp_path / "broken.jpg"
    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(good)
    corrupt.write_bytes(good.read_bytes()[:200])     # cut off mid-scan
    with pytest.raises(CorruptFileError, match=r"broken\.jpg is not a readable image"):
        load_photo(corrupt, 16)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(CorruptFileError, match=r"notes\.png"):
        load_photo(text, 16)
    with pytest.raises(CorruptFileError, match=r"missing\.png"):
        load_photo(tmp_path / "missing.png", 16)
