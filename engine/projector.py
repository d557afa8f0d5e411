"""Projection: find the latent from which a generator reproduces a target image.

The optimisation follows the StyleGAN2 paper (Karras et al. 2020, section 5 and appendix D) and
the schedule of NVIDIA's projector.py, which are the defaults here:
- the latent starts at w_avg, estimated from `w_avg_samples` mapped z; its spread
  sigma_w = sqrt(E||w - w_avg||^2) scales the noise added to w early on;
- Adam (betas 0.9, 0.999) on w (W mode: one w broadcast to every layer; W+ mode: one per layer)
  and on the per-layer noise maps of a StyleGAN2 network;
- learning rate lr(t) = initial_lr * ramp_down(t) * ramp_up(t), t = step / num_steps, with
  ramp_down = 0.5 - 0.5 cos(pi * min(1, (1 - t) / lr_rampdown_length)) and
  ramp_up = min(1, t / lr_rampup_length);
- latent noise of std sigma_w * initial_noise_factor * max(0, 1 - t / noise_ramp_length)^2;
- loss: LPIPS (VGG16) between target and synthesis, images larger than 256 px box-downsampled to
  256 first, plus `regularize_noise_weight` times the noise regulariser: the squared
  autocorrelation of each noise map at one-pixel shifts (x and y), summed over a pyramid that
  halves the map down to 8x8, so the noise cannot smuggle in image content. StyleGAN3 has no noise
  maps, so neither the maps nor the regulariser apply there. After each step the maps are
  renormalised to zero mean and unit variance.

LPIPS needs torchvision's ImageNet VGG16 weights. They are read from torch.hub's cache or from a
file the user gives (`lpips_weights`), never downloaded here: without them the job says so once
(log and progress message, naming the file and URL) and uses the pixel loss, MSE plus
multi-scale SSIM (Wang et al. 2003), instead.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from engine.errors import CorruptFileError, StyleDeckError
from engine.images import save_png, to_uint8
from engine.jobs import CancelToken, Progress, ProgressCallback, atomic_write

__all__ = ["ProjectionOptions", "ProjectionResult", "VGG16_FILE", "VGG16_URL", "lpips_loss", "ms_ssim", "project",
           "save_projection"]

log = logging.getLogger(__name__)

VGG16_FILE = "vgg16-397923af.pth"                    # torchvision's ImageNet VGG16 (IMAGENET1K_V1)
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
_LPIPS_MAX_SIDE = 256                                # as NVIDIA's projector: larger images are downsampled
_CUDA_READ_EVERY = 10                                # steps between loss reads on CUDA (each read waits for the GPU)
_NOISE_CHUNK = 100                                   # steps of latent noise drawn and moved to the device at once
_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)   # Wang et al. 2003, five scales


@dataclass(frozen=True)
class ProjectionOptions:
    """Settings of one projection; the defaults are NVIDIA's projector.py schedule."""
    num_steps: int = 1000
    mode: Literal["w", "w+"] = "w"                   # one w for all layers, or one per layer
    w_plus_from: float = 0.0                         # W+ only: share of the steps run in W before the layers part
    initial_lr: float = 0.1
    initial_noise_factor: float = 0.05               # latent noise std, as a share of sigma_w
    lr_rampdown_length: float = 0.25                 # share of the steps for the cosine ramp-down
    lr_rampup_length: float = 0.05                   # share of the steps for the linear ramp-up
    noise_ramp_length: float = 0.75                  # share of the steps over which latent noise decays
    regularize_noise_weight: float = 1e5             # strength of the noise-map regulariser (StyleGAN2)
    w_avg_samples: int = 10000                       # z samples for w_avg and sigma_w
    loss: Literal["lpips", "pixel"] = "lpips"        # pixel = MSE + (1 - MS-SSIM)
    lpips_weights: str | None = None                 # a local VGG16 weights file (torchvision's .pth)
    lpips_random_backbone: bool = False              # for tests only: LPIPS on a randomly initialised VGG16
    preview_every: int = 10                          # steps between preview images in progress events
    seed: int = 0                                    # z samples, noise-map start, latent noise

    def __post_init__(self) -> None:
        if self.mode not in ("w", "w+"):
            raise StyleDeckError(f"Projection mode must be 'w' or 'w+', not {self.mode!r}.")
        if self.loss not in ("lpips", "pixel"):
            raise StyleDeckError(f"Projection loss must be 'lpips' or 'pixel', not {self.loss!r}.")
        if self.num_steps < 1:
            raise StyleDeckError(f"Projection needs at least one step; got {self.num_steps}.")
        if not 0.0 <= self.w_plus_from < 1.0:
            raise StyleDeckError(f"w_plus_from is a share of the steps in [0, 1); got {self.w_plus_from}.")
        if self.w_avg_samples < 2:
            raise StyleDeckError(f"w_avg_samples must be at least 2; got {self.w_avg_samples}.")


