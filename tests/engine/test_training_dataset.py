"""Training dataset: folder and zip scanning, crop / pad / resize, channels, labels, report, cache."""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import engine.training.dataset as dataset_module
from engine.errors import Cancelled, StyleDeckError
from engine.jobs import CancelToken
from engine.training.dataset import (BACKGROUND, DatasetError, DatasetOptions, DatasetReport, ImageDataset,
                                     default_cache_dir, prepare_image)

RNG = np.random.default_rng(0)


def write_image(path: Path, image: np.ndarray) -> Path:
    """Write uint8 [H, W], [H, W, 3] RGB or [H, W, 4] RGBA with OpenCV, lossless where the format allows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if path.suffix == ".webp" else []   # > 100: lossless
    assert cv2.imwrite(str(path), image, params)
    return path


def noise(h: int, w: int, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def make_folder(root: Path) -> dict[str, np.ndarray]:
    """A folder of every format, sizes 20x30 and 50x40, a nested folder, and three bad files."""
    good = {"a.jpg": noise(20, 30), "b.png": noise(50, 40), "c.webp": noise(20, 30),
            "d.BMP": noise(50, 40), "sub/deeper/e.png": noise(30, 20),
            "gray.png": RNG.integers(0, 256, (20, 30), dtype=np.uint8)}
    for name, image in good.items():
        write_image(root / name, image)
    jpeg = (root / "a.jpg").read_bytes()
    (root / "sub" / "corrupt.jpg").write_bytes(jpeg[: len(jpeg) // 2])        # truncated
    (root / "fake.png").write_text("not an image at all")
    (root / "notes.txt").write_text("shot on a sunny day")
    return good


def opts(path: Path, **kw) -> DatasetOptions:
    return DatasetOptions(path=str(path), **{"resolution": 16, **kw})


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every dataset built without an explicit cache_dir caches under tmp_path, never in ~/.cache."""
    monkeypatch.setenv("STYLEDECK_CACHE", str(tmp_path / "styledeck-cache"))
    return tmp_path / "styledeck-cache" / "datasets"


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Names of the files the dataset decodes, in any order (decoding runs on worker threads)."""
    seen: list[str] = []
    real = dataset_module.decode_image

    def counting(data, name):
        seen.append(name)
        return real(data, name)

    monkeypatch.setattr(dataset_module, "decode_image", counting)
    return seen


# -- scanning and the report

def test_folder_is_scanned_recursively_and_bad_files_are_reported(tmp_path):
    good = make_folder(tmp_path / "photos")
    ds = ImageDataset(opts(tmp_path / "photos", cache=False))
    assert ds.name == "photos" and ds.resolution == 16 and ds.num_channels == 3 and ds.label_dim == 0
    assert ds.report.used == len(good) == len(ds)
    assert ds.names == tuple(sorted(good))                      # NVIDIA's order: sorted relative paths
    reasons = dict(ds.report.skipped)
    assert set(reasons) == {"sub/corrupt.jpg", "fake.png", "notes.txt"}
    assert "truncated" in reasons["sub/corrupt.jpg"]
    assert "not a readable PNG" in reasons["fake.png"]
    assert "not an image file (.txt)" in reasons["notes.txt"]
    assert "3 skipped" in ds.report.summary() and "fake.png" in ds.report.summary()


def test_items_are_uint8_squares_with_an_empty_float_label(tmp_path):
    make_folder(tmp_path / "photos")
    ds = ImageDataset(opts(tmp_path / "photos", resolution=24, cache=False))
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 24, 24)
        assert label.dtype == torch.float32 and label.shape == (0,)
    assert torch.equal(ds[-1][0], ds[len(ds) - 1][0])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_xflip_doubles_the_items_and_the_second_half_is_mirrored(tmp_path):
    make_folder(tmp_path / "photos")
    plain = ImageDataset(opts(tmp_path / "photos", cache=False))
    ds = ImageDataset(opts(tmp_path / "photos", xflip=True, cache=False))
    n = plain.report.used
    assert len(ds) == 2 * n and ds.report.used == n
    for i in range(n):
        assert torch.equal(ds[i][0], plain[i][0])
        assert torch.equal(ds[n + i][0], plain[i][0].flip(-1))
        assert not torch.equal(ds[n + i][0], ds[i][0])            # noise images are not symmetric


def test_dataloader_batches_and_pickled_copies_read_the_same_images(tmp_path):
    make_folder(tmp_path / "photos")
    ds = ImageDataset(opts(tmp_path / "photos"), cache_dir=tmp_path / "cache")
    images, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert images.shape == (4, 3, 16, 16) and labels.shape == (4, 0)
    copy = pickle.loads(pickle.dumps(ds))                        # what a spawned worker gets
    assert all(torch.equal(copy[i][0], ds[i][0]) for i in range(len(ds)))


# -- preparing one image

def test_crop_cuts_a_left_strip_away_and_pad_keeps_it_on_white(tmp_path):
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :10] = (255, 0, 0)                                  # red strip on the left
    wide[:, 10:] = (0, 0, 255)                                  # the rest blue
    write_image(tmp_path / "wide" / "w.png", wide)

    cropped = ImageDataset(opts(tmp_path / "wide", resolution=20, cache=False))[0][0]
    assert torch.equal(cropped, torch.tensor([0, 0, 255], dtype=torch.uint8)[:, None, None].expand(3, 20, 20))

    padded = ImageDataset(opts(tmp_path / "wide", resolution=60, fit="pad", cache=False))[0][0]
    assert torch.equal(padded[:, 20:40], torch.from_numpy(wide.transpose(2, 0, 1)))   # image centred
    assert (padded[:, :20] == BACKGROUND).all() and (padded[:, 40:] == BACKGROUND).all()

    # Shrunk 5x: the 10 px strip is exactly 2 output columns of pure red (INTER_AREA is a box mean).
    small = ImageDataset(opts(tmp_path / "wide", resolution=12, fit="pad", cache=False))[0][0]
    assert (small[:, 4:8, :2] == torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None, None]).all()
    assert (small[:, :4] == BACKGROUND).all()


def test_shrinking_is_a_box_average_and_growing_keeps_flat_colours():
    image = noise(40, 40)
    down = prepare_image(image, 10)                                           # [3, 10, 10]
    box = image.reshape(10, 4, 10, 4, 3).astype(np.float64).mean(axis=(1, 3)).transpose(2, 0, 1)
    assert down.shape == (3, 10, 10) and down.dtype == np.uint8
    assert np.abs(down - box).max() <= 1                                      # rounding only

    flat = np.full((50, 40, 3), (10, 128, 250), np.uint8)
    up = prepare_image(flat, 64)
    assert up.shape == (3, 64, 64) and up.dtype == np.uint8
    assert np.array_equal(up, np.broadcast_to(np.array([10, 128, 250], np.uint8)[:, None, None], up.shape))

    # Up-sampling with Lanczos reproduces a smooth ramp closely (no blocky nearest-neighbour steps).
    ramp = np.tile(np.linspace(0, 255, 16).astype(np.uint8)[None, :, None], (16, 1, 3))
    grown = prepare_image(ramp, 64)[0, 32].astype(int)                        # one row
    assert np.all(np.diff(grown) >= -1) and np.diff(grown).max() <= 8


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    write_image(tmp_path / "g" / "g.png", gray)
    image = ImageDataset(opts(tmp_path / "g", cache=False))[0][0]
    assert torch.equal(image[0], torch.from_numpy(gray)) and torch.equal(image[1], image[0])
    assert torch.equal(image[2], image[0])


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = (200, 40, 0)
    rgba[:, :4, 3] = 0                                            # transparent: white
    rgba[:, 4:8, 3] = 128                                         # half: a mix with white
    rgba[:, 8:, 3] = 255                                          # opaque: unchanged
    write_image(tmp_path / "t" / "rgba.png", rgba)
    la = np.stack([np.full((16, 16), 60, np.uint8), np.full((16, 16), 0, np.uint8)], axis=2)
    Image.fromarray(la, "LA").save(tmp_path / "t" / "la.png")     # gray + alpha, fully transparent
    ds = ImageDataset(opts(tmp_path / "t", cache=False))
    image = ds[ds.names.index("rgba.png")][0].numpy()
    assert (image[:, :, :4] == 255).all()
    half = np.rint(np.array([200, 40, 0]) * 128 / 255 + 255 * (1 - 128 / 255))
    assert np.abs(image[:, :, 4:8] - half[:, None, None]).max() <= 1
    assert (image[:, :, 8:] == np.array([200, 40, 0])[:, None, None]).all()
    assert (ds[ds.names.index("la.png")][0] == 255).all()


def test_sixteen_bit_png_and_one_channel_output(tmp_path):
    deep = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)
    write_image(tmp_path / "d" / "deep.png", deep)
    ds = ImageDataset(opts(tmp_path / "d", channels=1, cache=False))
    image = ds[0][0]
    assert ds.num_channels == 1 and image.shape == (1, 16, 16)
    assert torch.equal(image[0], torch.arange(256, dtype=torch.uint8).reshape(16, 16))
    colour = prepare_image(np.full((8, 8, 3), (255, 0, 0), np.uint8), 8, channels=1)
    assert colour.shape == (1, 8, 8) and (colour == 76).all()                 # 0.299 * 255, ITU-R 601


# -- labels

def write_labels(root: Path, labels) -> None:
    (root / "dataset.json").write_text(json.dumps({"labels": labels}))


def test_class_labels_become_one_hot_and_unlabelled_images_are_skipped(tmp_path):
    root = tmp_path / "cond"
    for name in ("x0.png", "x1.png", "x2.png"):
        write_image(root / name, noise(20, 30))
    write_labels(root, [["x0.png", 2], ["x1.png", 0], ["unused.png", 4]])
    ds = ImageDataset(opts(root, use_labels=True, xflip=True, cache=False))
    assert ds.label_dim == 5 and ds.has_labels                   # max class in dataset.json + 1
    assert ds.names == ("x0.png", "x1.png")
    assert torch.equal(ds[0][1], torch.tensor([0, 0, 1, 0, 0], dtype=torch.float32))
    assert torch.equal(ds[1][1], torch.tensor([1, 0, 0, 0, 0], dtype=torch.float32))
    assert torch.equal(ds[3][1], ds[1][1])                       # the mirror keeps its label
    assert dict(ds.report.skipped) == {"x2.png": "no label in dataset.json"}
    assert np.array_equal(ds.get_label(0), ds[0][1].numpy())
    # Without use_labels the same folder is unconditional and every image is used.
    plain = ImageDataset(opts(root, cache=False))
    assert plain.label_dim == 0 and plain.report.used == 3 and plain.report.skipped == ()


def test_vector_labels_are_float_vectors(tmp_path):
    root = tmp_path / "vec"
    write_image(root / "sub" / "v0.png", noise(20, 30))
    write_image(root / "v1.png", noise(20, 30))
    write_labels(root, [["sub\\v0.png", [0.5, -1.0, 2]], ["v1.png", [1, 0, 0.25]]])   # Windows separators
    ds = ImageDataset(opts(root, use_labels=True, cache=False))
    assert ds.label_dim == 3
    assert torch.equal(ds[0][1], torch.tensor([0.5, -1.0, 2.0]))
    assert torch.equal(ds[1][1], torch.tensor([1.0, 0.0, 0.25]))


@pytest.mark.parametrize("content, match", [
    (None, "has no dataset.json"),
    ('{"labels": null}', "holds no labels"),
    ("{not json", "not readable JSON"),
    ('{"labels": [["x.png", "cat"]]}', "is not \\[path, class index"),
    ('{"labels": [["x.png", 1], ["y.png", [1.0]]]}', "mixes label kinds"),
])
def test_bad_or_missing_labels_are_a_clear_error(tmp_path, content, match):
    root = tmp_path / "labels"
    write_image(root / "x.png", noise(8, 8))
    write_image(root / "y.png", noise(8, 8))
    if content is not None:
        (root / "dataset.json").write_text(content)
    with pytest.raises(DatasetError, match=match):
        ImageDataset(opts(root, use_labels=True, cache=False))


# -- errors before anything else

def test_an_empty_folder_is_an_error(tmp_path, private_cache):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="has no usable image: it holds no files"):
        ImageDataset(opts(tmp_path / "empty"))


def test_a_folder_of_corrupt_files_is_an_error_naming_them(tmp_path, private_cache, decodes):
    root = tmp_path / "junk"
    write_image(root / "a.jpg", noise(20, 30))
    jpeg = (root / "a.jpg").read_bytes()
    (root / "a.jpg").write_bytes(jpeg[:-40])
    (root / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    (root / "c.txt").write_text("hello")
    with pytest.raises(DatasetError) as info:
        ImageDataset(opts(root))
    message = str(info.value)
    assert isinstance(info.value, StyleDeckError)
    assert "has no usable image: 3 files skipped" in message and "a.jpg (truncated" in message
    assert sorted(decodes) == ["a.jpg", "b.png"]
    assert not list(private_cache.glob("*"))                    # a failure is never cached


def test_a_folder_of_non_images_fails_without_decoding_anything(tmp_path, decodes):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("# hi")
    with pytest.raises(DatasetError, match="1 file skipped, e.g. readme.md"):
        ImageDataset(opts(tmp_path / "docs"))
    assert decodes == []


def test_missing_path_or_plain_file_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        ImageDataset(opts(tmp_path / "nowhere"))
    write_image(tmp_path / "single.png", noise(8, 8))
    with pytest.raises(DatasetError, match="neither a folder nor a zip"):
        ImageDataset(opts(tmp_path / "single.png"))


@pytest.mark.parametrize("field, value", [("fit", "stretch"), ("channels", 4), ("resolution", 2)])
def test_bad_options_are_refused(tmp_path, field, value):
    make_folder(tmp_path / "photos")
    with pytest.raises(DatasetError, match=field):
        ImageDataset(opts(tmp_path / "photos", **{field: value}))


def refuse_listing(monkeypatch, locked: Path) -> None:
    """Make listing `locked` fail as a folder without read permission does (root ignores chmod)."""
    real = os.scandir

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_an_unreadable_folder_is_a_clear_error(tmp_path, monkeypatch):
    root = tmp_path / "locked"
    write_image(root / "a.png", noise(8, 8))
    refuse_listing(monkeypatch, root)
    with pytest.raises(DatasetError, match="Cannot read the folder .*locked: Permission denied"):
        ImageDataset(opts(root, cache=False))


def test_an_unreadable_subfolder_is_reported_and_the_rest_used(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    write_image(root / "a.png", noise(8, 8))
    write_image(root / "private" / "b.png", noise(8, 8))
    refuse_listing(monkeypatch, root / "private")
    ds = ImageDataset(opts(root, cache=False))
    assert ds.names == ("a.png",)
    assert ds.report.skipped == (("private/", "cannot list folder: Permission denied"),)


# -- zip

def write_nvidia_zip(path: Path, images: list[np.ndarray], labels: list[int] | None) -> None:
    """The layout of NVIDIA's dataset_tool.py: 00000/img00000000.png ... and dataset.json."""
    names = [f"{i // 1000:05d}/img{i:08d}.png" for i in range(len(images))]
    with zipfile.ZipFile(path, "w") as zf:
        for name, image in zip(names, images):
            zf.writestr(name, cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes())
        zf.writestr("dataset.json", json.dumps(
            {"labels": None if labels is None else [[n, c] for n, c in zip(names, labels)]}))


