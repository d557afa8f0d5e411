"""Toy faces: parametric cartoon faces drawn with OpenCV, the dataset of the bundled starter models.

A face is a frozen `FaceParams` of three groups, ordered by the scale at which a StyleGAN
decides them, so that style mixing a network trained on them shows something at every level:
- `Coarse`: head shape, width and height, yaw (features shifted sideways, the outline made
  asymmetric), hair style, where the face sits; and, for the "rotated" variant, a rotation and
  translation of the whole picture (background included).
- `Middle`: eye shape, size and spacing, brow angle and thickness, nose, mouth shape, width and
  smile, glasses.
- `Fine`: skin tone, hair and iris colour, clothes, background colours and texture (gradient,
  stripes, noise, dots), and a soft directional light.

`render_face(params, resolution)` draws at `SUPERSAMPLE` times the size with anti-aliased OpenCV
primitives and shrinks with `cv2.INTER_AREA` (an exact box filter), so edges are clean at any
size. The scene is described in image widths, origin at the image centre, y down; the picture's
rotation and translation are applied to every point as it is drawn (the same as drawing an
unbounded scene on a large canvas and cutting a turned window out of it, without the canvas, its
edge or a resampling blur): the background covers the whole window at any angle and shift.

`make_dataset` writes images in the layout of NVIDIA's `dataset_tool.py` (a folder or a zip of
`00000/img00000000.png`, ... and `dataset.json` with `{"labels": null}`), image i of seed s drawn
from `face_rng(s, i)`, so any image can be remade alone, and a dataset has the same pixels
wherever the same OpenCV version draws it (anti-aliasing is OpenCV's own rasteriser).
"""
from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import cv2
import numpy as np

from engine.errors import StyleDeckError
from engine.jobs import CancelToken, Progress, ProgressCallback, atomic_write

__all__ = ["Coarse", "FaceParams", "Fine", "Middle", "SUPERSAMPLE", "VARIANTS", "face_rng", "image_name",
           "make_dataset", "render_face", "sample_params"]

RGB = tuple[int, int, int]
Variant = Literal["upright", "rotated"]
VARIANTS: tuple[str, ...] = ("upright", "rotated")
SUPERSAMPLE = 4                     # draw at 4x, shrink with INTER_AREA: 16 samples per pixel

HEAD_SHAPES = ("oval", "round", "square", "heart", "long")
HAIR_STYLES = ("short", "long", "bun", "bald", "fringe", "afro")
EYE_SHAPES = ("round", "almond", "sleepy")
NOSE_SHAPES = ("button", "line", "triangle", "round")
MOUTH_SHAPES = ("line", "open", "lips")
GLASSES = ("none", "round", "square", "shades")
TEXTURES = ("gradient", "stripes", "noise", "dots")

SKIN_TONES: tuple[RGB, ...] = ((255, 226, 204), (246, 205, 175), (234, 184, 146), (214, 160, 120),
                               (186, 128, 92), (150, 96, 66), (112, 70, 48), (84, 54, 40))
HAIR_COLOURS: tuple[RGB, ...] = ((28, 24, 24), (62, 40, 28), (104, 66, 38), (146, 72, 34), (204, 110, 50),
                                 (228, 192, 120), (236, 226, 200), (150, 150, 156), (60, 96, 200),
                                 (226, 106, 170), (70, 160, 104))
HAIR_WEIGHTS = (14, 14, 12, 8, 7, 9, 4, 5, 2.5, 2.5, 2)     # fantasy colours are rare
IRIS_COLOURS: tuple[RGB, ...] = ((96, 58, 30), (58, 36, 22), (136, 108, 50), (66, 128, 72), (64, 116, 196),
                                 (116, 128, 140), (120, 80, 160))

# superellipse exponent, jaw taper, width and height factors per head shape
_HEAD_SHAPES = {"oval": (2.0, 0.22, 1.0, 1.0), "round": (2.0, 0.06, 1.07, 0.92), "square": (3.4, 0.10, 1.0, 0.95),
                "heart": (2.4, 0.48, 1.06, 1.0), "long": (2.3, 0.18, 0.9, 1.1)}
_SHIFT = 3                          # OpenCV fixed-point bits: coordinates in 1/8 pixel
_INK = (38, 24, 22)                 # outlines of eyes and features


# ---------------------------------------------------------------------------------------------
# Parameters

@dataclass(frozen=True)
class Coarse:
    """Layout and silhouette: what the 4-16 px layers decide. Lengths are in image widths."""
    head_shape: str = "oval"                        # one of HEAD_SHAPES
    head_width: float = 0.24                        # half-width of the head
    head_height: float = 0.29                       # half-height of the head
    yaw: float = 0.0                                # -1 (turned to the viewer's left) .. 1 (right)
    hair_style: str = "short"                       # one of HAIR_STYLES
    position: tuple[float, float] = (0.0, -0.03)    # head centre, from the image centre
    rotation: float = 0.0                           # whole picture, degrees counter-clockwise
    translation: tuple[float, float] = (0.0, 0.0)   # whole picture, after rotating


