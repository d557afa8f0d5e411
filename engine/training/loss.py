"""The StyleGAN2/3 training objective: non-saturating logistic loss, R1 and path-length regularisers,
style mixing regularisation, optional blurring of D's inputs, and augmentation before D.

Equations (Goodfellow et al. 2014; Mescheder et al. 2018; Karras et al. 2019, 2020, 2021):
- G:   softplus(-D(G(z)))                     (non-saturating; softplus(t) = log(1 + e^t))
- D:   softplus(D(G(z))) + softplus(-D(x))
- R1:  gamma / 2 * ||grad_x D(x)||^2 on reals; lazy: every k-th D step with gain k
- PL:  (||J_w^T y||_2 - a)^2 with y ~ N(0, I) / sqrt(H W), J_w the Jacobian of the image w.r.t.
       ws, ||.|| the root mean over layers of the per-layer squared norms, `a` the moving average
       pl_mean; lazy: every k-th G step with gain k.
- Style mixing: with probability `style_mixing_prob` an image takes ws from a second z from a
  random layer on.
- Rotation (StyleGAN3 only, both off by default), to teach a network to turn its picture with its
  input rather than to paint turned faces in its convolutions (a StyleGAN3-T is not built to):
  turn_fakes draws every fake with a random input turn, a ~ U[0, 360), so that D judges turned
  renderings (only for data that shows every angle); eq_rot_weight adds
  eq_rot_weight * mean over the inscribed disk of (G(w, input turned by a) - turn(G(w), a))^2 on
  half the batch, the upright rendering detached (the paper's EQ-R, as a loss).

The phases and their gains come from the training loop (NVIDIA's Gmain/Greg/Gboth/Dmain/Dreg/Dboth).
Images are float in [-1, 1]. Pass plain modules (not DDP wrappers) and average gradients after.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import cuda_ops
from engine.networks.stylegan3 import input_transforms

PHASES = ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth")


def preset_loss_kwargs(cfg: str, batch_size: int) -> dict[str, Any]:
    """NVIDIA train.py's loss settings per --cfg: SG2 has style mixing and path length, SG3 neither;
    SG3-R also blurs D's inputs early in training (fading out over 200 kimg at batch 32)."""
    if cfg == "stylegan2":
        return dict(style_mixing_prob=0.9, pl_weight=2, pl_no_weight_grad=True)
    if cfg == "stylegan3-t":
        return dict(style_mixing_prob=0, pl_weight=0)
    if cfg == "stylegan3-r":
        return dict(style_mixing_prob=0, pl_weight=0, blur_init_sigma=10, blur_fade_kimg=batch_size * 200 / 32)
    raise ValueError(f"unknown cfg {cfg!r}; expected 'stylegan2', 'stylegan3-t' or 'stylegan3-r'")


# ----------------------------------------------------------------------------------------------
# Pure functions: each term on its own, for the loss below and for tests.


def blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Low-pass img with NVIDIA's blur of D's inputs: taps 2^-(x/sigma)^2 for |x| <= 3 sigma, normalised."""
    radius = int(np.floor(sigma * 3))
    if sigma <= 0 or radius < 1:
        return img
    x = torch.arange(-radius, radius + 1, device=img.device, dtype=torch.float32)
    f = torch.exp2(-(x / sigma).square())
    return cuda_ops.filter2d(img, f / f.sum())


def run_discriminator(D: nn.Module, img: torch.Tensor, c: torch.Tensor | None, augment_pipe: nn.Module | None = None,
                      blur_sigma: float = 0.0, update_emas: bool = False) -> torch.Tensor:
    """Logits [N, 1] of D on img after the optional blur and augmentation."""
    if blur_sigma > 0:
        img = blur(img, blur_sigma)
    if augment_pipe is not None:
        img = augment_pipe(img)
    return D(img, c, update_emas=update_emas)


def style_mix(G: nn.Module, ws: torch.Tensor, z: torch.Tensor, c: torch.Tensor | None,
              prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(ws [N, num_ws, w_dim] where a `prob` fraction of images take ws[cutoff:] from a second z,
    cutoff [N]: the first layer from the second z, num_ws for an unmixed image).

    Per image, as the mixing regularisation is described (Karras et al. 2019, sec. 3.1); NVIDIA's
    code draws one cutoff and one coin for the whole batch. The expectation is the same.
    """
    n, num_ws, _ = ws.shape
    cutoff = torch.full([n], num_ws, dtype=torch.long, device=ws.device)
    if prob <= 0 or num_ws < 2:
        return ws, cutoff
    drawn = torch.randint(1, num_ws, [n], device=ws.device)
    mixed = torch.rand([n], device=ws.device) < prob
    cutoff = torch.where(mixed, drawn, cutoff)
    ws2 = G.mapping(torch.randn_like(z), c, update_emas=False)
    second = torch.arange(num_ws, device=ws.device)[None, :] >= cutoff[:, None]     # [N, num_ws]
    return torch.where(second[:, :, None], ws2, ws), cutoff