@dataclass(frozen=True)
class ProjectionResult:
    """ws float32 [1, num_ws, w_dim]; image uint8 [H, W, C] rendered from it; loss per step."""
    ws: np.ndarray
    image: np.ndarray
    losses: list[float] = field(default_factory=list)
    steps_done: int = 0
    loss_used: str = "lpips"                         # what ran: "lpips" or "pixel" (after a fallback)


# ---------------------------------------------------------------------------------------------
# Losses

def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()                               # [size]


def _ssim_parts(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean luminance term l and contrast-structure term cs of SSIM, per image; x, y in [0, 1]."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    size = min(11, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2                             # odd window
    g = _gaussian_window(size, 1.5, x.device)
    channels = x.shape[1]
    kx = g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    ky = g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:       # separable Gaussian, valid region only
        return F.conv2d(F.conv2d(t, kx, groups=channels), ky, groups=channels)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    lum = (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1)
    cs = (2 * cov + c2) / (vx + vy + c2)
    return lum.mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))   # [N], [N]


def ms_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Multi-scale SSIM of images [N, C, H, W] in [0, 1], per image [N]; fewer scales for small images.

    MS-SSIM = l_M^a_M * prod_j cs_j^a_j (Wang et al. 2003); a scale is used while the image side
    is at least 16 px, and the five published weights are renormalised over the scales used.
    """
    scales = 1
    while scales < len(_MS_SSIM_WEIGHTS) and min(x.shape[-2:]) // 2 ** scales >= 16:
        scales += 1
    weights = torch.tensor(_MS_SSIM_WEIGHTS[:scales], device=x.device)
    weights = weights / weights.sum()
    value = torch.ones(x.shape[0], device=x.device)
    for j in range(scales):
        lum, cs = _ssim_parts(x, y)
        # cs can dip below 0 for anti-correlated images; clamp so the fractional power stays real.
        term = (lum * cs if j == scales - 1 else cs).clamp_min(1e-6)
        value = value * term ** weights[j]
        if j < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return value


def _pixel_loss(img: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE in [-1, 1] plus 1 - MS-SSIM in [0, 1]; img, target [1, C, H, W]."""
    mse = F.mse_loss(img, target)
    return mse + (1 - ms_ssim((img + 1) / 2, (target + 1) / 2)).mean()


def _load_vgg_backbone(model: torch.nn.Module, path: Path) -> None:
    """Copy torchvision VGG16 `features.*` weights into LPIPS's sliced VGG; CorruptFileError if they do not fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CorruptFileError(f"Cannot read {path} as VGG16 weights ({type(exc).__name__}: {exc}). "
                               f"Give torchvision's {VGG16_FILE} from {VGG16_URL}.") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    net = model.net                                  # lpips.pretrained_networks.vgg16: slice1..slice5
    mapped = {}
    for slice_name in ("slice1", "slice2", "slice3", "slice4", "slice5"):
        for idx, layer in getattr(net, slice_name).named_children():
            for pname in ("weight", "bias"):
                if getattr(layer, pname, None) is not None:
                    mapped[f"{slice_name}.{idx}.{pname}"] = f"features.{idx}.{pname}"
    missing = [src for src in mapped.values() if src not in state]
    if missing:
        raise CorruptFileError(f"{path} is not a torchvision VGG16 weights file: it lacks {missing[0]} "
                               f"(and {len(missing) - 1} more). Give {VGG16_FILE} from {VGG16_URL}.")
    try:
        net.load_state_dict({dst: state[src] for dst, src in mapped.items()}, strict=True)
    except RuntimeError as exc:
        raise CorruptFileError(f"{path} does not fit VGG16: {str(exc).splitlines()[0]}") from exc


def _lpips_model(opts: ProjectionOptions, device: torch.device) -> tuple[torch.nn.Module | None, str]:
    """(LPIPS module, "") or (None, why) when the VGG16 weights are not to be had; never downloads."""
    import lpips
    weights: Path | None = None
    if not opts.lpips_random_backbone:
        if opts.lpips_weights:
            weights = Path(opts.lpips_weights)
            if not weights.is_file():
                raise CorruptFileError(f"The VGG16 weights file {weights} does not exist. "
                                       f"Download {VGG16_URL} and give its path.")
        else:
            weights = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
            if not weights.is_file():
                return None, (f"LPIPS needs torchvision's ImageNet VGG16 weights, which are not in {weights.parent}: "
                              f"download {VGG16_URL} there (or give the file with --lpips-weights); "
                              "using the pixel loss (MSE + MS-SSIM) instead.")
    with warnings.catch_warnings():                  # torchvision's "pretrained is deprecated"
        warnings.simplefilter("ignore")
        # pnet_rand=True builds VGG16 without asking torchvision for weights (no download); the
        # LPIPS linear heads ship inside the lpips package and load from there.
        model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    if weights is not None:
        _load_vgg_backbone(model, weights)
    return model.eval().requires_grad_(False).to(device), ""


def lpips_loss(opts: ProjectionOptions, device: torch.device | str
               ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The projection's LPIPS as (img, target) -> scalar on [1, C, H, W] in [-1, 1] (for PTI); None offline."""
    model, why = _lpips_model(opts, torch.device(device))
    if model is None:
        log.warning("%s", why)
        return None
    return lambda img, target: model(_for_lpips(img), _for_lpips(target)).sum()


