"""The StyleGAN2/3 training loop: fine-tune a network (or train one from scratch) on an image folder.

`train(opts)` follows the procedure of NVIDIA's training loop (Karras et al. 2020, "Analyzing and
Improving the Image Quality of StyleGAN", and 2021, "Alias-Free GANs"), written anew:

- phases per step: G main, G path-length regulariser (lazy, every `g_reg_interval` steps; StyleGAN3
  has none), D main, D R1 regulariser (lazy, every `d_reg_interval` steps). A regularised network's
  Adam is corrected for lazy regularisation (sec. 4 of the StyleGAN2 paper): with
  mb_ratio = interval / (interval + 1), lr' = lr * mb_ratio and beta' = beta ** mb_ratio;
- Adam lr 0.002 (0.0025 for StyleGAN3 G), betas (0, 0.99), eps 1e-8;
- G_ema: beta = 0.5 ** (batch / ema_nimg), ema_nimg = min(ema_kimg * 1000, cur_nimg * ema_rampup),
  ema_kimg = batch * 10 / 32 by default; buffers (w_avg, magnitude EMAs) copied from G;
- adaptive discriminator augmentation (Karras et al. 2020, "Training GANs with Limited Data");
- mixed precision: the networks run their `num_fp16_res` highest resolutions in float16 on CUDA
  only (CPU runs are float32 throughout), with conv_clamp 256 as NVIDIA's configs.

Determinism (what makes resume exact): the data order is a function of the image count (one
seeded permutation per epoch), and every rank re-seeds torch/numpy/random from (seed, rank,
cur_nimg) at the start and after every snapshot. A snapshot holds everything else that evolves
(weights, Adam moments, ADA state, the path-length mean, counters), so resuming from snapshot k
continues exactly as the uninterrupted run would (bit for bit on CPU).

Multi-GPU: under torchrun (RANK/WORLD_SIZE set) each rank takes batch / world_size images, the
gradients are averaged with all_reduce (gloo on CPU, NCCL on CUDA) and rank 0 alone writes
snapshots and reports progress.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ContextManager, Literal, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from engine.checkpoint import family_of_module, read_checkpoint_metadata, save_checkpoint
from engine.devices import resolve_device
from engine.errors import Cancelled, StyleDeckError
from engine.images import image_grid, save_png, to_rgb, to_uint8
from engine.jobs import CancelToken, Progress, ProgressCallback, translate_oom
from engine.loader import file_sha256, load_network
from engine.networks import discriminator, stylegan2, stylegan3
from engine.training import snapshot as snapshots
from engine.training.augment import AdaController, AugmentPipe, augment_preset
from engine.training.dataset import DatasetOptions, ImageDataset
from engine.training.loss import StyleGANLoss, preset_loss_kwargs

log = logging.getLogger(__name__)

__all__ = ["TrainOptions", "TrainResult", "default_grid", "ema_beta", "fresh_discriminator", "options_from",
           "plain_convolutions_while_training", "scratch_networks", "state_hash", "train", "update_ema"]

Config = Literal["stylegan2", "stylegan3-t", "stylegan3-r"]
_RUNNING = re.compile(r"(^|\.)[^.]+_(avg|ema)$")   # NVIDIA's names of running averages: w_avg, magnitude_ema


DATASET_MESSAGE = "images: "  # the progress message that carries the dataset report, once per run


@dataclass(frozen=True)
class TrainOptions:
    """A training run; field names and defaults follow NVIDIA's train.py where it has the option."""
    outdir: str                               # folder for snapshots, sample grids and the log
    data: str                                 # image folder or dataset zip
    cfg: Config = "stylegan2"                 # architecture from scratch; a resumed network keeps its own
    resume: str = ""                          # network file, run folder, "latest" (in outdir), "" = scratch
    kimg: float = 25000                       # train until this many thousand real images were shown (total)
    batch: int = 32                           # total batch over all GPUs
    gamma: float | None = None                # R1 weight; None: 0.0002 * resolution**2 / batch (ADA's heuristic)
    glr: float | None = None                  # G learning rate; None: 0.002 (StyleGAN2) or 0.0025 (StyleGAN3)
    dlr: float = 0.002                        # D learning rate
    map: int | None = None                    # mapping layers from scratch; None: see scratch_networks
    cbase: int = 32768                        # channel base (scratch networks and a fresh D)
    cmax: int = 512                           # channel cap
    mirror: bool = False                      # add x-flipped copies of the images
    aug: Literal["ada", "noaug", "fixed"] = "ada"
    target: float = 0.6                       # ADA target for E[sign(D(real))]
    p: float = 0.2                            # augmentation probability for aug="fixed"
    ada_kimg: float = 500                     # ADA: kimg for p to move from 0 to 1
    ada_interval: int = 4                     # ADA: steps between p updates
    snap: float = 200                         # kimg between snapshots (NVIDIA: --snap 50 ticks of 4 kimg)
    tick: float = 4                           # kimg between progress reports with metrics
    ema_kimg: float | None = None             # G_ema half-life in kimg; None: batch * 10 / 32
    ema_rampup: float | None = 0.05           # EMA ramp-up (fraction of cur_nimg); None: off
    resolution: int | None = None             # scratch only: output side; a resumed network keeps its own
    fit: Literal["crop", "pad"] = "crop"      # make images square by centre crop or padding
    cond: bool = False                        # scratch only: conditional on dataset.json labels
    seed: int = 0
    device: str = "auto"                      # "auto" (CUDA when available), "cpu", "cuda", "cuda:N"
    d_reg_interval: int = 16                  # R1 every this many D steps
    g_reg_interval: int | None = 4            # path length every this many G steps (StyleGAN3: always off)
    mbstd_group: int = 4                      # minibatch-stddev group size (scratch D)
    num_fp16_res: int = 4                     # scratch networks: float16 resolutions (CUDA only)
    freezed: int = 0                          # freeze this many of D's first layers (Mo et al. 2020)
    grid_size: tuple[int, int] | None = None  # sample grid (cols, rows); None: by resolution
    z_dim: int = 512                          # scratch only (NVIDIA: always 512; small for tests)
    w_dim: int = 512                          # scratch only
    cache: bool = True                        # cache the prepared images (engine.training.dataset)
    eq_rot: float = 0.0                       # StyleGAN3: weight of the rotation-equivariance term (loss.py)
    turn_fakes: bool = False                  # StyleGAN3: draw fakes with a random input turn (loss.py)


