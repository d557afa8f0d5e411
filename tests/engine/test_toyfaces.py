"""Toy faces: deterministic drawing, every parameter visible at its scale, the rotated variant, datasets on disk."""
from __future__ import annotations

import json
import zipfile
from dataclasses import fields, replace
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from engine.datasets.toyfaces import (Coarse, FaceParams, Fine, Middle, face_rng, image_name, make_dataset,
                                      render_face, sample_params)
from engine.errors import Cancelled, StyleDeckError
from engine.jobs import CancelToken
from engine.training.dataset import DatasetOptions, ImageDataset

R = 64


def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel largest channel difference, [H, W]."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2)


def head_box(p: FaceParams, resolution: int, margin: float = 1.35) -> np.ndarray:
    """bool [H, W]: a box around the head (upright pictures), where features and glasses lie."""
    c = p.coarse
    y, x = (np.mgrid[:resolution, :resolution] + 0.5) / resolution - 0.5
    return (np.abs(x - c.position[0]) < margin * c.head_width * 1.1) & \
        (np.abs(y - c.position[1]) < margin * c.head_height * 1.1)


# ---------------------------------------------------------------------------------------------
# Determinism

def test_the_same_seed_gives_the_same_bytes_and_another_seed_another_face():
    a = render_face(sample_params(face_rng(7, 3)), R)
    assert a.shape == (R, R, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_face(sample_params(face_rng(7, 3)), R))
    for other in (face_rng(7, 4), face_rng(8, 3)):                      # next image, other dataset seed
        assert diff(a, render_face(sample_params(other), R)).mean() > 10


def test_datasets_of_one_seed_are_byte_identical(tmp_path):
    make_dataset(tmp_path / "a", 4, 32, seed=5, variant="rotated")
    make_dataset(tmp_path / "b", 4, 32, seed=5, variant="rotated")
    make_dataset(tmp_path / "c", 4, 32, seed=6, variant="rotated")
    for i in range(4):
        name = image_name(i)
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


# ---------------------------------------------------------------------------------------------
# Every parameter shows, at its scale

# A different value for every field; the base face has glasses off (the iris shows), and a
# texture under which the texture fields matter (angle: stripes, seed: noise).
CHANGES = {
    "coarse": dict(head_shape="square", head_width=0.26, head_height=0.33, yaw=0.7, hair_style="afro",
                   position=(0.05, 0.02), rotation=30.0, translation=(0.06, -0.04)),
    "middle": dict(eye_shape="round", eye_size=1.3, eye_spacing=0.5, brow_angle=16.0, brow_thickness=1.6,
                   nose_shape="triangle", nose_size=1.3, mouth_shape="open", mouth_width=1.0, smile=-0.6,
                   glasses="round"),
    "fine": dict(skin=(120, 80, 60), hair_colour=(230, 190, 120), iris=(60, 140, 70), clothes=(200, 40, 40),
                 background=(60, 60, 120), background2=(250, 240, 120), texture="dots", texture_angle=80.0,
                 texture_scale=0.18, texture_seed=11, light_angle=45.0, light_strength=0.38),
}
BASE_TEXTURE = {"texture_angle": "stripes", "texture_scale": "stripes", "texture_seed": "noise"}


def test_every_field_is_listed():
    assert set(CHANGES["coarse"]) == {f.name for f in fields(Coarse)}
    assert set(CHANGES["middle"]) == {f.name for f in fields(Middle)}
    assert set(CHANGES["fine"]) == {f.name for f in fields(Fine)}


@pytest.mark.parametrize("group,name", [(g, n) for g, changes in CHANGES.items() for n in changes])
def test_each_parameter_alone_changes_the_image(group, name):
    base = FaceParams()
    base = replace(base, fine=replace(base.fine, texture=BASE_TEXTURE.get(name, "gradient")))
    changed = replace(base, **{group: replace(getattr(base, group), **{name: CHANGES[group][name]})})
    d = diff(render_face(base, R), render_face(changed, R))
    assert (d > 24).sum() >= 4, f"{group}.{name}: largest change {d.max()}"


