"""Adaptive discriminator augmentation (Karras et al. 2020, "Training Generative Adversarial Networks
with Limited Data", the ADA paper).

Every image D sees, real or generated, goes through the same random, differentiable transforms, so
D cannot memorise a small dataset and G learns the un-augmented distribution (the transforms are
non-leaking for p < ~0.8). Each transform is applied to each image with probability `p * multiplier`;
`p` is one scalar buffer that `AdaController` tunes from the sign of D's output on reals.

Three stages, in the paper's order (appendix B):
- pixel blitting (x-flip, 90-degree rotations, integer translation): an exact gather of source
  pixels with symmetric reflection at the borders, so these never blur;
- general geometric (isotropic scale, rotation, anisotropic scale, fractional translation): one
  affine resampling per image. Simplification of NVIDIA's approach (reflect-pad by the exact
  margin the transform needs, 2x upsampling with a sym6 wavelet filter, grid sample, 2x
  downsampling): we pad 3 pixels symmetrically, upsample 2x with a 12-tap Lanczos-3 filter, sample
  bilinearly with `grid_sample`'s reflection padding (which mirrors the image about its edges for
  any distance, so no margin needs computing), and downsample 2x with the same filter;
- colour (brightness, contrast, luma flip, hue rotation, saturation): one 4x4 affine matrix on RGB
  in homogeneous coordinates; the luma axis is (1, 1, 1)/sqrt(3) since images are in [-1, 1].

Images not chosen for any transform of a stage pass through it bit for bit, and stages whose
multipliers are all 0 are skipped, so p = 0 is the exact identity. Random numbers are drawn with
the global generator of the images' device, the same count for every call, so a run that restores
the RNG state reproduces its augmentations.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import cuda_ops

# NVIDIA's presets of the transforms we implement (their 'f', 'n' and 'c' stages, image-space
# filtering, additive noise and cutout, are not part of 'bgc' and not implemented here).
_BLIT = dict(xflip=1, rotate90=1, xint=1)
_GEOM = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
AUGMENT_PRESETS: dict[str, dict[str, float]] = {
    "blit": _BLIT, "geom": _GEOM, "color": _COLOR,
    "bg": {**_BLIT, **_GEOM}, "bgc": {**_BLIT, **_GEOM, **_COLOR},
}


def augment_preset(name: str) -> dict[str, float]:
    """AugmentPipe kwargs of NVIDIA's preset `name` ('blit', 'geom', 'color', 'bg' or 'bgc')."""
    if name not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; known: {', '.join(AUGMENT_PRESETS)}")
    return dict(AUGMENT_PRESETS[name])


def lanczos_upsample_filter(a: int = 3) -> np.ndarray:
    """Lanczos-a taps for 2x resampling: the kernel at half-pixel offsets +-0.25, +-0.75, ... (4a taps)."""
    t = (np.arange(4 * a) - (4 * a - 1) / 2) / 2   # tap positions in input pixels
    return np.sinc(t) * np.sinc(t / a)


# ----------------------------------------------------------------------------------------------
# Matrices. Geometry works in pixel units centred on the image (x right, y down), colour on
# homogeneous RGB. All are batches [N, 3, 3] or [N, 4, 4], the identity for images not chosen.


def _eye(n: int, size: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(size, device=like.device, dtype=like.dtype).repeat(n, 1, 1)


def scale2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    m = _eye(sx.shape[0], 3, sx)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def rotate2d(theta: torch.Tensor) -> torch.Tensor:
    m = _eye(theta.shape[0], 3, theta)
    c, s = theta.cos(), theta.sin()
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def translate2d(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    m = _eye(tx.shape[0], 3, tx)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def translate3d(t: torch.Tensor) -> torch.Tensor:
    """Add t [N] to every colour channel."""
    m = _eye(t.shape[0], 4, t)
    m[:, :3, 3] = t[:, None]
    return m


def scale3d(s: torch.Tensor) -> torch.Tensor:
    """Multiply every colour channel by s [N]."""
    m = _eye(s.shape[0], 4, s)
    for i in range(3):
        m[:, i, i] = s
    return m


def luma_projector(like: torch.Tensor) -> torch.Tensor:
    """v v^T for the unit luma axis v = (1, 1, 1, 0) / sqrt(3), as [4, 4]."""
    v = torch.tensor([1, 1, 1, 0], device=like.device, dtype=like.dtype) / math.sqrt(3)
    return torch.outer(v, v)


def rotate_about_luma(theta: torch.Tensor) -> torch.Tensor:
    """Rotation of RGB by theta [N] about the luma axis (Rodrigues' formula)."""
    n = theta.shape[0]
    v = torch.full([3], 1 / math.sqrt(3), device=theta.device, dtype=theta.dtype)
    cross = torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], device=theta.device, dtype=theta.dtype)
    cross = cross / math.sqrt(3)                              # [v]_x, the cross-product matrix of v
    c, s = theta.cos()[:, None, None], theta.sin()[:, None, None]
    r = c * torch.eye(3, device=theta.device, dtype=theta.dtype) + s * cross + (1 - c) * torch.outer(v, v)
    m = _eye(n, 4, theta)
    m[:, :3, :3] = r
    return m