@dataclass(frozen=True)
class TrainResult:
    """Where a run ended: its last snapshot and counters, and a digest of the final weights."""
    snapshot: Path | None                     # the newest snapshot written (rank 0), else None
    kimg: float                               # thousand images shown at the end
    cur_nimg: int
    state_hash: str                           # sha256 over G, G_ema and D (parameters and buffers)
    rank: int = 0
    world_size: int = 1
    notes: tuple[str, ...] = ()               # e.g. "no D in the file: a fresh D was built"
    dataset_report: Any = None                # the DatasetReport (images used, files skipped)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# Pure pieces (tested on their own)

def ema_beta(batch: int, ema_kimg: float, ema_rampup: float | None, cur_nimg: int) -> float:
    """G_ema decay for one step: 0.5 ** (batch / ema_nimg), ema_nimg ramped up with cur_nimg."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """p_ema <- beta * p_ema + (1 - beta) * p for parameters; buffers copied (w_avg is G's own EMA)."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def state_hash(networks: Mapping[str, nn.Module]) -> str:
    """sha256 of every parameter and buffer of `networks`, by name; equal hashes = equal weights."""
    digest = hashlib.sha256()
    for key in sorted(networks):
        for name, value in sorted(networks[key].state_dict().items()):
            digest.update(f"{key}.{name}:{tuple(value.shape)}:{value.dtype}".encode())
            digest.update(value.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def scratch_networks(cfg: Config, resolution: int, c_dim: int, img_channels: int, opts: TrainOptions,
                     batch_gpu: int) -> tuple[nn.Module, nn.Module]:
    """(G, D) from scratch with NVIDIA train.py's choices for `cfg`.

    Mapping depth: `--map`, else 8 for StyleGAN2 at 512 px and above (the paper configs) and 2
    below (stylegan2-ada's 'auto' and 'cifar' configs, which train small images better), 2 for
    StyleGAN3. StyleGAN3-R doubles cbase and cmax and uses 1x1 convolutions with radial filters.
    D is StyleGAN2's residual discriminator for every config, as in NVIDIA's train.py.
    """
    if cfg not in ("stylegan2", "stylegan3-t", "stylegan3-r"):
        raise StyleDeckError(f"unknown --cfg {cfg!r}; use stylegan2, stylegan3-t or stylegan3-r")
    if resolution < 4 or resolution & (resolution - 1):
        raise StyleDeckError(f"--resolution must be a power of two of at least 4, got {resolution}")
    depth = opts.map if opts.map is not None else (2 if cfg != "stylegan2" or resolution < 512 else 8)
    common = dict(z_dim=opts.z_dim, c_dim=c_dim, w_dim=opts.w_dim, img_resolution=resolution,
                  img_channels=img_channels, mapping_kwargs=dict(num_layers=depth),
                  num_fp16_res=opts.num_fp16_res, conv_clamp=256)
    if cfg == "stylegan2":
        G = stylegan2.Generator(channel_base=opts.cbase, channel_max=opts.cmax, **common)
    else:
        radial = cfg == "stylegan3-r"
        extra = dict(conv_kernel=1, use_radial_filters=True) if radial else {}
        G = stylegan3.Generator(channel_base=opts.cbase * (2 if radial else 1),
                                channel_max=opts.cmax * (2 if radial else 1),
                                magnitude_ema_beta=0.5 ** (opts.batch / (20 * 1e3)), **extra, **common)
    return G, fresh_discriminator(G, opts, batch_gpu)


def plain_convolutions_while_training(G: nn.Module) -> None:
    """StyleGAN2 modulated convolutions as NVIDIA's train.py runs them: in training, scale the
    activations around one shared convolution instead of a grouped convolution of per-sample
    weights (the same function; G forward + backward about 12% faster on CPU at batch 8, and
    NVIDIA made the same choice for its GPUs). In eval (G_ema, previews) the fused form stays."""
    for module in G.modules():
        if hasattr(module, "fused_modconv_default"):
            module.fused_modconv_default = "inference_only"


def fresh_discriminator(G: nn.Module, opts: TrainOptions, batch_gpu: int) -> nn.Module:
    """A new D matching G's resolution, channels and labels, as NVIDIA's train.py builds it."""
    return discriminator.Discriminator(
        c_dim=G.c_dim, img_resolution=G.img_resolution, img_channels=G.img_channels, architecture="resnet",
        channel_base=opts.cbase, channel_max=opts.cmax, num_fp16_res=opts.num_fp16_res, conv_clamp=256,
        block_kwargs=dict(freeze_layers=opts.freezed),
        epilogue_kwargs=dict(mbstd_group_size=min(opts.mbstd_group, batch_gpu)))


def default_grid(resolution: int) -> tuple[int, int]:
    """Sample grid (cols, rows): 8 x 4 up to 512 px, smaller above, so a PNG stays a few MB."""
    cols = max(2, min(8, 4096 // resolution))
    return cols, max(2, cols // 2)


def _seed_for(seed: int, rank: int, cur_nimg: int) -> int:
    """A 63-bit seed from (seed, rank, cur_nimg); the re-seed points that make resume exact."""
    digest = hashlib.sha256(f"styledeck-train:{seed}:{rank}:{cur_nimg}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def reseed(seed: int, rank: int, cur_nimg: int) -> None:
    s = _seed_for(seed, rank, cur_nimg)
    torch.manual_seed(s)          # CPU and every CUDA device
    np.random.seed(s % 2 ** 32)
    random.seed(s)


class DataOrder:
    """Which dataset item is the k-th image shown: epoch e uses a permutation seeded by (seed, e)."""

    def __init__(self, length: int, seed: int):
        self.length = length
        self.seed = seed
        self._epoch = -1
        self._perm = torch.arange(length)

    def index(self, k: int) -> int:
        epoch, pos = divmod(k, self.length)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.length, generator=gen)
            self._epoch = epoch
        return int(self._perm[pos])


# ---------------------------------------------------------------------------------------------
# Setting up a run

@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False                     # we called init_process_group (so we destroy it)

    @property
    def active(self) -> bool:
        return self.world_size > 1


def _init_distributed(device_name: str) -> tuple[_Dist, torch.device]:
    """Rank and device from torchrun's environment; one process without it."""
    env = _Dist(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    device = _resolve_device(device_name, env)
    if env.active and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        env.created = True
    return env, device


def _resolve_device(name: str, env: _Dist) -> torch.device:
    """The device of this process: under torchrun each rank takes the GPU of its local rank."""
    device = resolve_device(name)
    if device.type == "cuda":
        if env.active or device.index is None:
            device = torch.device("cuda", env.local_rank if env.active else torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def _resume_source(opts: TrainOptions) -> tuple[Path | None, snapshots.Snapshot | None]:
    """(network file, snapshot with training state or None) that `opts.resume` points at."""
    if not opts.resume:
        return None, None
    where = Path(opts.outdir) if opts.resume == "latest" else Path(opts.resume)
    if where.is_dir():
        snap = snapshots.latest_snapshot(where)
        if snap is None:
            if opts.resume == "latest":
                return None, None  # nothing to resume yet: start fresh (NVIDIA-style "latest" on a new run)
            raise StyleDeckError(f"{where} holds no complete snapshot to resume from "
                                 "(network-snapshot-*.safetensors with its .state.safetensors).")
        return snap.network, snap
    return where, snapshots.snapshot_of_network(where)


@dataclass
class _Networks:
    G: nn.Module
    D: nn.Module
    G_ema: nn.Module
    family: str                                # 'stylegan2' | 'stylegan3'
    radial: bool                               # StyleGAN3-R
    scratch: bool
    origin: dict | None
    notes: list[str] = field(default_factory=list)


def _load_networks(path: Path, opts: TrainOptions, batch_gpu: int, snap: snapshots.Snapshot | None) -> _Networks:
    nets = load_network(path, device="cpu")
    notes = []
    G = nets.get("G")
    G_ema = nets.get("G_ema")
    if G is None and G_ema is None:
        raise StyleDeckError(f"{path.name} holds no generator to fine-tune (found: {', '.join(nets)}).")
    if G is None:
        G = copy.deepcopy(G_ema)
        notes.append(f"{path.name} has no training G: starting G from its G_ema")
    if G_ema is None:
        G_ema = copy.deepcopy(G)
    family = family_of_module(G)
    radial = bool(G.init_kwargs.get("use_radial_filters", False))
    D = nets.get("D")
    if D is None:
        D = fresh_discriminator(G, opts, batch_gpu)
        notes.append(f"{path.name} has no discriminator: training a fresh D ({G.img_resolution} px) from scratch")
    elif D.img_resolution != G.img_resolution or D.c_dim != G.c_dim:
        raise StyleDeckError(f"{path.name}: its D ({D.img_resolution} px) does not match its G "
                             f"({G.img_resolution} px).")
    # A run's own snapshot keeps the network the run started from as its origin.
    origin = (read_checkpoint_metadata(path).get("origin") if snap is not None
              else {"source": path.name, "sha256": file_sha256(path)})
    return _Networks(G, D, G_ema, family, radial, False, origin, notes)


# ---------------------------------------------------------------------------------------------
# The run

@dataclass
class _Phase:
    name: str                                  # 'Gmain' | 'Greg' | 'Gboth' | 'Dmain' | 'Dreg' | 'Dboth'
    module: nn.Module
    opt: torch.optim.Optimizer
    interval: int


def _phases(nets: _Networks, opts: TrainOptions) -> list[_Phase]:
    """NVIDIA's phase list with the lazy-regularisation Adam correction."""
    glr = opts.glr if opts.glr is not None else (0.002 if nets.family == "stylegan2" else 0.0025)
    g_reg = opts.g_reg_interval if nets.family == "stylegan2" else None
    phases = []
    for name, module, lr, reg_interval in (("G", nets.G, glr, g_reg), ("D", nets.D, opts.dlr, opts.d_reg_interval)):
        if reg_interval is None or reg_interval <= 1:
            opt = torch.optim.Adam(module.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
            phases.append(_Phase(f"{name}both", module, opt, 1))
        else:
            mb_ratio = reg_interval / (reg_interval + 1)
            opt = torch.optim.Adam(module.parameters(), lr=lr * mb_ratio, betas=(0.0, 0.99 ** mb_ratio), eps=1e-8)
            phases += [_Phase(f"{name}main", module, opt, 1), _Phase(f"{name}reg", module, opt, reg_interval)]
    return phases


class _Run:
    """One training run's state; `train` drives it."""

    def __init__(self, opts: TrainOptions, progress: ProgressCallback | None, cancel: CancelToken | None,
                 pause: Any):
        self.opts = opts
        self.progress = progress
        self.cancel = cancel
        self.pause = pause
        self.env, self.device = _Dist(), torch.device("cpu")
        self.batch_gpu = opts.batch
        self.cur_nimg = 0
        self.batch_idx = 0
        self.tick = 0
        self.last_snapshot: Path | None = None
        self.notes: list[str] = []

    @property
    def rank0(self) -> bool:
        return self.env.rank == 0

    def report(self, message: str, preview: np.ndarray | None = None, metrics: dict | None = None) -> None:
        if self.progress is not None and self.rank0:
            self.progress(Progress(self.cur_nimg, int(round(self.opts.kimg * 1000)), message, preview, metrics))

    def check_cancel(self) -> None:
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()

    # -- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        opts = self.opts
        self.env, self.device = _init_distributed(opts.device)
        if opts.batch <= 0 or opts.batch % self.env.world_size:
            raise StyleDeckError(f"--batch {opts.batch} must be a positive multiple of the number of "
                                 f"processes ({self.env.world_size}).")
        self.batch_gpu = opts.batch // self.env.world_size
        Path(opts.outdir).mkdir(parents=True, exist_ok=True)
        if self.rank0:
            snapshots.remove_leftovers(opts.outdir)
        net_path, snap = _resume_source(opts)
        torch.manual_seed(opts.seed)           # scratch weights: the same on every rank
        if net_path is not None:
            self.report(f"loading {net_path.name}")
            nets = _load_networks(net_path, opts, self.batch_gpu, snap)
            resolution, c_dim, channels = nets.G.img_resolution, nets.G.c_dim, nets.G.img_channels
        else:
            if opts.resolution is None:
                raise StyleDeckError("Training from scratch needs a resolution (--resolution), or --resume with "
                                     "a network to fine-tune.")
            nets = None
            resolution, c_dim, channels = opts.resolution, None, 3
        self.dataset = self._dataset(resolution, channels, use_labels=(c_dim or 0) > 0 or (nets is None and opts.cond))
        if nets is None:
            c_dim = self.dataset.label_dim if opts.cond else 0
            G, D = scratch_networks(opts.cfg, resolution, c_dim, channels, opts, self.batch_gpu)
            nets = _Networks(G, D, copy.deepcopy(G), family_of_module(G), opts.cfg == "stylegan3-r", True, None)
        elif nets.G.c_dim and self.dataset.label_dim != nets.G.c_dim:
            raise StyleDeckError(f"{net_path.name} is conditional on {nets.G.c_dim} labels, but {opts.data} has "
                                 f"{self.dataset.label_dim} (dataset.json); give a dataset with matching labels.")
        self._check_batch(nets.D)
        self.nets = nets
        self.notes += nets.notes
        for note in nets.notes:
            log.warning(note)
        self._to_device()
        self._build_training()
        if snap is not None:
            self._restore(snap)
        self.grid_size = tuple(opts.grid_size) if opts.grid_size else default_grid(resolution)
        self.grid_z = torch.randn([self.grid_size[0] * self.grid_size[1], nets.G.z_dim],
                                  generator=torch.Generator().manual_seed(opts.seed))
        self.grid_c = self._grid_labels()
        if self.rank0 and not (Path(opts.outdir) / "reals.png").exists():
            save_png(Path(opts.outdir) / "reals.png", self._reals_grid())
        reseed(opts.seed, self.env.rank, self.cur_nimg)

    def _check_batch(self, D: nn.Module) -> None:
        """D's minibatch-stddev layer groups the per-process batch; it must split evenly."""
        mbstd = getattr(getattr(D, "b4", None), "mbstd", None)
        group = getattr(mbstd, "group_size", None)
        if group and self.batch_gpu % min(group, self.batch_gpu):
            raise StyleDeckError(f"The batch per process ({self.batch_gpu}) must be a multiple of the "
                                 f"discriminator's minibatch-stddev group size ({group}); choose --batch "
                                 f"{self.env.world_size * group * max(1, self.batch_gpu // group)} for example.")

    def _dataset(self, resolution: int, channels: int, use_labels: bool) -> ImageDataset:
        opts = self.opts

        def relay(event: Progress) -> None:
            self.report(f"preparing images: {event.message} ({event.step}/{event.total})")

        ds = ImageDataset(DatasetOptions(path=opts.data, resolution=resolution, fit=opts.fit, xflip=opts.mirror,
                                         use_labels=use_labels, cache=opts.cache, channels=channels),
                          progress=relay, cancel=self.cancel)
        self.report(f"{DATASET_MESSAGE}{ds.report.summary()}")
        if ds.report.skipped and self.rank0:
            self.notes.append(f"{len(ds.report.skipped)} file(s) skipped, e.g. {ds.report.skipped[0][0]}: "
                              f"{ds.report.skipped[0][1]}")
        return ds

    def _to_device(self) -> None:
        nets = self.nets
        for net in (nets.G, nets.D, nets.G_ema):
            net.to(self.device)
        nets.G.train().requires_grad_(False)
        plain_convolutions_while_training(nets.G)
        nets.D.train().requires_grad_(False)
        nets.G_ema.eval().requires_grad_(False)
        if self.env.active:  # identical starting weights on every rank
            for net in (nets.G, nets.D, nets.G_ema):
                for tensor in list(net.parameters()) + list(net.buffers()):
                    dist.broadcast(tensor.data, src=0)

    def _build_training(self) -> None:
        opts, nets = self.opts, self.nets
        self.phases = _phases(nets, opts)
        self.pipe = None
        self.ada = None
        if opts.aug != "noaug":
            self.pipe = AugmentPipe(**augment_preset("bgc")).train().requires_grad_(False).to(self.device)
            self.pipe.p.copy_(torch.as_tensor(opts.p if opts.aug == "fixed" else 0.0))
            if opts.aug == "ada":
                self.ada = AdaController(self.pipe, target=opts.target, interval=opts.ada_interval,
                                         kimg=opts.ada_kimg, batch_size=opts.batch)
        sg2 = nets.family == "stylegan2"
        gamma = opts.gamma if opts.gamma is not None else 0.0002 * nets.G.img_resolution ** 2 / opts.batch
        self.gamma = gamma
        loss_kwargs = preset_loss_kwargs("stylegan2" if sg2 else "stylegan3-r" if nets.radial else "stylegan3-t",
                                         opts.batch)
        if not nets.scratch:  # the early blur of SG3-R: blurring a trained network's inputs throws away what it knows
            loss_kwargs.update(blur_init_sigma=0, blur_fade_kimg=0)
        if (opts.eq_rot > 0 or opts.turn_fakes) and sg2:
            raise StyleDeckError("Turning the fakes (--turn-fakes) and the turning loss (--eq-rot) need a StyleGAN3 "
                                 "network: a StyleGAN2 generator has no input to turn.")
        self.loss = StyleGANLoss(nets.G, nets.D, augment_pipe=self.pipe, r1_gamma=gamma, eq_rot_weight=opts.eq_rot,
                                 turn_fakes=opts.turn_fakes, **loss_kwargs)
        self.ema_kimg = opts.ema_kimg if opts.ema_kimg is not None else opts.batch * 10 / 32
        self.order = DataOrder(len(self.dataset), opts.seed)

    # -- snapshot state ---------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        info: dict[str, Any] = {"cur_nimg": self.cur_nimg, "batch_idx": self.batch_idx, "tick": self.tick,
                                "world_size": self.env.world_size, "options": asdict(self.opts)}
        for name, opt in (("G", self.phases[0].opt), ("D", self.phases[-1].opt)):
            for key, value in snapshots.optimizer_tensors(opt).items():
                tensors[f"opt.{name}.{key}"] = value
        if self.pipe is not None:
            snapshots.split_state("aug.pipe", self.pipe.state_dict(), tensors, info)
        if self.ada is not None:
            snapshots.split_state("aug.ada", self.ada.state_dict(), tensors, info)
        snapshots.split_state("loss", snapshots.loss_state(self.loss), tensors, info)
        info["options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in info["options"].items()}
        return tensors, info

    def _restore(self, snap: snapshots.Snapshot) -> None:
        tensors, info = snapshots.read_state(snap.state)
        if info.get("cur_nimg") != snap.cur_nimg:
            raise StyleDeckError(f"{snap.state.name} does not belong to {snap.network.name}.")
        self.cur_nimg, self.batch_idx, self.tick = int(info["cur_nimg"]), int(info["batch_idx"]), int(info["tick"])
        for name, opt in (("G", self.phases[0].opt), ("D", self.phases[-1].opt)):
            own = {k[len(f"opt.{name}."):]: v for k, v in tensors.items() if k.startswith(f"opt.{name}.")}
            snapshots.load_optimizer_tensors(opt, own)
        if self.pipe is not None and any(k.startswith("aug.pipe.") for k in tensors):
            pipe_state = snapshots.join_state("aug.pipe", tensors, {})
            self.pipe.load_state_dict({k: v.to(self.device) for k, v in pipe_state.items()})
        if self.ada is not None and any(k.startswith("aug.ada.") for k in list(tensors) + list(info)):
            self.ada.load_state_dict(snapshots.join_state("aug.ada", tensors, info))
        snapshots.load_loss_state(self.loss, snapshots.join_state("loss", tensors, info))
        old = info.get("options", {})
        if old.get("batch") not in (None, self.opts.batch):
            log.warning("resuming a run made with batch %s at batch %s", old.get("batch"), self.opts.batch)
        self.report(f"resumed from {snap.network.name} at {self.cur_nimg / 1000:.3f} kimg")

    def write_snapshot(self) -> Path:
        """Write the snapshot at cur_nimg (rank 0), then re-seed every rank (see module doc)."""
        snap = snapshots.snapshot_paths(self.opts.outdir, self.cur_nimg)
        grid = None
        if self.rank0:
            tensors, info = self._state()
            snapshots.write_state(snap.state, tensors, info)
            grid = self._fakes_grid()
            save_png(snap.grid, grid)
            training = {"options": info["options"], "cur_nimg": self.cur_nimg, "kimg": self.cur_nimg / 1000,
                        "tick": self.tick, "batch_idx": self.batch_idx,
                        "aug_p": float(self.pipe.p) if self.pipe is not None else 0.0,
                        "world_size": self.env.world_size}
            save_checkpoint(snap.network, {"G": self.nets.G, "G_ema": self.nets.G_ema, "D": self.nets.D},
                            origin=self.nets.origin, training=training)
            self.last_snapshot = snap.network
            self.report(f"snapshot {snap.network.name}", preview=to_rgb(grid))
        if self.env.active:
            dist.barrier()
        reseed(self.opts.seed, self.env.rank, self.cur_nimg)
        return snap.network

    # -- grids ------------------------------------------------------------------------------
    def _grid_labels(self) -> torch.Tensor:
        n = self.grid_size[0] * self.grid_size[1]
        c_dim = self.nets.G.c_dim
        if c_dim == 0:
            return torch.zeros([n, 0])
        return torch.stack([torch.from_numpy(self.dataset.get_label(i)) for i in range(n)]).float()

    def _reals_grid(self) -> np.ndarray:
        n = self.grid_size[0] * self.grid_size[1]
        images = [self.dataset[i % len(self.dataset)][0].permute(1, 2, 0).numpy() for i in range(n)]
        return image_grid(images, rows=self.grid_size[1], cols=self.grid_size[0])

    @torch.no_grad()
    def _fakes_grid(self) -> np.ndarray:
        G = self.nets.G_ema
        images = []
        for z, c in zip(self.grid_z.split(self.batch_gpu), self.grid_c.split(self.batch_gpu)):
            img = G(z.to(self.device), c.to(self.device), noise_mode="const")   # [n, C, H, W]
            images.extend(to_uint8(img))
        return image_grid(images, rows=self.grid_size[1], cols=self.grid_size[0])

    # -- one step -----------------------------------------------------------------------------
    def _real_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.cur_nimg + self.env.rank * self.batch_gpu
        items = [self.dataset[self.order.index(start + i)] for i in range(self.batch_gpu)]
        img = torch.stack([torch.as_tensor(x) for x, _ in items]).to(self.device)      # uint8 [N, C, H, W]
        img = img.to(torch.float32) / 127.5 - 1                                          # [-1, 1]
        c = torch.stack([torch.as_tensor(y, dtype=torch.float32) for _, y in items]).to(self.device)
        return img, c

    def _gen_labels(self, n: int) -> torch.Tensor:
        if self.nets.G.c_dim == 0:
            return torch.zeros([n, 0], device=self.device)
        idx = torch.randint(len(self.dataset), [n]).tolist()
        return torch.stack([torch.from_numpy(self.dataset.get_label(i)) for i in idx]).to(self.device)

    def step(self, stats: dict[str, list[float]]) -> None:
        real_img, real_c = self._real_batch()
        n_phases = len(self.phases)
        all_z = torch.randn([n_phases, self.batch_gpu, self.nets.G.z_dim], device=self.device)
        all_c = self._gen_labels(n_phases * self.batch_gpu).reshape(n_phases, self.batch_gpu, -1)
        for phase, gen_z, gen_c in zip(self.phases, all_z, all_c):
            if self.batch_idx % phase.interval != 0:
                continue
            phase.opt.zero_grad(set_to_none=True)
            phase.module.requires_grad_(True)
            metrics = self.loss.accumulate_gradients(phase=phase.name, real_img=real_img, real_c=real_c,
                                                     gen_z=gen_z, gen_c=gen_c, gain=phase.interval,
                                                     cur_nimg=self.cur_nimg)
            phase.module.requires_grad_(False)
            self._record(metrics or {}, stats)
            self._apply_gradients(phase)
        beta = ema_beta(self.opts.batch, self.ema_kimg, self.opts.ema_rampup, self.cur_nimg)
        if self.env.active:
            self._average_running_stats()
        update_ema(self.nets.G_ema, self.nets.G, beta)
        self.cur_nimg += self.opts.batch
        self.batch_idx += 1
        if self.ada is not None:
            self._update_ada()

    def _apply_gradients(self, phase: _Phase) -> None:
        """All-reduce (mean) the gradients of every rank, scrub NaN/Inf as NVIDIA does, step Adam."""
        params = [p for p in phase.module.parameters() if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.flatten() for p in params])
        if self.env.active:
            dist.all_reduce(flat)
            flat /= self.env.world_size
        torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.reshape(p.shape))
        phase.opt.step()

    def _average_running_stats(self) -> None:
        """Running averages (w_avg, magnitude EMAs, the path-length mean) see each rank's own batch;
        averaging them keeps the replicas equal, so rank 0's snapshot is every rank's state."""
        stats = [buf for name, buf in self.nets.G.named_buffers() if _RUNNING.search(name)]
        pl_mean = getattr(self.loss, "pl_mean", None)
        if isinstance(pl_mean, torch.Tensor):
            stats.append(pl_mean)
        if not stats:
            return
        flat = torch.cat([t.detach().flatten().float() for t in stats])
        dist.all_reduce(flat)
        flat /= self.env.world_size
        for t, value in zip(stats, flat.split([t.numel() for t in stats])):
            t.copy_(value.reshape(t.shape))

    def _update_ada(self) -> None:
        """Feed this step's D(real) logits to ADA; it sums the signs over ranks itself, so p stays equal."""
        logits = getattr(self.loss, "last_real_logits", None)
        if logits is None:
            return
        self.ada.update(logits.detach().float().flatten())
        self.loss.last_real_logits = None

    def _record(self, metrics: Mapping[str, Any], stats: dict[str, list[float]]) -> None:
        for key, value in metrics.items():
            try:
                stats.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                continue

    # -- the loop -----------------------------------------------------------------------------
    def wait_while_paused(self) -> float:
        """Block while `pause` is set (cancel still works); the seconds spent paused."""
        if self.pause is None or not self.pause.is_set():
            return 0.0
        start = time.perf_counter()
        self.report("paused")
        while self.pause.is_set():
            self.check_cancel()
            time.sleep(0.05)
        self.report("resumed")
        return time.perf_counter() - start

    def run(self) -> None:
        opts = self.opts
        total_nimg = int(round(opts.kimg * 1000))
        snap_nimg = max(1, int(round(opts.snap * 1000)))
        tick_nimg = max(1, int(round(opts.tick * 1000)))
        tick_start_nimg, tick_start = self.cur_nimg, time.perf_counter()
        stats: dict[str, list[float]] = {}
        last_light = 0.0
        dirty = False
        self.report(f"training {self.nets.family} at {self.nets.G.img_resolution} px from "
                    f"{self.cur_nimg / 1000:.3f} to {opts.kimg:g} kimg")
        if torch.cuda.is_available() and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            while self.cur_nimg < total_nimg:
                self.check_cancel()
                tick_start += self.wait_while_paused()
                with _translate_oom():
                    self.step(stats)
                dirty = True
                done = self.cur_nimg >= total_nimg
                if done or self.cur_nimg // tick_nimg != (self.cur_nimg - opts.batch) // tick_nimg:
                    now = time.perf_counter()
                    self.tick += 1
                    self.report(self._tick_message(), metrics=self._metrics(stats, tick_start_nimg, tick_start,
                                                                            now, total_nimg))
                    stats = {}
                    tick_start_nimg, tick_start = self.cur_nimg, time.perf_counter()
                elif self.rank0 and time.perf_counter() - last_light > 1.0:
                    last_light = time.perf_counter()
                    self.report(f"kimg {self.cur_nimg / 1000:.3f}")
                if done or self.cur_nimg // snap_nimg != (self.cur_nimg - opts.batch) // snap_nimg:
                    self.write_snapshot()
                    dirty = False
        except Cancelled as exc:
            # Stopping keeps the work: a snapshot of where it stopped (rank 0; never under DDP, where
            # the other ranks may not have stopped at the same step).
            if dirty and not self.env.active and self.cur_nimg > 0:
                self.write_snapshot()
            exc.snapshot = self.last_snapshot
            raise

    def _tick_message(self) -> str:
        p = f"  aug p {float(self.pipe.p):.3f}" if self.pipe is not None else ""
        return f"tick {self.tick}  kimg {self.cur_nimg / 1000:.3f}{p}"

    def _metrics(self, stats: dict[str, list[float]], start_nimg: int, start: float, now: float,
                 total_nimg: int) -> dict[str, float]:
        seconds = max(now - start, 1e-9)
        images_per_s = (self.cur_nimg - start_nimg) / seconds
        metrics = {key: float(np.mean(values)) for key, values in stats.items() if values}
        metrics.update({
            "kimg": self.cur_nimg / 1000,
            "tick": float(self.tick),
            "images_per_s": images_per_s,
            "s_per_kimg": 1000 / images_per_s if images_per_s > 0 else math.inf,
            "eta_s": max(total_nimg - self.cur_nimg, 0) / images_per_s if images_per_s > 0 else math.inf,
            "aug_p": float(self.pipe.p) if self.pipe is not None else 0.0,
            "gpu_mem_gb": (torch.cuda.max_memory_allocated(self.device) / 2 ** 30
                           if self.device.type == "cuda" else 0.0),
            "gamma": float(self.gamma),
        })
        if self.ada is not None and getattr(self.ada, "rt", None) is not None:
            metrics["ada_rt"] = float(self.ada.rt)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return metrics

    def result(self, seconds: float) -> TrainResult:
        nets = self.nets
        return TrainResult(snapshot=self.last_snapshot, kimg=self.cur_nimg / 1000, cur_nimg=self.cur_nimg,
                           state_hash=state_hash({"G": nets.G, "G_ema": nets.G_ema, "D": nets.D}),
                           rank=self.env.rank, world_size=self.env.world_size, notes=tuple(self.notes),
                           dataset_report=self.dataset.report, seconds=seconds)

    def close(self) -> None:
        if self.env.created and dist.is_initialized():
            dist.destroy_process_group()


def _translate_oom() -> ContextManager[None]:
    return translate_oom("training", "Try a smaller --batch (or more GPUs under torchrun).")


def train(opts: TrainOptions, *, progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
          pause: Any = None) -> TrainResult:
    """Train (or fine-tune) until `opts.kimg`; snapshots every `opts.snap` kimg and at the end.

    Args:
        opts: the run's options (see TrainOptions).
        progress: receives Progress(step=cur_nimg, total=kimg*1000, ...) on rank 0: a metrics dict
            every tick ("kimg", "images_per_s", "s_per_kimg", "eta_s", "loss/G", "loss/D",
            "loss/r1", "loss/pl", "aug_p", "gpu_mem_gb", ...), the sample grid as `preview` at each
            snapshot, and plain status messages (metrics None) in between, at most once a second.
        cancel: stops between steps; a snapshot of the current state is written first (single
            process), its path on the raised Cancelled as `exc.snapshot`.
        pause: an Event; while it is set the loop waits between steps (cancel still works).

    Returns:
        TrainResult with the last snapshot and a hash of the final weights.

    Raises:
        DatasetError: the folder has no usable image.
        StyleDeckError: bad options or network file; DeviceOutOfMemoryError; Cancelled.
    """
    start = time.perf_counter()
    run = _Run(opts, progress, cancel, pause)
    try:  # setup joins the process group under torchrun; close leaves it, whatever happens
        # TF32 would change the numbers between GPU generations; NVIDIA's loop turns it off too.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        run.setup()
        run.run()
        if run.last_snapshot is None and run.rank0:  # resumed at or past the end: keep the snapshot it came from
            found = snapshots.latest_snapshot(opts.outdir)
            run.last_snapshot = found.network if found else None
        return run.result(time.perf_counter() - start)
    finally:
        run.close()


def options_from(values: Mapping[str, Any]) -> TrainOptions:
    """TrainOptions from a mapping, ignoring keys it does not know (e.g. snapshot metadata)."""
    names = {f.name for f in fields(TrainOptions)}
    kwargs = {k: v for k, v in values.items() if k in names}
    if isinstance(kwargs.get("grid_size"), list):
        kwargs["grid_size"] = tuple(kwargs["grid_size"])
    return TrainOptions(**kwargs)