def test_zip_in_dataset_tool_layout_matches_the_same_folder(tmp_path):
    images = [noise(20, 30), noise(50, 40), noise(30, 30)]
    write_nvidia_zip(tmp_path / "faces.zip", images, labels=[1, 0, 1])
    folder = tmp_path / "faces"
    with zipfile.ZipFile(tmp_path / "faces.zip") as zf:
        zf.extractall(folder)
    from_zip = ImageDataset(opts(tmp_path / "faces.zip", use_labels=True), cache_dir=tmp_path / "c")
    from_dir = ImageDataset(opts(folder, use_labels=True), cache_dir=tmp_path / "c")
    assert from_zip.name == "faces" and len(from_zip) == len(from_dir) == 3
    assert from_zip.names == from_dir.names == ("00000/img00000000.png", "00000/img00000001.png",
                                                "00000/img00000002.png")
    for i in range(3):
        assert torch.equal(from_zip[i][0], from_dir[i][0])
        assert torch.equal(from_zip[i][1], from_dir[i][1])
    assert torch.equal(from_zip[0][1], torch.tensor([0.0, 1.0]))


def test_zipped_folder_is_read_from_inside_and_reports_bad_members(tmp_path):
    with zipfile.ZipFile(tmp_path / "pack.zip", "w") as zf:
        zf.writestr("pets/cat.png", cv2.imencode(".png", noise(20, 30))[1].tobytes())
        zf.writestr("pets/dog.jpg", cv2.imencode(".jpg", noise(50, 40))[1].tobytes()[:100])
        zf.writestr("__MACOSX/pets/._cat.png", b"resource fork")
    ds = ImageDataset(opts(tmp_path / "pack.zip", cache=False))
    assert ds.names == ("cat.png",) and [p for p, _ in ds.report.skipped] == ["dog.jpg"]