def _noise_regularizer(noise_bufs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over maps and pyramid levels of squared one-pixel autocorrelations (StyleGAN2, appendix D).

    Each map is halved (2x2 mean) down to 8 px, and at every level the mean of the map times the map
    shifted by one pixel, in x and in y, is squared and added. The maps of one size go together, the
    halved larger maps joining them level by level: about ten stacked levels instead of some seventy
    map-by-map ones (1024 px), each op of which is a kernel launch and an autograd node every step.
    """
    levels: dict[tuple[int, int], list[torch.Tensor]] = {}
    for buf in noise_bufs:
        levels.setdefault(tuple(buf.shape[-2:]), []).append(buf.reshape(1, 1, *buf.shape[-2:]))
    reg = noise_bufs[0].new_zeros([])
    while levels:
        size = max(levels, key=lambda hw: hw[0] * hw[1])                   # largest first: halves join later
        v = torch.cat(levels.pop(size))                                     # [k, 1, H, W]
        for dim in (3, 2):
            reg = reg + (v * torch.roll(v, shifts=1, dims=dim)).mean(dim=(1, 2, 3)).square().sum()
        if size[0] > 8:
            half = F.avg_pool2d(v, kernel_size=2)                           # [k, 1, H/2, W/2]
            levels.setdefault(tuple(half.shape[-2:]), []).append(half)
    return reg


# ---------------------------------------------------------------------------------------------
# The job

def _loss_read_every(device: torch.device) -> int:
    """Steps between loss reads: a read waits for the device, which costs nothing on the CPU."""
    return _CUDA_READ_EVERY if device.type == "cuda" else 1


def _latent_noise(gen: torch.Generator, shape: tuple[int, ...], num_steps: int, device: torch.device
                  ) -> Iterator[torch.Tensor]:
    """Standard normal noise of `shape` for each step, drawn on the CPU (the same numbers on every device)
    `_NOISE_CHUNK` steps at a time, so the device gets one copy per chunk instead of a blocking one per step."""
    for start in range(0, num_steps, _NOISE_CHUNK):
        yield from torch.randn([min(_NOISE_CHUNK, num_steps - start), *shape], generator=gen).to(device)


def _learning_rate(opts: ProjectionOptions, t: float) -> float:
    ramp = min(1.0, (1.0 - t) / opts.lr_rampdown_length)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    ramp = ramp * min(1.0, t / opts.lr_rampup_length) if opts.lr_rampup_length > 0 else ramp
    return opts.initial_lr * ramp


@torch.no_grad()
def _w_stats(G: Any, opts: ProjectionOptions, gen: torch.Generator, device: torch.device
             ) -> tuple[torch.Tensor, float]:
    """(w_avg [1, 1, w_dim], sigma_w) from `w_avg_samples` mapped z, in chunks to bound memory."""
    count, ws_all = 0, []
    for start in range(0, opts.w_avg_samples, 4096):
        n = min(4096, opts.w_avg_samples - start)
        z = torch.randn([n, G.z_dim], generator=gen).to(device)             # [n, z_dim]
        c = torch.zeros([n, G.c_dim], device=device) if G.c_dim else None
        ws_all.append(G.mapping(z, c)[:, :1].float())                       # [n, 1, w_dim]
        count += n
    w = torch.cat(ws_all)                                                   # [N, 1, w_dim]
    w_avg = w.mean(dim=0, keepdim=True)                                     # [1, 1, w_dim]
    w_std = float(((w - w_avg) ** 2).sum() / count) ** 0.5
    return w_avg, w_std


def _target_tensor(target: np.ndarray, G: Any, device: torch.device) -> torch.Tensor:
    """uint8 [R, R, C] -> float [1, C, R, R] in [-1, 1], checked against the network."""
    target = np.asarray(target)
    if target.ndim == 2:
        target = target[:, :, None]
    expected = (G.img_resolution, G.img_resolution, G.img_channels)
    if target.dtype != np.uint8 or target.shape != expected:
        raise StyleDeckError(f"The target must be uint8 {list(expected)} for this network; got "
                             f"{target.dtype} {list(target.shape)} (prepare it with engine.photo.load_photo).")
    img = torch.from_numpy(np.ascontiguousarray(target)).to(device).permute(2, 0, 1)[None].float()
    return img / 127.5 - 1                                                  # [1, C, R, R]


def _for_lpips(img: torch.Tensor) -> torch.Tensor:
    """[1, C, H, W] -> 3 channels, at most 256 px (area downsampling, as NVIDIA's projector)."""
    if img.shape[1] == 1:
        img = img.repeat(1, 3, 1, 1)
    if img.shape[-1] > _LPIPS_MAX_SIDE:
        img = F.interpolate(img, size=(_LPIPS_MAX_SIDE, _LPIPS_MAX_SIDE), mode="area")
    return img


def project(G: Any, target_image_uint8: np.ndarray, opts: ProjectionOptions = ProjectionOptions(), *,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
            device: torch.device | str | None = None) -> ProjectionResult:
    """Optimise ws so that G.synthesis(ws) reproduces the target; G itself is left untouched.

    Args:
        G: a StyleGAN2 or StyleGAN3 generator (G_ema), as the loader returns it.
        target_image_uint8: uint8 [R, R, C] at the network's resolution (see engine.photo.load_photo).
        opts: the schedule and loss; the defaults are NVIDIA's.
        progress: receives Progress(step, total, message, preview, metrics={"loss", "lr"}) for each step,
            with the current image as `preview` every `opts.preview_every` steps and at the end; on CUDA
            the events of up to ten steps arrive together (their losses are read from the GPU at once).
        cancel: checked before every step.
        device: where to optimise; default the generator's device (G is copied when it differs).
    Returns:
        ProjectionResult with ws float32 [1, num_ws, w_dim] and its image.
    Raises:
        Cancelled: the token was cancelled; StyleDeckError: a bad target or weights file.
    """
    g_device = next(G.parameters()).device
    device = torch.device(device) if device is not None else g_device
    if device != g_device:
        G = copy.deepcopy(G).to(device)
    G = G.eval()
    target = _target_tensor(target_image_uint8, G, device)                 # [1, C, R, R]
    gen = torch.Generator().manual_seed(opts.seed)

    loss_kind, lpips_model = opts.loss, None
    if loss_kind == "lpips":
        lpips_model, why = _lpips_model(opts, device)
        if lpips_model is None:
            log.warning("%s", why)
            if progress is not None:
                progress(Progress(0, opts.num_steps, why))
            loss_kind = "pixel"
    target_lpips = _for_lpips(target) if lpips_model is not None else None

    w_avg, w_std = _w_stats(G, opts, gen, device)                           # [1, 1, w_dim], float
    num_ws = G.num_ws
    w_opt = (w_avg if opts.mode == "w" else w_avg.repeat(1, num_ws, 1)).clone().requires_grad_(True)

    # StyleGAN2 noise maps: optimised copies fed through functional_call, so G keeps its own.
    noise_names = [name for name, _ in G.synthesis.named_buffers() if name.endswith("noise_const")]
    noise_bufs = {}
    for name in noise_names:
        shape = dict(G.synthesis.named_buffers())[name].shape
        noise_bufs[name] = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
    # Fused Adam: one kernel for all parameters on CUDA instead of a few per parameter.
    optimizer = torch.optim.Adam([w_opt, *noise_bufs.values()], betas=(0.9, 0.999), lr=opts.initial_lr,
                                 fused=True if device.type == "cuda" else None)
    latent_noise = _latent_noise(gen, tuple(w_opt.shape), opts.num_steps, device)

    def synthesize(ws: torch.Tensor) -> torch.Tensor:                       # [1, num_ws, w_dim] -> img
        return functional_call(G.synthesis, noise_bufs, (ws,), {"noise_mode": "const"}).float()

    losses: list[float] = []
    unread: list[tuple[torch.Tensor, float]] = []                          # (loss on the device, lr) per step
    read_every = _loss_read_every(device)
    img = None
    for step in range(opts.num_steps):
        if cancel is not None:
            cancel.raise_if_cancelled()
        t = step / opts.num_steps
        noise_scale = w_std * opts.initial_noise_factor * max(0.0, 1.0 - t / opts.noise_ramp_length) ** 2
        lr = _learning_rate(opts, t)
        for group in optimizer.param_groups:
            group["lr"] = lr

        shared = opts.mode == "w+" and t < opts.w_plus_from                 # W+ starting in W
        w_cur = w_opt.mean(dim=1, keepdim=True) if shared else w_opt        # [1, 1 | num_ws, w_dim]
        w_noise = next(latent_noise)[:, :w_cur.shape[1]] * noise_scale      # [1, 1 | num_ws, w_dim]
        ws = (w_cur + w_noise).expand(1, num_ws, -1)                        # [1, num_ws, w_dim]
        img = synthesize(ws)                                                # [1, C, R, R]
        if lpips_model is not None:
            dist = lpips_model(_for_lpips(img), target_lpips).sum()
        else:
            dist = _pixel_loss(img, target)
        reg = _noise_regularizer(list(noise_bufs.values())) if noise_bufs else dist.new_zeros([])
        loss = dist + opts.regularize_noise_weight * reg
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():                                               # back to N(0, 1) per map
            for buf in noise_bufs.values():
                buf -= buf.mean()
                buf *= buf.square().mean().rsqrt()
        unread.append((dist.detach(), lr))

        done = step + 1
        preview_due = opts.preview_every > 0 and (done % opts.preview_every == 0 or done == opts.num_steps)
        # Reading a loss waits for the device: on CUDA the losses are read a few steps at a time, so the
        # host goes on queueing steps while the GPU works.
        if not preview_due and done % read_every and done < opts.num_steps:
            continue
        first = done - len(unread) + 1
        values = torch.stack([value for value, _ in unread]).tolist()      # one wait for the batch
        for i, (value, (_, step_lr)) in enumerate(zip(values, unread)):
            losses.append(value)
            if progress is not None:
                at = first + i
                preview = to_uint8(img)[0] if preview_due and at == done else None   # [R, R, C], a fresh array
                progress(Progress(at, opts.num_steps, f"projecting ({loss_kind}) loss {value:.4f}",
                                  preview=preview, metrics={"loss": value, "lr": step_lr}))
        unread.clear()

    with torch.no_grad():
        ws_final = w_opt.detach().expand(1, num_ws, -1).float()             # [1, num_ws, w_dim]
        image = to_uint8(synthesize(ws_final))[0]
    return ProjectionResult(ws=ws_final.cpu().numpy().astype(np.float32).copy(), image=image, losses=losses,
                            steps_done=len(losses), loss_used=loss_kind)


# ---------------------------------------------------------------------------------------------
# Output files, as NVIDIA's projector.py names them

def save_projection(outdir: str | os.PathLike, result: ProjectionResult, target: np.ndarray, *,
                    video_frames: Sequence[np.ndarray] | None = None, fps: int = 60) -> dict[str, Path]:
    """Write proj.png, target.png, projected_w.npz (key `w`, [1, num_ws, w_dim]) and, given frames,
    proj.mp4 (target beside each frame); every file appears whole or not at all."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {"target": save_png(outdir / "target.png", target),
             "proj": save_png(outdir / "proj.png", result.image)}
    npz = outdir / "projected_w.npz"
    with atomic_write(npz) as tmp:                   # tmp ends in .npz, so numpy adds no suffix
        np.savez(tmp, w=result.ws.astype(np.float32))
    paths["w"] = npz
    if video_frames:
        import imageio
        mp4 = outdir / "proj.mp4"
        target3 = np.asarray(target)
        with atomic_write(mp4) as tmp:
            with imageio.get_writer(tmp, mode="I", fps=fps, codec="libx264", bitrate="16M",
                                    macro_block_size=1, ffmpeg_log_level="error") as writer:
                for frame in video_frames:
                    frame = np.asarray(frame)
                    both = np.concatenate([target3, frame], axis=1)          # [R, 2R, C]
                    if both.shape[2] == 1:
                        both = np.repeat(both, 3, axis=2)
                    writer.append_data(both)
        paths["video"] = mp4
    return paths