@dataclass(frozen=True)
class Middle:
    """Features: what the 32-64 px layers decide. Sizes are relative to the head."""
    eye_shape: str = "almond"                       # one of EYE_SHAPES
    eye_size: float = 1.0                           # scale of the eyes
    eye_spacing: float = 0.42                       # eye centre from the face's middle, head half-widths
    brow_angle: float = 0.0                         # degrees; > 0 raises the inner ends (surprise)
    brow_thickness: float = 1.0                     # scale of the brow stroke
    nose_shape: str = "button"                      # one of NOSE_SHAPES
    nose_size: float = 1.0
    mouth_shape: str = "line"                       # one of MOUTH_SHAPES
    mouth_width: float = 0.8                        # head half-widths
    smile: float = 0.5                              # -1 frown .. 1 broad smile
    glasses: str = "none"                           # one of GLASSES


@dataclass(frozen=True)
class Fine:
    """Colours, texture and light: what the highest-resolution layers decide."""
    skin: RGB = SKIN_TONES[1]
    hair_colour: RGB = HAIR_COLOURS[2]
    iris: RGB = IRIS_COLOURS[0]
    clothes: RGB = (70, 110, 170)
    background: RGB = (200, 214, 226)
    background2: RGB = (160, 182, 204)              # the second colour of the texture
    texture: str = "gradient"                       # one of TEXTURES
    texture_angle: float = 30.0                     # degrees: gradient direction, stripe and dot grid angle
    texture_scale: float = 0.12                     # stripe, dot and noise period, image widths
    texture_seed: int = 0                           # the noise texture's random values
    light_angle: float = 225.0                      # degrees: where the light comes from (225: top left)
    light_strength: float = 0.2                     # 0 flat .. 0.4 strong shading


@dataclass(frozen=True)
class FaceParams:
    """Everything that decides one face image."""
    coarse: Coarse = field(default_factory=Coarse)
    middle: Middle = field(default_factory=Middle)
    fine: Fine = field(default_factory=Fine)


def face_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image `index` in a dataset of `seed`: independent streams per (seed, index)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def _jitter(rng: np.random.Generator, colour: Sequence[int], amount: float) -> RGB:
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in colour)   # type: ignore[return-value]


def _hsv(h: float, s: float, v: float) -> RGB:
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))   # type: ignore[return-value]