def test_a_broken_zip_is_a_clear_error(tmp_path):
    write_nvidia_zip(tmp_path / "good.zip", [noise(8, 8)], labels=None)
    data = (tmp_path / "good.zip").read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) - 30])     # central directory cut off
    with pytest.raises(DatasetError):
        ImageDataset(opts(tmp_path / "cut.zip"))


# -- cache

def test_cache_skips_decoding_on_the_second_run_and_follows_file_changes(tmp_path, private_cache, decodes):
    make_folder(tmp_path / "photos")
    first = ImageDataset(opts(tmp_path / "photos", xflip=True))
    assert sorted(decodes) == sorted(set(first.names) | {"sub/corrupt.jpg", "fake.png"})
    assert len(list(private_cache.glob("photos-*.npy"))) == 1

    decodes.clear()
    second = ImageDataset(opts(tmp_path / "photos", xflip=True))
    assert decodes == []                                          # nothing decoded: read from the cache
    assert second.report == first.report and second.names == first.names
    assert all(torch.equal(second[i][0], first[i][0]) for i in range(len(first)))

    # Rewrite one image: its size or mtime changes, so the key does and everything is prepared again.
    changed = np.full((50, 40, 3), (0, 255, 0), np.uint8)
    write_image(tmp_path / "photos" / "b.png", changed)
    os.utime(tmp_path / "photos" / "b.png", ns=(1, 1))
    third = ImageDataset(opts(tmp_path / "photos", xflip=True))
    assert "b.png" in decodes
    green = torch.tensor([0, 255, 0], dtype=torch.uint8)[:, None, None]
    assert (third[third.names.index("b.png")][0] == green).all()
    assert len(list(private_cache.glob("photos-*.npy"))) == 1     # the stale cache is gone

    # Options that change pixels have their own cache beside it; x-flip does not need one.
    decodes.clear()
    ImageDataset(opts(tmp_path / "photos", fit="pad"))
    assert decodes
    decodes.clear()
    ImageDataset(opts(tmp_path / "photos", fit="pad", xflip=True))
    ImageDataset(opts(tmp_path / "photos", fit="crop"))
    assert decodes == []
    assert len(list(private_cache.glob("photos-*.npy"))) == 2