# ----------------------------------------------------------------------------------------------
# Applying the transforms.


def _reflect_index(i: torch.Tensor, size: int) -> torch.Tensor:
    """Integer indices mirrored symmetrically about the borders (..., 1, 0 | 0, 1, ..., size-1 | size-1, ...)."""
    i = i.remainder(2 * size)
    return torch.where(i >= size, 2 * size - 1 - i, i)


def blit(images: torch.Tensor, flip: torch.Tensor, quarter_turns: torch.Tensor,
         shift_x: torch.Tensor, shift_y: torch.Tensor) -> torch.Tensor:
    """Exact x-flip, then rotation by quarter_turns * 90 degrees (as torch.rot90 on dims (2, 3)),
    then integer translation by (shift_x, shift_y) pixels; all [N] integer tensors.
    Pixels brought in from outside are mirrored from the image (symmetric reflection)."""
    n, c, h, w = images.shape
    dev = images.device
    # Doubled centred coordinates of pixel centres, X = 2x + 1 - W, stay integers under all three.
    X = (2 * torch.arange(w, device=dev) + 1 - w).view(1, 1, w).expand(n, h, w)   # [N, H, W]
    Y = (2 * torch.arange(h, device=dev) + 1 - h).view(1, h, 1).expand(n, h, w)
    # Invert the transforms in reverse order: output pixel <- source pixel.
    X = X - 2 * shift_x.view(n, 1, 1)
    Y = Y - 2 * shift_y.view(n, 1, 1)
    k = quarter_turns.remainder(4).view(n, 1, 1)
    # torch.rot90(k=1, dims=(2, 3)) maps source (X, Y) to output (Y, -X); its inverse is (X, Y) <- (-Y, X).
    X, Y = (torch.where(k == 0, X, torch.where(k == 1, -Y, torch.where(k == 2, -X, Y))),
            torch.where(k == 0, Y, torch.where(k == 1, X, torch.where(k == 2, -Y, -X))))
    X = torch.where(flip.view(n, 1, 1) != 0, -X, X)
    xs = _reflect_index(torch.div(X + w - 1, 2, rounding_mode="floor"), w)
    ys = _reflect_index(torch.div(Y + h - 1, 2, rounding_mode="floor"), h)
    index = (ys * w + xs).view(n, 1, h * w).expand(n, c, h * w)                     # [N, C, H*W]
    return images.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)