def sample_params(rng: np.random.Generator, variant: Variant = "upright") -> FaceParams:
    """A random face; "rotated" also turns (full circle) and shifts (up to 1/8 image) the whole picture."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    u = rng.uniform
    width = u(0.21, 0.265)
    rotation, translation = 0.0, (0.0, 0.0)
    if variant == "rotated":
        rotation = u(0.0, 360.0)
        radius, angle = 0.125 * math.sqrt(u()), u(0.0, 2 * math.pi)       # uniform in the disc
        translation = (radius * math.cos(angle), radius * math.sin(angle))
    coarse = Coarse(
        head_shape=str(rng.choice(HEAD_SHAPES)), head_width=width, head_height=width * u(1.1, 1.3),
        yaw=float(np.clip(rng.normal(0, 0.45), -1, 1)),
        hair_style=str(rng.choice(HAIR_STYLES, p=np.array([24, 20, 12, 9, 20, 15]) / 100)),
        position=(u(-0.05, 0.05), u(-0.07, -0.02)), rotation=rotation, translation=translation)
    middle = Middle(
        eye_shape=str(rng.choice(EYE_SHAPES)), eye_size=u(0.8, 1.3), eye_spacing=u(0.36, 0.5),
        brow_angle=u(-18, 18), brow_thickness=u(0.6, 1.6), nose_shape=str(rng.choice(NOSE_SHAPES)),
        nose_size=u(0.8, 1.3), mouth_shape=str(rng.choice(MOUTH_SHAPES)), mouth_width=u(0.55, 1.0),
        smile=float(np.clip(rng.normal(0.35, 0.45), -1, 1)),
        glasses=str(rng.choice(GLASSES, p=[0.64, 0.14, 0.12, 0.10])))
    skin = _jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 6)
    for _ in range(32):                     # a wall the colour of the skin would hide the face's outline
        hue, value = u(), u(0.55, 0.97)
        background = _hsv(hue, u(0.1, 0.6), value)
        if np.linalg.norm(np.subtract(background, skin)) > 80:
            break
    value2 = float(np.clip(value + rng.choice([-1, 1]) * u(0.12, 0.3), 0.2, 1.0))
    weights = np.array(HAIR_WEIGHTS) / sum(HAIR_WEIGHTS)
    fine = Fine(
        skin=skin,
        hair_colour=_jitter(rng, HAIR_COLOURS[rng.choice(len(HAIR_COLOURS), p=weights)], 10),
        iris=_jitter(rng, IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))], 8),
        clothes=_hsv(u(), u(0.25, 0.9), u(0.3, 0.95)),
        background=background, background2=_hsv(hue + u(-0.12, 0.12), u(0.1, 0.7), value2),
        texture=str(rng.choice(TEXTURES)), texture_angle=u(0.0, 180.0), texture_scale=u(0.08, 0.2),
        texture_seed=int(rng.integers(2**31)), light_angle=u(0.0, 360.0), light_strength=u(0.08, 0.35))
    return FaceParams(coarse, middle, fine)


# ---------------------------------------------------------------------------------------------
# Drawing primitives: image widths in, anti-aliased OpenCV calls out

def _shade(colour: Sequence[float], factor: float) -> RGB:
    return tuple(int(min(255, round(c * factor))) for c in colour)     # type: ignore[return-value]


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> RGB:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))     # type: ignore[return-value]


class _Pen:
    """Draws the scene in image widths (origin at the image centre, y down) on an RGBA canvas.

    The pen carries the picture's rotation and translation: every point goes through
    pixel = A @ point + b, ellipses turn by the same angle, so a turned picture is drawn as
    sharply as an upright one, and the background, drawn for the whole window, has no edge.
    Everything of the face is drawn opaque (alpha 255) over a background of alpha 0, so alpha
    is the face's mask afterwards: the light shades the face, not the wall behind it.
    """

    def __init__(self, canvas: np.ndarray, rotation: float = 0.0, translation: tuple[float, float] = (0.0, 0.0)):
        self.canvas = canvas
        self.scale = float(canvas.shape[0])                             # pixels per image width
        self.rotation = rotation
        angle = math.radians(rotation)
        cos, sin = math.cos(angle), math.sin(angle)
        # Counter-clockwise on screen (y down), as cv2.getRotationMatrix2D and np.rot90.
        self.A = self.scale * np.array([[cos, sin], [-sin, cos]])
        self.b = (canvas.shape[0] - 1) / 2 + self.scale * np.asarray(translation, np.float64)
        # The window shows the scene within this many image widths of the origin.
        self.reach = math.sqrt(0.5) + math.hypot(*translation) + 2 / self.scale

    def to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """[N, 2] image widths -> float [N, 2] canvas pixels."""
        return np.asarray(xy, np.float64) @ self.A.T + self.b

    def fix(self, xy: np.ndarray) -> np.ndarray:
        """[N, 2] image widths -> int32 [N, 2] fixed-point pixels."""
        return np.rint(self.to_pixels(xy) * (1 << _SHIFT)).astype(np.int32)

    def width(self, w: float) -> int:
        return max(1, int(round(w * self.scale)))

    def poly(self, xy: np.ndarray, colour: Sequence[float], alpha: int = 255) -> None:
        cv2.fillPoly(self.canvas, [self.fix(xy)], (*colour, alpha), cv2.LINE_AA, _SHIFT)

    def polys(self, polys: list[np.ndarray], colour: Sequence[float], alpha: int = 255) -> None:
        if polys:
            cv2.fillPoly(self.canvas, [self.fix(p) for p in polys], (*colour, alpha), cv2.LINE_AA, _SHIFT)

    def line(self, xy: np.ndarray, colour: Sequence[float], width: float, closed: bool = False) -> None:
        cv2.polylines(self.canvas, [self.fix(xy)], closed, (*colour, 255), self.width(width), cv2.LINE_AA, _SHIFT)

    def ellipse(self, centre: Sequence[float], axes: Sequence[float], colour: Sequence[float],
                angle: float = 0.0, width: float | None = None, alpha: int = 255) -> None:
        c = self.fix(np.asarray(centre)[None])[0]
        ax = [max(0, int(round(a * self.scale * (1 << _SHIFT)))) for a in axes]
        # cv2 turns ellipses clockwise on screen; the picture turns counter-clockwise.
        cv2.ellipse(self.canvas, (int(c[0]), int(c[1])), (ax[0], ax[1]), angle - self.rotation, 0, 360,
                    (*colour, alpha), -1 if width is None else self.width(width), cv2.LINE_AA, _SHIFT)

    def circle(self, centre: Sequence[float], radius: float, colour: Sequence[float],
               width: float | None = None, alpha: int = 255) -> None:
        self.ellipse(centre, (radius, radius), colour, 0.0, width, alpha)


def _arc(t0: float, t1: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(t0, t1, n)
    return np.cos(t), np.sin(t)


class _Head:
    """The head's frame: head units (u, v) in [-1, 1] across and down the face -> image widths."""

    def __init__(self, c: Coarse):
        exponent, taper, wf, hf = _HEAD_SHAPES[c.head_shape]
        self.x, self.y = c.position
        self.a, self.b = c.head_width * wf, c.head_height * hf
        self.exponent, self.taper, self.yaw = exponent, taper, c.yaw

    def at(self, u: np.ndarray | float, v: np.ndarray | float) -> np.ndarray:
        """Head units -> [N, 2] image widths; the side the face turns to is narrower (yaw)."""
        u, v = np.atleast_1d(np.asarray(u, np.float64)), np.atleast_1d(np.asarray(v, np.float64))
        u = u * np.where(u > 0, 1 - 0.16 * self.yaw, 1 + 0.16 * self.yaw)
        u, v = np.broadcast_arrays(u, v)
        return np.stack([self.x + u * self.a, self.y + v * self.b], axis=1)

    def outline(self, t: np.ndarray, grow: float = 1.0) -> np.ndarray:
        """Points of the head's outline at angles t (0 right, pi/2 chin), scaled by `grow`."""
        c, s = np.cos(t), np.sin(t)
        e = 2.0 / self.exponent                                         # superellipse: squarer as n grows
        u = np.sign(c) * np.abs(c) ** e
        v = np.sign(s) * np.abs(s) ** e
        below = np.clip(v, 0, None)
        u = u * (1 - self.taper * below ** 2) + 0.12 * self.yaw * below ** 2   # the jaw narrows, the chin turns
        return self.at(u * grow, v * grow)