@pytest.mark.parametrize("index", range(4))
def test_each_group_of_another_face_changes_the_image_where_that_scale_lives(index):
    p, q = sample_params(face_rng(1, 2 * index)), sample_params(face_rng(1, 2 * index + 1))
    image = render_face(p, R)
    box = head_box(p, R)
    coarse = diff(image, render_face(replace(p, coarse=q.coarse), R))
    middle = diff(image, render_face(replace(p, middle=q.middle), R))
    fine = diff(image, render_face(replace(p, fine=q.fine), R))
    assert coarse.mean() > 4 and middle.mean() > 0.5 and fine.mean() > 4
    # Features stay on the head: another face's middle styles leave the rest of the picture alone.
    assert middle[box].max() > 40 and middle[~box].max() == 0
    # Colours are everywhere: the background changes too, not just the face.
    assert fine[~box].mean() > 8


def test_pictures_are_sane_faces():
    for i in range(12):
        p = sample_params(face_rng(2, i))
        image = render_face(p, R).astype(np.float32)
        assert image.std() > 15                                          # not blank
        c = p.coarse
        cx, cy = int((c.position[0] + 0.5) * R), int((c.position[1] + 0.5) * R)
        r = int(0.45 * c.head_width * R)
        face = image[cy - r:cy + r, cx - r:cx + r]                       # eyes, nose, mouth on the skin
        wall = np.median(np.concatenate([image[:3, :3], image[:3, -3:]]).reshape(-1, 3), axis=0)
        assert np.abs(face - wall).max(axis=2).mean() > 25               # the face stands out from the wall
        assert face.reshape(-1, 3).std(axis=0).max() > 12                # and has features, not a flat disc


def test_bad_names_and_sizes_are_refused():
    with pytest.raises(ValueError, match="hair_style"):
        render_face(FaceParams(coarse=Coarse(hair_style="mohawk")), R)
    with pytest.raises(ValueError, match="resolution"):
        render_face(FaceParams(), 4)
    with pytest.raises(ValueError, match="variant"):
        sample_params(face_rng(0, 0), "sideways")


# ---------------------------------------------------------------------------------------------
# The rotated variant

def test_sampling_turns_and_shifts_only_the_rotated_variant():
    upright = [sample_params(face_rng(3, i)).coarse for i in range(50)]
    rotated = [sample_params(face_rng(3, i), "rotated").coarse for i in range(50)]
    assert all(c.rotation == 0 and c.translation == (0.0, 0.0) for c in upright)
    angles = np.array([c.rotation for c in rotated])
    shifts = np.array([np.hypot(*c.translation) for c in rotated])
    assert angles.min() >= 0 and angles.max() < 360 and np.ptp(angles) > 270
    assert shifts.max() <= 0.125 and shifts.max() > 0.08


@pytest.mark.parametrize("index", range(3))
def test_turning_a_quarter_turns_the_face_a_quarter(index):
    p = sample_params(face_rng(4, index), "rotated")
    still = replace(p, coarse=replace(p.coarse, rotation=0.0, translation=(0.0, 0.0)))
    turned = replace(p, coarse=replace(p.coarse, rotation=90.0, translation=(0.0, 0.0)))
    a, b = render_face(still, R), render_face(turned, R)
    assert diff(a, b).mean() > 10                                        # it did move
    y, x = (np.mgrid[:R, :R] + 0.5) / R - 0.5
    centre = np.hypot(x, y) < 0.35                                       # the face region, any way up
    assert diff(np.rot90(a), b)[centre].mean() < 1.0                     # counter-clockwise, as np.rot90