def test_no_cache_writes_nothing(tmp_path, private_cache):
    make_folder(tmp_path / "photos")
    ImageDataset(opts(tmp_path / "photos", cache=False))
    assert not private_cache.exists() or not list(private_cache.iterdir())


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEDECK_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "datasets"
    monkeypatch.delenv("STYLEDECK_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "styledeck" / "datasets"


# -- progress and cancel

def test_progress_counts_every_file(tmp_path):
    make_folder(tmp_path / "photos")
    events = []
    ImageDataset(opts(tmp_path / "photos", cache=False), progress=events.append)
    total = 8                                                     # 6 images + 2 undecodable "images"
    assert [e.step for e in events] == list(range(1, total + 1)) and {e.total for e in events} == {total}
    events.clear()
    cache = tmp_path / "c"
    ImageDataset(opts(tmp_path / "photos"), cache_dir=cache)
    events.clear()
    ImageDataset(opts(tmp_path / "photos"), cache_dir=cache, progress=events.append)
    assert len(events) == 1 and "cache" in events[0].message and events[0].fraction == 1.0


def test_cancel_stops_the_scan_and_leaves_no_cache(tmp_path, private_cache, decodes):
    for i in range(40):
        write_image(tmp_path / "many" / f"{i:02d}.png", noise(20, 30))
    token = CancelToken()

    def cancel_at_first(event):
        token.cancel()

    with pytest.raises(Cancelled):
        ImageDataset(opts(tmp_path / "many"), progress=cancel_at_first, cancel=token)
    assert len(decodes) < 40
    assert not list(private_cache.glob("*"))


def test_report_is_a_frozen_value():
    report = DatasetReport(used=2, skipped=(("a.png", "truncated"),))
    assert report.summary() == "2 images, 1 skipped: a.png (truncated)"
    with pytest.raises(AttributeError):
        report.used = 3