# ---------------------------------------------------------------------------------------------
# The scene, back to front

def _fill(canvas: np.ndarray, colour: Sequence[int], alpha: int = 0) -> None:
    """Set every pixel of an RGBA canvas: one 32-bit store per pixel, a memset's speed."""
    canvas.view(np.uint32)[:] = np.array([*colour, alpha], np.uint8).view(np.uint32)[0]


def _background(pen: _Pen, f: Fine, rng_seed: int) -> None:
    """Fill the whole canvas (alpha 0) with the background colour and texture."""
    canvas, size = pen.canvas, pen.canvas.shape[0]
    angle = math.radians(f.texture_angle)
    direction = np.array([math.cos(angle), math.sin(angle)])
    if f.texture in ("gradient", "noise"):
        # Smooth fields live on a lattice anchored at the scene's origin, wide enough for any
        # window (reach < 1 image width), put on the canvas by one warp that also turns it:
        # exact for the linear gradient (linear between samples), cubic for the noise.
        cell = 0.25 if f.texture == "gradient" else f.texture_scale
        half_cells = int(math.ceil(max(1.0, pen.reach) / cell)) + 1     # fixed for any usual window
        pos = np.arange(-half_cells, half_cells + 1) * cell               # lattice points, image widths
        if f.texture == "gradient":
            t = np.clip(0.5 + pos[None, :] * direction[0] + pos[:, None] * direction[1], 0, 1)
        else:
            t = np.random.default_rng(rng_seed).random((len(pos), len(pos)))
        a, b = np.asarray(f.background, np.float64), np.asarray(f.background2, np.float64)
        lattice = np.zeros((len(pos), len(pos), 4), np.uint8)
        lattice[:, :, :3] = np.rint(a + t[:, :, None] * (b - a))
        # lattice index j -> scene point (j - half_cells) * cell -> canvas pixel
        M = np.concatenate([pen.A * cell, pen.to_pixels(np.full((1, 2), -half_cells * cell)).T], axis=1)
        interpolation = cv2.INTER_LINEAR if f.texture == "gradient" else cv2.INTER_CUBIC
        cv2.warpAffine(lattice, M, (size, size), dst=canvas, flags=interpolation, borderMode=cv2.BORDER_REPLICATE)
        return
    _fill(canvas, f.background)
    period = f.texture_scale
    normal, along = direction, np.array([-direction[1], direction[0]])
    reach = pen.reach + period
    count = int(math.ceil(reach / period))
    if f.texture == "stripes":
        offsets = (np.arange(-count, count + 1)[:, None, None] + np.array([0, 0.5, 0.5, 0])[None, :, None]) * period
        ends = np.array([1, 1, -1, -1])[None, :, None] * reach
        bands = offsets * normal + ends * along                         # [K, 4, 2] quadrilaterals
        pen.polys(list(bands), f.background2, alpha=0)
        return
    # Dots on a rotated hexagonal grid, each a 20-gon, all in one fillPoly call.
    radius = period * 0.22
    j, i = np.mgrid[-count:count + 1, -count:count + 1]
    centres = ((i + 0.5 * (j % 2)).reshape(-1, 1) * along + j.reshape(-1, 1) * 0.866 * normal) * period
    centres = centres[np.hypot(centres[:, 0], centres[:, 1]) < reach]
    t = np.linspace(0, 2 * math.pi, 20, endpoint=False)
    ring = radius * np.stack([np.cos(t), np.sin(t)], 1)
    pen.polys(list(centres[:, None, :] + ring[None]), f.background2, alpha=0)