@pytest.mark.parametrize("angle", [30.0, -50.0])
def test_any_turn_matches_turning_the_upright_picture(angle):
    p = FaceParams(coarse=Coarse(hair_style="afro", head_width=0.26), middle=Middle(nose_shape="button"))
    big = render_face(p, 4 * R)                                          # upright, turned by OpenCV, shrunk
    M = cv2.getRotationMatrix2D(((4 * R - 1) / 2, (4 * R - 1) / 2), angle, 1.0)
    expected = cv2.resize(cv2.warpAffine(big, M, (4 * R, 4 * R), flags=cv2.INTER_LINEAR), (R, R),
                          interpolation=cv2.INTER_AREA)
    turned = render_face(replace(p, coarse=replace(p.coarse, rotation=angle)), R)
    inner = slice(R // 5, R - R // 5)                                    # the warp's corners are empty
    # About 3 is what drawing at another size costs alone; ellipses turned the wrong way give about 7.
    assert diff(expected, turned)[inner, inner].mean() < 4.5


def test_a_turned_and_shifted_picture_never_shows_the_canvas_edge():
    plain = Fine(texture="gradient", background=(90, 160, 210), background2=(90, 160, 210))
    for angle in (0.1, 45.0, 135.0, 225.0, 315.0):
        shift = 0.125 * np.array([np.cos(np.radians(angle + 180)), np.sin(np.radians(angle + 180))])
        p = FaceParams(coarse=Coarse(rotation=angle, translation=tuple(shift), position=(0.0, 0.0)), fine=plain)
        image = render_face(p, R)
        for corner in (image[0, 0], image[0, -1], image[-1, 0], image[-1, -1]):
            if not np.array_equal(corner, plain.background):             # the body may reach a corner
                assert corner.max() > 30, f"a black corner at {angle} degrees"


# ---------------------------------------------------------------------------------------------
# Datasets on disk

def test_a_folder_in_dataset_tool_layout_that_the_training_dataset_reads(tmp_path):
    out = make_dataset(tmp_path / "faces", 12, 32, seed=3)
    assert out == tmp_path / "faces"
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert names == [f"00000/img{i:08d}.png" for i in range(12)]
    assert json.loads((out / "dataset.json").read_text()) == {"labels": None}
    first = iio.imread(out / "00000/img00000000.png")
    assert first.shape == (32, 32, 3) and np.array_equal(first, render_face(sample_params(face_rng(3, 0)), 32))
    ds = ImageDataset(DatasetOptions(str(out), 32, cache=False))
    assert len(ds) == 12 and not ds.has_labels
    image, label = ds[0]
    assert image.shape == (3, 32, 32) and np.array_equal(image.numpy().transpose(1, 2, 0), first)
    assert not list(tmp_path.glob(".*"))                                 # no temporary left


def test_thousands_go_in_subfolders_of_a_thousand_and_a_zip_matches_the_folder(tmp_path):
    folder = make_dataset(tmp_path / "faces", 1001, 8, seed=1)
    assert sorted(p.name for p in folder.iterdir()) == ["00000", "00001", "dataset.json"]
    assert [p.name for p in (folder / "00001").iterdir()] == ["img00001000.png"]
    zipped = make_dataset(tmp_path / "faces.zip", 1001, 8, seed=1)
    with zipfile.ZipFile(zipped) as zf:
        names = zf.namelist()
        assert "dataset.json" in names and len(names) == 1002
        assert zf.read("00001/img00001000.png") == (folder / "00001/img00001000.png").read_bytes()
    a = ImageDataset(DatasetOptions(str(folder), 8, cache=False))
    b = ImageDataset(DatasetOptions(str(zipped), 8, cache=False))
    assert len(a) == len(b) == 1001 and a.names == b.names
    assert np.array_equal(a[1000][0].numpy(), b[1000][0].numpy())


@pytest.mark.parametrize("name", ["faces", "faces.zip"])
def test_a_cancelled_dataset_leaves_nothing(tmp_path, name):
    token, seen = CancelToken(), []

    def progress(event):
        seen.append(event.step)
        if event.step == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        make_dataset(tmp_path / name, 10, 16, progress=progress, cancel=token)
    assert seen == [1, 2, 3]
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_kept_and_bad_requests_are_errors(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    with pytest.raises(StyleDeckError, match="not an empty folder"):
        make_dataset(tmp_path / "full", 2, 16)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["mine.txt"]
    (tmp_path / "empty").mkdir()
    assert len(list(make_dataset(tmp_path / "empty", 2, 16).rglob("*.png"))) == 2
    for kwargs in (dict(count=0), dict(resolution=4), dict(variant="sideways")):
        with pytest.raises(StyleDeckError):
            make_dataset(tmp_path / "x", **{"count": 2, "resolution": 16, **kwargs})
    assert not (tmp_path / "x").exists()