def r1_penalty(D: nn.Module, real_img: torch.Tensor, real_c: torch.Tensor | None, *,
               augment_pipe: nn.Module | None = None, blur_sigma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(||grad_x sum(D(x))||^2 per image [N], logits [N, 1]); the gradient keeps its graph so that
    the penalty can train D (double backpropagation). Not yet multiplied by gamma / 2."""
    img = real_img.detach().requires_grad_(True)
    logits = run_discriminator(D, img, real_c, augment_pipe, blur_sigma)
    (grads,) = torch.autograd.grad(outputs=logits.sum(), inputs=img, create_graph=True)
    return grads.square().sum(dim=[1, 2, 3]), logits


class PathLength(NamedTuple):
    penalty: torch.Tensor   # (length - pl_mean)^2 per image [N], not yet times pl_weight
    lengths: torch.Tensor   # ||J_w^T y|| per image [N]
    pl_mean: torch.Tensor   # the moving average after this batch (still in the graph)


def path_length_penalty(G: nn.Module, ws: torch.Tensor, pl_mean: torch.Tensor, *, pl_decay: float = 0.01,
                        noise: torch.Tensor | None = None, **synthesis_kwargs: Any) -> PathLength:
    """Path-length regulariser (StyleGAN2 paper, sec. 3.2) at ws [N, num_ws, w_dim].

    noise: y, [N, C, H, W]; None draws N(0, I) / sqrt(H W), which makes E||J^T y||^2 independent
    of the resolution. The new mean pl_mean + decay (mean(lengths) - pl_mean) stays in the graph, as
    in NVIDIA's code, so the penalty's gradient includes the decay-weighted term through it.
    """
    if not ws.requires_grad:
        ws = ws.detach().requires_grad_(True)
    img = G.synthesis(ws, **synthesis_kwargs)                      # [N, C, H, W]
    if noise is None:
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grads,) = torch.autograd.grad(outputs=(img * noise).sum(), inputs=ws, create_graph=True)  # [N, num_ws, w_dim]
    lengths = grads.square().sum(dim=2).mean(dim=1).sqrt()       # [N]
    new_mean = pl_mean.to(lengths.dtype).lerp(lengths.mean(), pl_decay)
    return PathLength((lengths - new_mean).square(), lengths, new_mean)


def rotate_images(img: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """img [N, C, H, W] turned counter-clockwise as displayed (the sense of input_transform) by
    degrees [N] about its centre; bilinear, zero outside."""
    a = torch.deg2rad(degrees.to(img.dtype))
    c, s = torch.cos(a), torch.sin(a)
    # Output pixel p' samples the source at R^-1 p' (normalised coordinates, y down).
    theta = torch.stack([torch.stack([c, -s, torch.zeros_like(c)], 1),
                         torch.stack([s, c, torch.zeros_like(c)], 1)], 1)           # [N, 2, 3]
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def disk_mask(size: int, radius: float = 0.45, device: torch.device | str = "cpu") -> torch.Tensor:
    """[1, 1, size, size] float mask, 1 within radius * size of the centre (what a turn keeps in frame)."""
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size - 0.5
    return ((coords[None, :].square() + coords[:, None].square()) <= radius ** 2).float()[None, None]


def turn_transforms(degrees: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """[N, 3, 3] StyleGAN3 input transforms that turn each picture by degrees [N] (and do not move it)."""
    return input_transforms((d, 0.0, 0.0) for d in degrees.tolist()).to(device)


def turn_mismatch(turned: torch.Tensor, upright: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Per image [N]: mean over the inscribed disk of (turned - upright turned by degrees)^2;
    upright is detached, so only `turned` learns."""
    target = rotate_images(upright.detach().to(turned.dtype), degrees.to(turned.device))
    mask = disk_mask(turned.shape[-1], device=turned.device)
    return ((turned - target).square() * mask).sum(dim=[1, 2, 3]) / (mask.sum() * turned.shape[1])


def rotation_equivariance_penalty(G: nn.Module, ws: torch.Tensor, upright: torch.Tensor,
                                  degrees: torch.Tensor) -> torch.Tensor:
    """turn_mismatch of G(ws, input turned by degrees) against upright = G.synthesis(ws) [N, C, H, W]."""
    return turn_mismatch(G.synthesis(ws, transform=turn_transforms(degrees, ws.device)), upright, degrees)


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Keep gradients out of `module`'s parameters (the other network of a phase); restore after."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# ----------------------------------------------------------------------------------------------
# The loss the training loop calls.


class StyleGANLoss:
    """NVIDIA's StyleGAN2Loss: accumulate_gradients(phase, ...) backpropagates one phase's loss times `gain`.

    State: `pl_mean` (0-dim tensor; checkpoint it, see state_dict) and `last_real_logits`, the
    detached D(real) logits of the D phases since the loop last reset it to None, for AdaController.
    """

    def __init__(self, G: nn.Module, D: nn.Module, augment_pipe: nn.Module | None = None, r1_gamma: float = 10,
                 style_mixing_prob: float = 0.9, pl_weight: float = 2, pl_batch_shrink: int = 2,
                 pl_decay: float = 0.01, pl_no_weight_grad: bool = False, blur_init_sigma: float = 0,
                 blur_fade_kimg: float = 0, eq_rot_weight: float = 0, turn_fakes: bool = False):
        self.G = G
        self.D = D
        self.augment_pipe = augment_pipe
        self.r1_gamma = float(r1_gamma)
        self.style_mixing_prob = float(style_mixing_prob)
        self.pl_weight = float(pl_weight)
        self.pl_batch_shrink = int(pl_batch_shrink)
        self.pl_decay = float(pl_decay)
        # NVIDIA's flag skips conv weight gradients inside the path-length gradient with its own conv
        # op; torch.autograd.grad(inputs=ws) already computes only what ws needs, so it changes nothing.
        self.pl_no_weight_grad = bool(pl_no_weight_grad)
        self.blur_init_sigma = float(blur_init_sigma)
        self.blur_fade_kimg = float(blur_fade_kimg)
        self.eq_rot_weight = float(eq_rot_weight)
        self.turn_fakes = bool(turn_fakes)
        if (self.eq_rot_weight > 0 or self.turn_fakes) and not hasattr(getattr(G, "synthesis", None), "input"):
            raise ValueError("turning the input needs a StyleGAN3 generator (a StyleGAN2 one has no input transform)")
        device = next(G.parameters()).device
        self.pl_mean = torch.zeros([], device=device)
        self.last_real_logits: torch.Tensor | None = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pl_mean": self.pl_mean.detach().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.pl_mean.copy_(torch.as_tensor(state["pl_mean"]).to(self.pl_mean.device))

    def blur_sigma(self, cur_nimg: int) -> float:
        """Blur of D's inputs, fading linearly from blur_init_sigma to 0 over blur_fade_kimg."""
        if self.blur_fade_kimg <= 0:
            return 0.0
        return max(1 - cur_nimg / (self.blur_fade_kimg * 1e3), 0) * self.blur_init_sigma

    def run_G(self, z: torch.Tensor, c: torch.Tensor | None, update_emas: bool = False,
              degrees: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(img [N, C, H, W], ws [N, num_ws, w_dim]) with style mixing; degrees [N]: turn each input."""
        ws = self.G.mapping(z, c, update_emas=update_emas)
        ws, _ = style_mix(self.G, ws, z, c, self.style_mixing_prob)
        if degrees is None:
            return self.G.synthesis(ws, update_emas=update_emas), ws
        return self.G.synthesis(ws, transform=turn_transforms(degrees, ws.device), update_emas=update_emas), ws

    def fake_turns(self, n: int) -> torch.Tensor | None:
        """Input turns in degrees [n] for a batch of fakes, uniform over the circle; None when off."""
        return torch.rand([n]) * 360 if self.turn_fakes else None

    def run_D(self, img: torch.Tensor, c: torch.Tensor | None, blur_sigma: float = 0.0,
              update_emas: bool = False) -> torch.Tensor:
        return run_discriminator(self.D, img, c, self.augment_pipe, blur_sigma, update_emas)

    def accumulate_gradients(self, phase: str, real_img: torch.Tensor, real_c: torch.Tensor | None,
                             gen_z: torch.Tensor, gen_c: torch.Tensor | None, gain: float,
                             cur_nimg: int) -> dict[str, float]:
        """Backpropagate `phase`'s loss times gain into G's or D's .grad; returns its metrics
        (loss/G, loss/D, loss/r1, loss/pl: unweighted penalties; scores/..., signs/..., pl/...)."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {', '.join(PHASES)}")
        # A regulariser with weight 0 is skipped, and a 'both' phase becomes its main part.
        if self.pl_weight == 0:
            phase = {"Greg": "none", "Gboth": "Gmain"}.get(phase, phase)
        if self.r1_gamma == 0:
            phase = {"Dreg": "none", "Dboth": "Dmain"}.get(phase, phase)
        sigma = self.blur_sigma(cur_nimg)
        metrics: dict[str, float] = {}
        if phase in ("Gmain", "Gboth", "Greg"):
            with _frozen(self.D):
                if phase in ("Gmain", "Gboth"):
                    self._g_main(gen_z, gen_c, gain, sigma, metrics)
                if phase in ("Greg", "Gboth"):
                    self._g_reg(gen_z, gen_c, gain, metrics)
        elif phase in ("Dmain", "Dboth", "Dreg"):
            with _frozen(self.G):
                if phase in ("Dmain", "Dboth"):
                    self._d_fake(gen_z, gen_c, gain, sigma, metrics)
                self._d_real(real_img, real_c, gain, sigma, phase, metrics)
        return metrics

    def _g_main(self, z: torch.Tensor, c: torch.Tensor | None, gain: float, sigma: float,
                metrics: dict[str, float]) -> None:
        """Make D call G's images real: softplus(-D(G(z))); plus the rotation-equivariance term when on
        (on half the batch, like the path-length term, to keep its cost down)."""
        turns = self.fake_turns(z.shape[0])
        img, ws = self.run_G(z, c, degrees=turns)
        logits = self.run_D(img, c, blur_sigma=sigma)
        loss = F.softplus(-logits)
        total = loss.mean()
        if self.eq_rot_weight > 0:
            n = max(z.shape[0] // 2, 1)
            if turns is None:   # turn a second rendering
                eq = rotation_equivariance_penalty(self.G, ws[:n], img[:n], torch.rand([n]) * 360)
            else:               # the fakes are turned already: compare them with their upright renderings
                with torch.no_grad():
                    upright = self.G.synthesis(ws[:n])
                eq = turn_mismatch(img[:n], upright, turns[:n])
            total = total + eq.mean() * self.eq_rot_weight
            metrics["loss/eq"] = eq.mean().item()
        total.mul(gain).backward()
        metrics.update({"loss/G": loss.mean().item(), "scores/fake": logits.mean().item(),
                        "signs/fake": logits.sign().mean().item()})

    def _g_reg(self, z: torch.Tensor, c: torch.Tensor | None, gain: float, metrics: dict[str, float]) -> None:
        """Path-length penalty on a batch shrunk by pl_batch_shrink (cheaper; the paper's choice)."""
        n = max(z.shape[0] // self.pl_batch_shrink, 1)
        z, c = z[:n], (c[:n] if c is not None else None)
        ws = self.G.mapping(z, c)
        ws, _ = style_mix(self.G, ws, z, c, self.style_mixing_prob)
        pl = path_length_penalty(self.G, ws, self.pl_mean, pl_decay=self.pl_decay)
        self.pl_mean.copy_(pl.pl_mean.detach())
        (pl.penalty * self.pl_weight).mean().mul(gain).backward()
        metrics.update({"loss/pl": pl.penalty.mean().item(), "pl/length": pl.lengths.mean().item(),
                        "pl/mean": float(self.pl_mean)})

    def _d_fake(self, z: torch.Tensor, c: torch.Tensor | None, gain: float, sigma: float,
                metrics: dict[str, float]) -> None:
        """Make D call G's images fake: softplus(D(G(z))). G runs without a graph (D's step only);
        update_emas lets G's running averages (w_avg, SG3 magnitudes) follow this batch, as NVIDIA."""
        with torch.no_grad():
            img, _ = self.run_G(z, c, update_emas=True, degrees=self.fake_turns(z.shape[0]))
        logits = self.run_D(img, c, blur_sigma=sigma, update_emas=True)
        loss = F.softplus(logits)
        loss.mean().mul(gain).backward()
        metrics.update({"loss/D_fake": loss.mean().item(), "scores/fake": logits.mean().item(),
                        "signs/fake": logits.sign().mean().item()})

    def _d_real(self, real_img: torch.Tensor, real_c: torch.Tensor | None, gain: float, sigma: float,
                phase: str, metrics: dict[str, float]) -> None:
        """softplus(-D(x)) (main) and gamma / 2 ||grad_x D(x)||^2 (reg), from one pass of D on reals."""
        main, reg = phase in ("Dmain", "Dboth"), phase in ("Dreg", "Dboth")
        if reg:
            r1, logits = r1_penalty(self.D, real_img, real_c, augment_pipe=self.augment_pipe, blur_sigma=sigma)
        else:
            logits = self.run_D(real_img.detach(), real_c, blur_sigma=sigma)
        loss = logits.new_zeros([logits.shape[0], 1])
        if main:
            loss_real = F.softplus(-logits)
            loss = loss + loss_real
            metrics["loss/D_real"] = loss_real.mean().item()
            if "loss/D_fake" in metrics:
                metrics["loss/D"] = metrics["loss/D_fake"] + metrics["loss/D_real"]
        if reg:
            loss = loss + (r1 * (self.r1_gamma / 2))[:, None]
            metrics["loss/r1"] = r1.mean().item()
        loss.mean().mul(gain).backward()
        detached = logits.detach()
        self.last_real_logits = (detached if self.last_real_logits is None
                                 else torch.cat([self.last_real_logits, detached]))
        metrics.update({"scores/real": detached.mean().item(), "signs/real": detached.sign().mean().item()})