def _body(pen: _Pen, head: _Head, fine: Fine) -> None:
    """Shoulders in the clothes' colour, reaching far below the picture (it may be turned)."""
    top = head.y + head.b + 0.07
    x = head.x + 0.06 * head.yaw * head.a
    cu, sv = _arc(math.pi, 2 * math.pi, 32)
    shoulders = np.stack([x + 0.47 * cu, top + 0.27 + 0.27 * sv], 1)
    pen.poly(np.concatenate([shoulders, [[x + 0.47, top + 3.0], [x - 0.47, top + 3.0]]]), fine.clothes)
    pen.line(shoulders, _shade(fine.clothes, 0.7), 0.006)


def _neck(pen: _Pen, head: _Head, fine: Fine) -> None:
    top = head.y + head.b * 0.5
    bottom = head.y + head.b + 0.12
    x = head.x + 0.08 * head.yaw * head.a
    w = 0.4 * head.a
    neck = np.array([[x - w, top], [x + w, top], [x + w, bottom], [x, bottom + 0.05], [x - w, bottom]])
    pen.poly(neck, _shade(fine.skin, 0.86))


def _ears(pen: _Pen, head: _Head, fine: Fine) -> None:
    for side in (-1, 1):
        size = float(np.clip(1 - 0.6 * head.yaw * side, 0.3, 1.4))  # the far ear turns away
        centre = head.at(side * 0.97, 0.02)[0]
        axes = (0.15 * head.a * size, 0.24 * head.b)
        pen.ellipse(centre, axes, _shade(fine.skin, 0.94))
        pen.ellipse(centre + [side * 0.02 * head.a, 0], (axes[0] * 0.5, axes[1] * 0.6), _shade(fine.skin, 0.75),
                    width=0.006)


def _hair_back(pen: _Pen, head: _Head, c: Coarse, fine: Fine) -> None:
    """Hair behind the head: long hair's fall, the afro's volume, the bun."""
    colour = fine.hair_colour
    if c.hair_style == "long":
        cu, sv = _arc(math.pi, 2 * math.pi, 24)
        top = head.at(1.16 * cu, -0.15 + 1.0 * sv)
        right = head.at([1.24, 1.3, 1.2, 0.6, 0.0, -0.6, -1.2, -1.3, -1.24],
                        [0.2, 0.9, 1.42, 1.5, 1.46, 1.5, 1.42, 0.9, 0.2])
        pen.poly(np.concatenate([top, right]), colour)
    elif c.hair_style == "afro":
        centre = head.at(0, -0.22)[0]
        pen.ellipse(centre, (head.a * 1.38, head.b * 1.08), colour)
        cu, sv = _arc(math.pi - 0.5, 2 * math.pi + 0.5, 13)
        for p in head.at(1.36 * cu, -0.22 + 1.06 * sv):
            pen.circle(p, head.a * 0.3, colour)
    elif c.hair_style == "bun":
        pen.circle(head.at(0.0, -1.08)[0], head.a * 0.42, colour)
        pen.circle(head.at(0.0, -1.08)[0], head.a * 0.42, _shade(colour, 0.7), width=0.006)


def _hair_front(pen: _Pen, head: _Head, c: Coarse, fine: Fine) -> None:
    """The hair over the forehead: a cap between the outline and a hairline, or side tufts when bald."""
    colour, style = fine.hair_colour, c.hair_style
    if style == "bald":                                                 # a fringe of hair around the ears
        for t0 in (math.pi - 0.3, 2 * math.pi - 0.5):
            t = np.linspace(t0, t0 + 0.8, 12)
            pen.poly(np.concatenate([head.outline(t, grow=1.05), head.outline(t[::-1], grow=0.94)]), colour)
        return
    ends = {"short": 0.12, "fringe": 0.16, "bun": 0.05, "afro": 0.35, "long": 0.3}[style]
    t = np.linspace(math.pi - ends, 2 * math.pi + ends, 40)
    outer = head.outline(t, grow=1.07)
    s = np.linspace(0, math.pi, 24)                                     # hairline, right to left
    if style == "fringe":
        u = np.linspace(0.92, -0.92, 25)
        v = -0.42 + 0.07 * np.abs(np.sin(u * 11))                       # cut bangs, a little ragged
        inner = head.at(np.r_[0.96, 0.94, u, -0.94, -0.96], np.r_[math.sin(ends), -0.3, v, -0.3, math.sin(ends)])
    elif style == "long":
        # Side parting, locks framing the face down to the jaw.
        part = 0.3
        hair_u = np.r_[0.82, 0.8, 0.84 * np.cos(s) * np.where(np.cos(s) > 0, 1 - part, 1 + part) + part]
        hair_v = np.r_[0.78, 0.2, -0.62 * np.sin(s) + 0.05 * np.cos(2 * s)]
        hair_u = np.r_[hair_u, -0.8, -0.82]
        hair_v = np.r_[hair_v, 0.2, 0.78]
        outer = np.concatenate([head.at(-1.12, 0.8), outer, head.at(1.12, 0.8)])
        inner = head.at(hair_u, hair_v)
    else:
        depth = {"short": 0.62, "bun": 0.72, "afro": 0.56}[style]
        start = math.sin(ends)
        inner = head.at(0.93 * np.cos(s), start - (start + depth) * np.sin(s))
    cap = np.concatenate([outer, inner])
    pen.poly(cap, colour)
    if style in ("short", "fringe", "long"):                            # a strand or two: hair, not a helmet
        for k in (-0.35, 0.1, 0.45):
            strand = head.at(k + np.array([0.0, 0.08, 0.12]), [-1.0, -0.85, -0.68])
            pen.line(strand, _shade(colour, 0.72), 0.004)