def _pad_symmetric(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Mirror `pad` pixels about each border, as grid_sample's reflection padding does."""
    x = torch.cat([x[:, :, :pad].flip(2), x, x[:, :, -pad:].flip(2)], dim=2)
    return torch.cat([x[:, :, :, :pad].flip(3), x, x[:, :, :, -pad:].flip(3)], dim=3)


def affine_resample(images: torch.Tensor, matrix_inv: torch.Tensor, resample_filter: torch.Tensor) -> torch.Tensor:
    """Resample images [N, C, H, W] through matrix_inv [N, 3, 3], which maps output pixel positions to
    input positions in centred pixel units; 2x oversampled with `resample_filter` (see module doc)."""
    n, c, h, w = images.shape
    taps = resample_filter.shape[-1]
    pad_lo = taps // 4                                # input pixels the 2x filter reads beyond a border
    pad_hi = taps // 2                                # the same in 2x pixels
    # Upsample the padded image and crop the padding (negative padding crops): [N, C, 2H, 2W].
    up = cuda_ops.upsample2d(_pad_symmetric(images, pad_lo), resample_filter, up=2, padding=-pad_hi)
    # Output pixel centres at 2x over [2H, 2W] plus a margin the downsampling filter reads, in
    # centred input pixel units: ((i + 0.5) / 2 - W/2).
    dev, dt = images.device, matrix_inv.dtype
    xo = (torch.arange(-pad_hi, 2 * w + pad_hi, device=dev, dtype=dt) + 0.5) / 2 - w / 2
    yo = (torch.arange(-pad_hi, 2 * h + pad_hi, device=dev, dtype=dt) + 0.5) / 2 - h / 2
    yy, xx = torch.meshgrid(yo, xo, indexing="ij")
    out = torch.stack([xx, yy, torch.ones_like(xx)], dim=-1)          # [H', W', 3]
    src = torch.einsum("nij,hwj->nhwi", matrix_inv, out)[..., :2]     # [N, H', W', 2]
    # grid_sample's normalised coordinates (align_corners=False): -1 and 1 are the image's outer edges.
    grid = src / src.new_tensor([w / 2, h / 2])
    sampled = F.grid_sample(up, grid.to(up.dtype), mode="bilinear", padding_mode="reflection",
                            align_corners=False)                      # [N, C, 2H + 2 pad, 2W + 2 pad]
    # Downsample and drop the margin: [N, C, H, W].
    return cuda_ops.downsample2d(sampled, resample_filter, down=2, padding=-pad_hi)


def color_transform(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """rgb' = M[:3, :3] rgb + M[:3, 3] per image, matrix [N, 4, 4]; grey images use the mean row."""
    n, c, h, w = images.shape
    m = matrix.to(images.dtype)
    if c == 3:
        out = torch.bmm(m[:, :3, :3], images.reshape(n, 3, h * w)) + m[:, :3, 3:]   # [N, 3, H*W]
        return out.view(n, 3, h, w)
    if c == 1:  # treat grey g as (g, g, g) and take the mean of the result
        gain = m[:, :3, :3].sum(dim=2).mean(dim=1)
        offset = m[:, :3, 3].mean(dim=1)
        return images * gain.view(n, 1, 1, 1) + offset.view(n, 1, 1, 1)
    raise ValueError(f"colour augmentation needs 1 or 3 channels, got {c}")


# ----------------------------------------------------------------------------------------------
# The pipe.


class AugmentPipe(nn.Module):
    """images [N, C, H, W] float -> the same shape, each transform applied with probability p * multiplier."""

    def __init__(
        self,
        xflip: float = 0, rotate90: float = 0, xint: float = 0, xint_max: float = 0.125,
        scale: float = 0, rotate: float = 0, aniso: float = 0, xfrac: float = 0,
        scale_std: float = 0.2, rotate_max: float = 1, aniso_std: float = 0.2, xfrac_std: float = 0.125,
        brightness: float = 0, contrast: float = 0, lumaflip: float = 0, hue: float = 0, saturation: float = 0,
        brightness_std: float = 0.2, contrast_std: float = 0.5, hue_max: float = 1, saturation_std: float = 1,
    ):
        super().__init__()
        self.init_kwargs: dict[str, Any] = dict(
            xflip=xflip, rotate90=rotate90, xint=xint, xint_max=xint_max, scale=scale, rotate=rotate,
            aniso=aniso, xfrac=xfrac, scale_std=scale_std, rotate_max=rotate_max, aniso_std=aniso_std,
            xfrac_std=xfrac_std, brightness=brightness, contrast=contrast, lumaflip=lumaflip, hue=hue,
            saturation=saturation, brightness_std=brightness_std, contrast_std=contrast_std,
            hue_max=hue_max, saturation_std=saturation_std)
        for name, value in self.init_kwargs.items():
            setattr(self, name, float(value))
        self.register_buffer("p", torch.zeros([]))   # overall strength, tuned by AdaController
        self.register_buffer("resample_filter", cuda_ops.setup_filter(lanczos_upsample_filter()),
                             persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"AugmentPipe expects images [N, C, H, W], got {tuple(images.shape)}")
        if self.xflip or self.rotate90 or self.xint:
            images = self._blit_stage(images)
        if self.scale or self.rotate or self.aniso or self.xfrac:
            images = self._geometric_stage(images)
        if self.brightness or self.contrast or self.lumaflip or self.hue or self.saturation:
            images = self._color_stage(images)
        return images

    def _chosen(self, n: int, multiplier: float, like: torch.Tensor) -> torch.Tensor:
        """[N] bool: which images get a transform applied with probability p * multiplier."""
        prob = self.p.to(device=like.device, dtype=torch.float32) * multiplier
        return torch.rand([n], device=like.device) < prob

    def _blit_stage(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        dev = images.device
        zero = torch.zeros([n], dtype=torch.long, device=dev)
        # Each draw happens whatever the multipliers, so the RNG stream does not depend on them.
        flip = torch.randint(0, 2, [n], device=dev)
        flip = torch.where(self._chosen(n, self.xflip, images), flip, zero)
        turns = torch.randint(0, 4, [n], device=dev)
        turns = torch.where(self._chosen(n, self.rotate90, images), turns, zero)
        t = (torch.rand([n, 2], device=dev) * 2 - 1) * self.xint_max
        shift = torch.where(self._chosen(n, self.xint, images)[:, None], t, torch.zeros_like(t))
        shift_x = (shift[:, 0] * w).round().long()
        shift_y = (shift[:, 1] * h).round().long()
        return blit(images, flip, turns, shift_x, shift_y)

    def _geometric_stage(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        dev, dt = images.device, torch.float64 if images.dtype == torch.float64 else torch.float32
        zero = torch.zeros([n], device=dev, dtype=dt)
        one = torch.ones([n], device=dev, dtype=dt)
        # Isotropic scale 2^N(0, scale_std^2).
        s_chosen = self._chosen(n, self.scale, images)
        s = torch.where(s_chosen, torch.exp2(torch.randn([n], device=dev, dtype=dt) * self.scale_std), one)
        # Rotation by U(-pi rotate_max, pi rotate_max), done before and after the anisotropic scale,
        # each with probability 1 - sqrt(1 - p * rotate): at least one happens with probability p * rotate.
        p_rot = 1 - torch.sqrt((1 - self.p.to(device=dev, dtype=dt) * self.rotate).clamp(0, 1))
        pre_chosen = torch.rand([n], device=dev) < p_rot
        theta_pre = torch.where(pre_chosen, (torch.rand([n], device=dev, dtype=dt) * 2 - 1) * math.pi
                                * self.rotate_max, zero)
        # Anisotropic scale: x by 2^N(0, aniso_std^2), y by its inverse.
        a_chosen = self._chosen(n, self.aniso, images)
        a = torch.where(a_chosen, torch.exp2(torch.randn([n], device=dev, dtype=dt) * self.aniso_std), one)
        post_chosen = torch.rand([n], device=dev) < p_rot
        theta_post = torch.where(post_chosen, (torch.rand([n], device=dev, dtype=dt) * 2 - 1) * math.pi
                                 * self.rotate_max, zero)
        # Fractional translation by N(0, xfrac_std^2) times the image size.
        t_chosen = self._chosen(n, self.xfrac, images)
        t = torch.where(t_chosen[:, None], torch.randn([n, 2], device=dev, dtype=dt) * self.xfrac_std, zero[:, None])
        any_chosen = s_chosen | pre_chosen | a_chosen | post_chosen | t_chosen
        # The content is scaled, rotated, stretched, rotated and shifted in that order; sampling
        # needs the inverse, which composes the inverses in the same order from the left.
        m_inv = (scale2d(1 / s, 1 / s) @ rotate2d(-theta_pre) @ scale2d(1 / a, a)
                 @ rotate2d(-theta_post) @ translate2d(-t[:, 0] * w, -t[:, 1] * h))
        out = affine_resample(images, m_inv, self.resample_filter)
        return torch.where(any_chosen.view(n, 1, 1, 1), out, images)

    def _color_stage(self, images: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        dev = images.device
        dt = torch.float64 if images.dtype == torch.float64 else torch.float32
        zero = torch.zeros([n], device=dev, dtype=dt)
        one = torch.ones([n], device=dev, dtype=dt)
        lumas = luma_projector(zero)
        eye = torch.eye(4, device=dev, dtype=dt)
        # Brightness: add N(0, brightness_std^2) to every channel.
        b = torch.randn([n], device=dev, dtype=dt) * self.brightness_std
        b = torch.where(self._chosen(n, self.brightness, images), b, zero)
        # Contrast: multiply every channel by 2^N(0, contrast_std^2), about 0 (mid-grey), as NVIDIA.
        c = torch.exp2(torch.randn([n], device=dev, dtype=dt) * self.contrast_std)
        c = torch.where(self._chosen(n, self.contrast, images), c, one)
        # Luma flip: reflect RGB through the plane orthogonal to the luma axis, I - 2 v v^T.
        flip = torch.randint(0, 2, [n], device=dev).to(dt)
        flip = torch.where(self._chosen(n, self.lumaflip, images), flip, zero)
        luma = eye - 2 * lumas * flip.view(n, 1, 1)
        # Hue: rotate RGB about the luma axis by U(-pi hue_max, pi hue_max).
        theta = (torch.rand([n], device=dev, dtype=dt) * 2 - 1) * math.pi * self.hue_max
        theta = torch.where(self._chosen(n, self.hue, images), theta, zero)
        # Saturation: scale the part orthogonal to the luma axis by 2^N(0, saturation_std^2).
        s = torch.exp2(torch.randn([n], device=dev, dtype=dt) * self.saturation_std)
        s = torch.where(self._chosen(n, self.saturation, images), s, one)
        sat = lumas + (eye - lumas) * s.view(n, 1, 1)
        m = sat @ rotate_about_luma(theta) @ luma @ scale3d(c) @ translate3d(b)
        # A non-chosen image gets exactly the identity matrix, and 1 * x + 0 * y + 0 == x exactly.
        return color_transform(images, m)

    def extra_repr(self) -> str:
        on = [f"{k}={v:g}" for k, v in self.init_kwargs.items() if v and not k.endswith(("_std", "_max"))]
        return ", ".join(on) or "no transforms"


# ----------------------------------------------------------------------------------------------
# Adaptive control of p.


class AdaController:
    """Tunes pipe.p so that the fraction r_t = E[sign(D(real))] stays near `target` (ADA paper, sec. 3).

    Call `update(real_logits)` once per training step with that step's D(real) logits. Every
    `interval` steps p moves by sign(r_t - target) * batch_size * interval / (kimg * 1000), so that
    p can go from 0 to 1 in `kimg` thousand images, and is clamped to [0, 1]. Under
    torch.distributed the sign counts are summed over ranks, so every replica gets the same p;
    batch_size is then the global batch.
    """

    def __init__(self, pipe: AugmentPipe, target: float = 0.6, interval: int = 4, kimg: float = 500, *,
                 batch_size: int):
        if interval < 1 or kimg <= 0 or batch_size < 1:
            raise ValueError("AdaController needs interval >= 1, kimg > 0 and batch_size >= 1")
        self.pipe = pipe
        self.target = float(target)
        self.interval = int(interval)
        self.kimg = float(kimg)
        self.batch_size = int(batch_size)
        self.rt: float | None = None          # the last r_t, None before the first adjustment
        self._steps = 0
        self._sign_sum: torch.Tensor | float = 0.0   # kept on the logits' device: no sync per step
        self._sign_count = 0

    @property
    def p(self) -> float:
        return float(self.pipe.p)

    def update(self, d_real_logits: torch.Tensor) -> None:
        """Accumulate sign(D(real)) for one step; adjust p every `interval` steps."""
        # float32 sums of +-1 are exact far beyond any interval's count (2^24).
        signs = d_real_logits.detach().sign().float()
        self._sign_sum = self._sign_sum + signs.sum()
        self._sign_count += signs.numel()
        self._steps += 1
        if self._steps % self.interval == 0:
            self._adjust()

    def _adjust(self) -> None:
        device = self._sign_sum.device if isinstance(self._sign_sum, torch.Tensor) else self.pipe.p.device
        stats = torch.stack([torch.as_tensor(self._sign_sum, dtype=torch.float32, device=device),
                             torch.tensor(float(self._sign_count), dtype=torch.float32, device=device)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)   # the same r_t, hence the same p, on every rank
        total, count = stats.tolist()
        self._sign_sum, self._sign_count = 0.0, 0
        if count == 0:
            return
        self.rt = total / count
        step = self.batch_size * self.interval / (self.kimg * 1000)
        new_p = min(max(self.p + float(np.sign(self.rt - self.target)) * step, 0.0), 1.0)
        self.pipe.p.fill_(new_p)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue exactly, as CPU tensors (safetensors-friendly)."""
        return {
            "p": self.pipe.p.detach().to("cpu", torch.float32).clone(),
            "rt": torch.tensor(float("nan") if self.rt is None else self.rt, dtype=torch.float64),
            "steps": torch.tensor(self._steps, dtype=torch.int64),
            "sign_sum": torch.as_tensor(self._sign_sum, dtype=torch.float32).detach().cpu().clone(),
            "sign_count": torch.tensor(self._sign_count, dtype=torch.int64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pipe.p.fill_(float(state["p"]))
        rt = float(state["rt"])
        self.rt = None if math.isnan(rt) else rt
        self._steps = int(state["steps"])
        self._sign_sum = torch.as_tensor(state["sign_sum"], dtype=torch.float32).to(self.pipe.p.device).clone()
        self._sign_count = int(state["sign_count"])
