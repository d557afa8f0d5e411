"""FFHQ-style face alignment on a real photograph (scikit-image's astronaut, shipped with the package):
the face is found, the crop puts the eyes level and where FFHQ puts them, a tilted photo comes out
upright, and a photo without a face falls back to the user's crop with a note."""
from __future__ import annotations

import cv2
import imageio.v3 as iio
import numpy as np
import pytest
from skimage import data

from engine.face_align import NoFaceFound, align_face, face_landmarks, ffhq_quad
from engine.photo import load_photo, prepare_photo

R = 256


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()                                   # uint8 [512, 512, 3], a portrait


def _eyes(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)


def test_quad_geometry_on_hand_made_landmarks():
    lm = np.zeros((68, 2))
    lm[36:42], lm[42:48] = (40, 50), (60, 50)                 # eyes 20 px apart, level
    lm[48], lm[54] = (42, 80), (58, 80)                       # mouth 30 px below the eyes
    quad = ffhq_quad(lm)
    # x axis (1, 0); half side max(2 * 20, 1.8 * 30) = 54; centre eye_mid + 0.1 * (0, 30) = (50, 53)
    np.testing.assert_allclose(quad, [[-4, -1], [-4, 107], [104, 107], [104, -1]], atol=1e-9)
    # turning the landmarks turns the square with them
    angle = np.deg2rad(30)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    np.testing.assert_allclose(ffhq_quad(lm @ rot.T), quad @ rot.T, atol=1e-9)


def test_the_astronaut_is_found_and_aligned(astronaut):
    lm = face_landmarks(astronaut)
    assert lm.shape == (68, 2)
    left, right = _eyes(lm)
    assert 150 < left[0] < right[0] < 300 and 60 < left[1] < 140   # her face, not the patch on her suit
    face = align_face(astronaut, R)
    assert face.image.shape == (R, R, 3) and face.image.dtype == np.uint8 and not face.padded
    # Where the eyes land in the crop: level, symmetric about the centre, as FFHQ puts them.
    to_out = cv2.getAffineTransform(np.float32(face.quad[:3]), np.float32([[0, 0], [0, R], [R, R]]))
    left_o, right_o = (to_out @ np.append(p, 1) for p in (left, right))
    assert abs(left_o[1] - right_o[1]) < 0.01 * R
    assert abs((left_o[0] + right_o[0]) / 2 - R / 2) < 0.02 * R
    # The detector, run again on the crop, finds the eyes where the geometry says they are.
    left_again, right_again = _eyes(face_landmarks(face.image))
    assert np.abs(left_again - left_o).max() < 0.03 * R and np.abs(right_again - right_o).max() < 0.03 * R


def test_a_tilted_photo_comes_out_upright(astronaut):
    upright = align_face(astronaut, R).image.astype(np.float64)
    turn = cv2.getRotationMatrix2D((256, 256), 20, 1.0)      # 20 degrees anticlockwise
    tilted = cv2.warpAffine(astronaut, turn, (512, 512), borderMode=cv2.BORDER_REFLECT_101)
    again = align_face(tilted, R).image.astype(np.float64)
    # The same face, the same crop: only resampling and the landmarks' jitter differ.
    centre = slice(R // 4, 3 * R // 4)
    assert np.abs(again[centre, centre] - upright[centre, centre]).mean() < 12
    plain_crop = cv2.resize(tilted, (R, R), interpolation=cv2.INTER_AREA).astype(np.float64)
    assert np.abs(plain_crop[centre, centre] - upright[centre, centre]).mean() > 30   # the check can fail


def test_a_face_at_the_edge_is_padded_softly(astronaut):
    face = align_face(astronaut[60:400, 170:512], R)           # the crop square reaches past the left edge
    assert face.padded and face.image.shape == (R, R, 3)
    # left edge: mirrored content faded towards a blur and a plain colour, not a hard black border
    assert face.image[:, :8].mean() > 60


def test_no_face_is_an_error_and_prepare_photo_falls_back_with_a_note(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    with pytest.raises(NoFaceFound, match="No face"):
        align_face(noise, 64)
    path = tmp_path / "noise.png"
    iio.imwrite(path, noise)
    photo = prepare_photo(path, 64, align=True)
    assert not photo.aligned and "noise.png" in photo.note and "No face" in photo.note
    assert "centre crop" in photo.note
    assert np.array_equal(photo.image, load_photo(path, 64))


def test_prepare_photo_aligns_a_real_photo_and_converts_channels(tmp_path, astronaut):
    path = tmp_path / "astronaut.jpg"
    iio.imwrite(path, astronaut, quality=95)
    photo = prepare_photo(path, 64, align=True)
    assert photo.aligned and photo.note == "" and photo.image.shape == (64, 64, 3)
    assert not np.array_equal(photo.image, load_photo(path, 64))       # not the centre crop
    gray = prepare_photo(path, 64, align=True, channels=1)
    assert gray.aligned and gray.image.shape == (64, 64, 1)