def _eyes(pen: _Pen, head: _Head, m: Middle, fine: Fine) -> list[tuple[np.ndarray, float]]:
    """Two eyes; returns each eye's centre and radius, for the brows and glasses."""
    placed = []
    for side in (-1, 1):
        turn = 1 - 0.3 * head.yaw * side                                # the far eye is foreshortened
        u = 0.28 * head.yaw + side * m.eye_spacing * turn
        centre = head.at(u, -0.04)[0]
        rx = 0.16 * head.a * m.eye_size * turn
        ry = rx * {"round": 0.85, "almond": 0.58, "sleepy": 0.62}[m.eye_shape] / turn
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        x, y = rx * np.cos(t), ry * np.sin(t)
        if m.eye_shape != "round":                                      # pointed corners
            y = y * (0.55 + 0.45 * np.abs(np.sin(t)))
        sclera = centre + np.stack([x, y], 1)
        pen.poly(sclera, (250, 250, 246))
        r_iris = min(ry * 0.92, rx * 0.6)
        gaze = centre + [0.25 * rx * head.yaw, 0.05 * ry]
        pen.circle(gaze, r_iris, fine.iris)
        pen.circle(gaze, r_iris * 0.48, (16, 12, 12))
        pen.circle(gaze + [-0.35 * r_iris, -0.35 * r_iris], r_iris * 0.22, (255, 255, 255))
        if m.eye_shape == "sleepy":                                      # a heavy lid over the upper third
            lid_t = np.linspace(math.pi, 2 * math.pi, 20)
            lid = centre + np.stack([rx * 1.08 * np.cos(lid_t), ry * 1.1 * np.sin(lid_t)], 1)
            lid = np.concatenate([lid, centre + [[rx * 1.08, -0.1 * ry], [-rx * 1.08, -0.1 * ry]]])
            pen.poly(lid, _shade(fine.skin, 0.9))
            pen.line(centre + [[-rx * 1.02, -0.1 * ry], [rx * 1.02, -0.1 * ry]], _INK, 0.006)
        pen.line(sclera, _INK, 0.0035, closed=True)
        upper = sclera[20:] if m.eye_shape != "sleepy" else sclera[:0]
        if len(upper):
            pen.line(np.concatenate([upper, sclera[:1]]), _INK, 0.008)    # the upper lid line
        placed.append((centre, max(rx, ry)))
    return placed


def _brows(pen: _Pen, head: _Head, m: Middle, fine: Fine, eyes: list[tuple[np.ndarray, float]]) -> None:
    colour = _shade(fine.hair_colour, 0.72) if fine.hair_colour[0] < 200 else _shade(fine.hair_colour, 0.55)
    for side, (centre, radius) in zip((-1, 1), eyes):
        y = centre[1] - max(radius * 0.75, 0.09 * head.b) - 0.1 * head.b
        half = radius * 1.15
        tilt = math.tan(math.radians(m.brow_angle))
        s = np.linspace(-1, 1, 7)                                        # -1 inner end, 1 outer end
        xs = centre[0] + side * s * half
        ys = y - 0.25 * half * (1 - s ** 2) + tilt * half * s            # an arch, the inner end raised or lowered
        pen.line(np.stack([xs, ys], 1), colour, 0.007 * m.brow_thickness + 0.002)


def _nose(pen: _Pen, head: _Head, m: Middle, fine: Fine) -> None:
    centre = head.at(0.4 * head.yaw, 0.34)[0]
    size = 0.15 * head.a * m.nose_size
    dark = _shade(fine.skin, 0.55)
    if m.nose_shape == "button":
        pen.ellipse(centre, (size * 1.1, size * 0.8), _shade(fine.skin, 0.84))
        for side in (-1, 1):
            pen.circle(centre + [side * size * 0.5, size * 0.35], size * 0.26, dark)
    elif m.nose_shape == "line":
        d = 1 if head.yaw >= 0 else -1
        pts = centre + size * np.array([[-0.2 * d, -2.2], [0.1 * d, -0.6], [0.8 * d, 0.5], [0.0, 0.8], [-0.5 * d, 0.6]])
        pen.line(pts, dark, 0.007)
    elif m.nose_shape == "triangle":
        tri = centre + size * np.array([[0.0, -2.0], [1.0, 0.7], [-1.0, 0.7]])
        pen.poly(tri, _shade(fine.skin, 0.8))
        pen.line(tri[1:], dark, 0.006)
    else:                                                                # round: a clown's button
        pen.circle(centre, size * 1.05, _mix(fine.skin, (220, 90, 90), 0.35))
        pen.circle(centre + [-0.35 * size, -0.35 * size], size * 0.28, _mix(fine.skin, (255, 255, 255), 0.6))


def _mouth(pen: _Pen, head: _Head, m: Middle, fine: Fine) -> None:
    centre = head.at(0.3 * head.yaw, 0.63)[0]
    half = 0.5 * m.mouth_width * head.a
    u = np.linspace(-1, 1, 21)
    bend = m.smile * 0.3 * half * (1 - u ** 2)                         # > 0 curves down in the middle: a smile
    x = centre[0] + u * half
    lip = _mix(fine.skin, (196, 60, 72), 0.55)
    if m.mouth_shape == "line":
        pen.line(np.stack([x, centre[1] + bend - 0.3 * m.smile * 0.3 * half], 1), _shade(lip, 0.7), 0.007)
    elif m.mouth_shape == "open":
        opening = half * (0.35 + 0.25 * max(m.smile, 0.0)) * (1 - u ** 2)
        upper = centre[1] + 0.4 * bend - 0.15 * half
        lower = upper + 0.6 * bend + opening
        pen.poly(np.r_[np.stack([x, upper], 1), np.stack([x, lower], 1)[::-1]], (92, 28, 36))
        teeth = np.minimum(upper + 0.3 * opening, lower)
        pen.poly(np.r_[np.stack([x, upper], 1), np.stack([x, teeth], 1)[::-1]], (248, 246, 238))
        pen.line(np.r_[np.stack([x, upper], 1), np.stack([x, lower], 1)[::-1]], _shade(lip, 0.8), 0.005,
                 closed=True)
    else:                                                                # lips
        mid = centre[1] + bend - 0.1 * half
        top = mid - 0.28 * half * np.sqrt(1 - u ** 2) * (1 - 0.25 * np.cos(u * math.pi * 2) ** 2)
        bottom = mid + 0.36 * half * np.sqrt(1 - u ** 2)
        pen.poly(np.r_[np.stack([x, top], 1), np.stack([x, bottom], 1)[::-1]], lip)
        pen.line(np.stack([x, mid], 1), _shade(lip, 0.6), 0.004)


def _glasses(pen: _Pen, head: _Head, m: Middle, eyes: list[tuple[np.ndarray, float]]) -> None:
    if m.glasses == "none":
        return
    frame = {"round": (92, 58, 36), "square": (22, 22, 26), "shades": (14, 14, 18)}[m.glasses]
    inner_edges = []
    for side, (centre, radius) in zip((-1, 1), eyes):
        r = max(radius * 1.55, 0.07 * head.a + radius)
        if m.glasses == "round":
            pen.circle(centre, r, frame, width=0.008)
        else:
            box = centre + np.array([[-r, -0.75 * r], [r, -0.75 * r], [r * 0.95, 0.7 * r], [-r * 0.95, 0.7 * r]])
            if m.glasses == "shades":
                pen.poly(box, (34, 36, 44))
                pen.line(box[[0, 2]] * [1, 1] + [0, 0], (90, 96, 110), 0.004)
            pen.line(box, frame, 0.008, closed=True)
        inner_edges.append(centre + [-side * r, 0.0])
        temple = head.at(side * 1.0, -0.06)[0]
        pen.line(np.array([centre + [side * r, -0.2 * r], temple]), frame, 0.006)
    pen.line(np.array([inner_edges[0], (inner_edges[0] + inner_edges[1]) / 2 - [0, 0.02 * head.b], inner_edges[1]]),
             frame, 0.006)


def _draw_face(pen: _Pen, p: FaceParams) -> None:
    c, m, f = p.coarse, p.middle, p.fine
    head = _Head(c)
    _body(pen, head, f)
    _hair_back(pen, head, c, f)
    _neck(pen, head, f)
    if c.hair_style != "long":
        _ears(pen, head, f)
    outline = head.outline(np.linspace(0, 2 * math.pi, 96, endpoint=False))
    pen.poly(outline, f.skin)
    pen.line(outline, _shade(f.skin, 0.72), 0.003, closed=True)
    _nose(pen, head, m, f)
    _mouth(pen, head, m, f)
    eyes = _eyes(pen, head, m, f)
    _brows(pen, head, m, f, eyes)
    _hair_front(pen, head, c, f)
    _glasses(pen, head, m, eyes)


# ---------------------------------------------------------------------------------------------
# Rendering

def _validate(params: FaceParams) -> None:
    for value, allowed, name in ((params.coarse.head_shape, HEAD_SHAPES, "head_shape"),
                                 (params.coarse.hair_style, HAIR_STYLES, "hair_style"),
                                 (params.middle.eye_shape, EYE_SHAPES, "eye_shape"),
                                 (params.middle.nose_shape, NOSE_SHAPES, "nose_shape"),
                                 (params.middle.mouth_shape, MOUTH_SHAPES, "mouth_shape"),
                                 (params.middle.glasses, GLASSES, "glasses"),
                                 (params.fine.texture, TEXTURES, "texture")):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")


def render_face(params: FaceParams, resolution: int) -> np.ndarray:
    """Draw one face: uint8 [resolution, resolution, 3] RGB."""
    if not isinstance(resolution, (int, np.integer)) or resolution < 8:
        raise ValueError(f"resolution must be a whole number of pixels >= 8, not {resolution!r}")
    _validate(params)
    c = params.coarse
    side = int(resolution) * SUPERSAMPLE
    canvas = np.empty((side, side, 4), np.uint8)
    pen = _Pen(canvas, c.rotation, c.translation)
    _background(pen, params.fine, params.fine.texture_seed)
    _draw_face(pen, params)
    small = cv2.resize(canvas, (resolution, resolution), interpolation=cv2.INTER_AREA)   # [R, R, 4]
    return _light(small, pen, params)


def _light(small: np.ndarray, pen: _Pen, params: FaceParams) -> np.ndarray:
    """Soft directional shading of the face (alpha), computed at the output size: [R, R, 4] -> [R, R, 3]."""
    f, head = params.fine, _Head(params.coarse)
    resolution = small.shape[0]
    # The head centre and the light's direction turn with the picture.
    centre = pen.to_pixels(np.array([[head.x, head.y]]))[0]             # canvas pixels (supersampled)
    angle = math.radians(f.light_angle)
    towards = pen.A @ np.array([math.cos(angle), math.sin(angle)]) / pen.scale   # where the light comes from
    coords = np.arange(resolution) * SUPERSAMPLE + (SUPERSAMPLE - 1) / 2  # output pixel centres, supersampled
    reach = 1.3 * head.b * pen.scale
    t = ((coords[None, :] - centre[0]) * towards[0] + (coords[:, None] - centre[1]) * towards[1]) / reach
    shade = 1 + f.light_strength * np.clip(t, -1, 1)                    # [R, R]
    alpha = small[:, :, 3].astype(np.float32) / 255
    gain = (1 + alpha * (shade - 1)).astype(np.float32)[:, :, None]
    return np.clip(small[:, :, :3] * gain + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Datasets

def image_name(index: int) -> str:
    """Where image `index` lives in NVIDIA's dataset_tool layout: 00001/img00001234.png."""
    name = f"{index:08d}"
    return f"{name[:5]}/img{name}.png"


def _encoded(count: int, resolution: int, seed: int, variant: Variant, progress: ProgressCallback | None,
             cancel: CancelToken | None) -> Iterator[tuple[str, bytes]]:
    for i in range(count):
        if cancel is not None:
            cancel.raise_if_cancelled()
        image = render_face(sample_params(face_rng(seed, i), variant), resolution)
        ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        assert ok, "OpenCV could not encode a PNG"
        yield image_name(i), png.tobytes()
        if progress is not None:
            progress(Progress(i + 1, count, "drawing faces"))


def make_dataset(out: str | os.PathLike, count: int, resolution: int, seed: int = 0, variant: Variant = "upright",
                 *, progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Path:
    """Write `count` toy faces to a folder, or a zip when `out` ends in .zip, as NVIDIA's dataset_tool lays them out.

    Args:
        out: folder to create (absent or empty) or .zip to write (replaced if it exists).
        count: number of images; resolution: their side in pixels; seed: image i is drawn from
            face_rng(seed, i); variant: "upright", or "rotated" for StyleGAN3 (whole picture turned and shifted).
    Returns:
        `out`, complete: it appears only when every image is written (atomic rename).
    Raises:
        StyleDeckError: bad count, resolution or variant, or a non-empty folder at `out`.
        Cancelled: `cancel` was set; nothing is left behind.
    """
    out = Path(out).expanduser()
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise StyleDeckError(f"count must be a whole number >= 1, not {count!r}.")
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 8:
        raise StyleDeckError(f"resolution must be a whole number of pixels >= 8, not {resolution!r}.")
    if variant not in VARIANTS:
        raise StyleDeckError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    images = _encoded(int(count), int(resolution), int(seed), variant, progress, cancel)
    metadata = json.dumps({"labels": None})
    if out.suffix.lower() == ".zip":
        with atomic_write(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, png in images:                                    # PNGs are compressed already
                zf.writestr(name, png)
            zf.writestr("dataset.json", metadata)
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StyleDeckError(f"{out} already exists and is not an empty folder; remove it or choose another "
                             "output.")
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o755)                                            # mkdtemp makes it private
        for name, png in images:
            path = tmp / name
            if not path.parent.is_dir():
                path.parent.mkdir()
            path.write_bytes(png)
        (tmp / "dataset.json").write_text(metadata)
        if out.exists():
            out.rmdir()                                                 # empty: checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
