"""The command line: `python main.py <command>` (or `styledeck <command>`).

Commands: info, generate, mix, convert, project, finetune, blend, make-dataset, video. Options mean what they
mean in NVIDIA's gen_images.py, style_mixing.py, projector.py and train.py (--network, --seeds 0-3,7, --trunc, --class,
--noise-mode, --translate, --rotate, --outdir; --rows, --cols, --styles; --data, --kimg, ...), so
their command lines keep working; output files are named as theirs (seed0042.png, 3-7.png, grid.png).
Exit status: 0 done, 1 an error the message explains, 2 bad usage, 130 stopped.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from engine.bundled import default_network
from engine.devices import resolve_device
from engine.errors import Cancelled, StyleDeckError
from engine.images import image_grid, save_png, to_uint8
from engine.jobs import CancelToken, Progress, translate_oom
from engine.latents import (NOISE_MODES, LatentCache, Source, class_to_c, layer_groups, network_family,
                            parse_range_list, parse_styles, seed_to_z)
from engine.loader import convert_network, load_network, network_info, provenance, provenance_lines
from engine.networks.stylegan3 import input_transform
from engine.rosinality import export_rosinality

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------------
# Helpers shared by the commands

def load_generator(args: argparse.Namespace) -> tuple[Path, dict[str, torch.nn.Module], torch.nn.Module]:
    """(path, networks, G): G_ema where the file has it (what NVIDIA's scripts render), else G."""
    path = Path(args.network) if args.network else default_network()
    device = resolve_device(getattr(args, "device", "cpu"))
    with _translate_oom():
        networks = load_network(path, device=device)
    G = networks.get("G_ema", networks.get("G"))
    if G is None:
        raise StyleDeckError(f"{path.name} holds no generator (found: {', '.join(networks) or 'nothing'}).")
    return path, networks, G.eval().requires_grad_(False)


def _translate_oom():
    return translate_oom("running the network", "Close other programs that use the GPU, or try --device cpu.")


# Set by Ctrl+C. Python raises KeyboardInterrupt wherever the main thread happens to be, and when that
# is a finalizer (a library object's __del__ during garbage collection) Python reports it as "Exception
# ignored" and carries on; the flag makes the next progress step raise it again.
_interrupted = threading.Event()


def _on_sigint(_signum: int, _frame: Any) -> None:
    _interrupted.set()
    raise KeyboardInterrupt


def check_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl+C came since the command started (even if a finalizer swallowed it)."""
    if _interrupted.is_set():
        raise KeyboardInterrupt


@contextmanager
def _sigint_flag() -> Iterator[None]:
    """Route Ctrl+C through `_on_sigint` while a command runs (main thread only; an ignored SIGINT stays so)."""
    _interrupted.clear()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def progress_bar(total: int, desc: str, unit: str = "img") -> Iterator[Callable[[Progress | int], None]]:
    """A tqdm bar on stderr that appears only once the work takes over a second.

    Yields a callback taking a Progress event (from an engine job) or a count of steps done.
    """
    with tqdm(total=total, desc=desc, unit=unit, delay=1.0, file=sys.stderr, dynamic_ncols=True) as bar:
        def update(event: Progress | int = 1) -> None:
            check_interrupted()
            if isinstance(event, Progress):
                bar.total = event.total
                bar.set_postfix_str(event.message, refresh=False)
                bar.update(event.step - bar.n)
            else:
                bar.update(event)
        yield update


def set_input_transform(G: torch.nn.Module, rotate: float, translate: tuple[float, float]) -> None:
    """StyleGAN3: rotate/translate the output through the input transform; StyleGAN2 has none."""
    if network_family(G) != "stylegan3":
        if rotate != 0 or translate != (0.0, 0.0):
            log.warning("--rotate and --translate need a StyleGAN3 network; ignored for this StyleGAN2 one")
        return
    transform = G.synthesis.input.transform
    transform.copy_(torch.from_numpy(input_transform(rotate, translate)).to(transform))


def _warn_unused_class(G: torch.nn.Module, args: argparse.Namespace) -> None:
    if G.c_dim == 0 and args.class_idx is not None:
        log.warning("--class is ignored: this network is unconditional")


def _range_list(text: str) -> list[int]:
    try:
        values = parse_range_list(text)
    except StyleDeckError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _count(text: str) -> int:
    """A whole number >= 0."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0; got {text!r}")
    return int(text)


def _vec2(text: str) -> tuple[float, float]:
    """NVIDIA's "x,y" vector syntax."""
    parts = text.split(",")
    try:
        if len(parts) == 2:
            return float(parts[0]), float(parts[1])
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected two numbers like 0.1,-0.2; got {text!r}")


# ---------------------------------------------------------------------------------------------
# Commands

def cmd_info(args: argparse.Namespace) -> int:
    path, networks, G = load_generator(args)
    info = network_info(G)
    family_label = {None: "StyleGAN2", "T": "StyleGAN3-T (translation equivariant)",
                    "R": "StyleGAN3-R (rotation equivariant)"}[info.get("config")]
    rows = [
        ("network", str(path)),
        ("family", family_label),
        ("resolution", f"{G.img_resolution} px, {G.img_channels} channel{'s' if G.img_channels != 1 else ''}"),
        ("conditional", f"yes, {G.c_dim} classes" if G.c_dim else "no"),
        ("z_dim / w_dim", f"{G.z_dim} / {G.w_dim}"),
        ("num_ws", str(G.num_ws)),
        ("parameters", ", ".join(f"{name} {network_info(net)['num_params']:,}" for name, net in networks.items())),
        *provenance_lines(provenance(path)),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("layer groups")
    for group in layer_groups(G):
        layers = f"{group.layers[0]}-{group.layers[-1]}" if len(group.layers) > 1 else str(group.layers[0])
        resolution = "" if group.label.startswith("layers") else f"  ({group.label})"  # SG2 only
        print(f"  {group.name:<7} ws {layers:<6}{resolution}")
    return 0


@torch.no_grad()
def cmd_generate(args: argparse.Namespace) -> int:
    _, _, G = load_generator(args)
    device = next(G.parameters()).device
    c = class_to_c(args.class_idx, G.c_dim, device)                       # [1, c_dim]
    _warn_unused_class(G, args)
    set_input_transform(G, args.rotate, args.translate)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    images = []
    with progress_bar(len(args.seeds), "generating") as advance, _translate_oom():
        for seed in args.seeds:
            # One seed at a time, as gen_images.py: batch size changes float rounding.
            z = seed_to_z(seed, G.z_dim).to(device)                       # [1, z_dim]
            img = G(z, c, truncation_psi=args.trunc, truncation_cutoff=args.trunc_cutoff,
                    noise_mode=args.noise_mode)                           # [1, C, H, W]
            image = to_uint8(img)[0]                                      # [H, W, C]
            save_png(outdir / f"seed{seed:04d}.png", image)
            if args.grid:
                images.append(image)
            advance(1)
    if args.grid:
        save_png(outdir / "grid.png", image_grid(images))
    print(f"wrote {len(args.seeds)} image{'s' if len(args.seeds) != 1 else ''} to {outdir}"
          + (" and grid.png" if args.grid else ""))
    return 0


@torch.no_grad()
def cmd_mix(args: argparse.Namespace) -> int:
    _, _, G = load_generator(args)
    styles = parse_styles(args.styles, G)
    class_to_c(args.class_idx, G.c_dim)                                   # a clear error before any work
    _warn_unused_class(G, args)
    cache = LatentCache(G)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)

    def render(ws: torch.Tensor) -> np.ndarray:                           # [num_ws, w_dim] -> [H, W, C]
        return to_uint8(G.synthesis(ws[None], noise_mode=args.noise_mode))[0]

    seeds = list(dict.fromkeys(args.rows + args.cols))                    # unique, in order
    total = len(seeds) + len(args.rows) * len(args.cols)
    ws = {}
    image_of: dict[tuple[int, int], np.ndarray] = {}
    with progress_bar(total, "mixing") as advance, _translate_oom():
        for seed in seeds:
            ws[seed] = cache.ws(Source.from_seed(seed, args.class_idx), args.trunc, args.trunc_cutoff)
            image_of[seed, seed] = render(ws[seed])
            advance(1)
        for row in args.rows:
            for col in args.cols:
                w = ws[row].clone()
                w[styles] = ws[col][styles]                               # the column seed's styles
                image_of[row, col] = render(w)
                advance(1)
    for (row, col), image in image_of.items():
        save_png(outdir / f"{row}-{col}.png", image)
    # The grid as style_mixing.py lays it out: column seeds across the top, row seeds down the
    # left, each cell the row seed with the column seed's styles; the corner stays black.
    blank = np.zeros_like(image_of[seeds[0], seeds[0]])
    cells = [blank] + [image_of[col, col] for col in args.cols]
    for row in args.rows:
        cells += [image_of[row, row]] + [image_of[row, col] for col in args.cols]
    save_png(outdir / "grid.png", image_grid(cells, rows=len(args.rows) + 1, cols=len(args.cols) + 1))
    print(f"mixed ws {','.join(map(str, styles))} of the column seeds into {len(image_of)} images "
          f"and grid.png in {outdir}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    src = Path(args.network) if args.network else default_network()
    suffix = ".pt" if args.format == "rosinality" else ".safetensors"
    dst = Path(args.output) if args.output else src.with_suffix(suffix)
    if dst.resolve() == src.resolve():
        raise StyleDeckError(f"--output {dst} is the input file; choose another name.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "rosinality":
        if args.keep or args.half or args.training_info:
            raise StyleDeckError("--keep, --half and --training-info apply to the native format only.")
        export_rosinality(src, dst)
    else:
        keep = [k.strip() for k in args.keep.split(",") if k.strip()] if args.keep else None
        convert_network(src, dst, training=_training_info(args.training_info), keep=keep, half=args.half)
    print(f"wrote {dst}")
    return 0


def _training_info(path: str | None) -> dict | None:
    """The JSON object in `path` (facts about a run to record in a checkpoint), or None."""
    if path is None:
        return None
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise StyleDeckError(f"--training-info {path}: cannot read a JSON object from it ({exc}).") from exc
    if not isinstance(info, dict):
        raise StyleDeckError(f"--training-info {path} holds a {type(info).__name__}; it must be a JSON object.")
    return info


# ---------------------------------------------------------------------------------------------
# finetune (the training loop; engine/training/loop.py)

def _flag(text: str) -> bool:
    """NVIDIA's boolean option syntax: --mirror=1, --mirror true, or a bare --mirror."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 1/0, true/false or yes/no; got {text!r}")


def torchrun_command(argv: Sequence[str], gpus: int) -> str:
    """The command line that runs this finetune on `gpus` processes under torchrun."""
    import shlex
    return " ".join(["torchrun", "--standalone", f"--nproc_per_node={gpus}", "main.py", "finetune",
                     *map(shlex.quote, argv)])


def finetune_options(args: argparse.Namespace):
    """TrainOptions from the parsed flags: a flag not given keeps the dataclass default."""
    from dataclasses import fields

    from engine.training.loop import TrainOptions
    given = {f.name: getattr(args, f.name) for f in fields(TrainOptions) if getattr(args, f.name, None) is not None}
    if args.snap is not None:  # NVIDIA counts --snap in ticks; the engine wants kimg
        given["snap"] = args.snap * (args.tick if args.tick is not None else TrainOptions.tick)
    return TrainOptions(**given)


_FINETUNE_FLAGS = ("outdir", "data", "cfg", "batch", "gamma", "kimg", "tick", "snap", "mirror", "aug", "p", "target",
                   "resume", "glr", "dlr", "cbase", "cmax", "map", "mbstd_group", "freezed", "cond", "resolution",
                   "fit", "minutes", "seed", "device", "eq_rot", "turn_fakes")


def _finetune_argv(args: argparse.Namespace) -> list[str]:
    """The finetune flags that were given, as a command line (without --gpus)."""
    argv = []
    for dest in _FINETUNE_FLAGS:
        value = getattr(args, dest, None)
        if value is not None:
            if isinstance(value, bool):
                value = int(value)
            argv += [f"--{dest.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
    if args.cache is False:
        argv.append("--no-cache")
    return argv


def cmd_finetune(args: argparse.Namespace) -> int:
    from engine.training.loop import train
    opts = finetune_options(args)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if args.gpus > 1 and world == 1:
        argv = _finetune_argv(args)
        print(f"--gpus {args.gpus} runs one process per GPU through torch.distributed; start it with:\n\n  "
              f"{torchrun_command(argv, args.gpus)}\n", file=sys.stderr)
        return 2
    if world > 1 and args.gpus not in (1, world):
        log.warning("--gpus %d, but torchrun started %d processes; using %d", args.gpus, world, world)
    rank0 = int(os.environ.get("RANK", 0)) == 0
    total = int(round(opts.kimg * 1000))
    stop = StopRequests(args.minutes)
    with tqdm(total=total, desc="training", unit="img", file=sys.stderr, dynamic_ncols=True,
              disable=not rank0, unit_scale=True) as bar, stop:
        def show(event: Progress) -> None:
            bar.update(max(event.step - bar.n, 0))
            bar.set_postfix_str(event.message, refresh=False)
            if event.metrics:
                m = event.metrics
                parts = [f"kimg {m.get('kimg', 0):.3f}", f"{m.get('s_per_kimg', 0):.1f} s/kimg",
                         *(f"{k} {m[k]:.3f}" for k in ("loss/G", "loss/D", "loss/r1", "loss/pl", "loss/eq", "aug_p")
                           if k in m)]
                if m.get("gpu_mem_gb"):
                    parts.append(f"gpumem {m['gpu_mem_gb']:.2f} GB")
                bar.write("  ".join(parts))
        try:
            result = train(opts, progress=show, cancel=stop.token)
        except Cancelled as exc:
            if rank0:
                snap = getattr(exc, "snapshot", None)
                print(f"stopped ({stop.reason}); last snapshot: {snap}; continue with --resume latest")
            return 0 if stop.reason == "time limit" else 130
    if rank0:
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"trained to {result.kimg:.3f} kimg; last snapshot: {result.snapshot}")
    return 0


class StopRequests:
    """Turns Ctrl+C, SIGTERM and the --minutes limit into a cancel that first writes a snapshot.

    A second Ctrl+C interrupts at once, as usual.
    """

    def __init__(self, minutes: float | None):
        self.token = CancelToken()
        self.reason = ""
        self.minutes = minutes
        self._timer: threading.Timer | None = None
        self._previous: dict[int, Any] = {}

    def _request(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason
        self.token.cancel()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # the next one acts at once
        print(f"\n{signal.Signals(signum).name}: stopping after this step and writing a snapshot ...",
              file=sys.stderr)
        self._request(signal.Signals(signum).name)

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._on_signal)
        if self.minutes is not None:
            self._timer = threading.Timer(self.minutes * 60, self._request, args=("time limit",))
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a network on an image folder (like NVIDIA's train.py)",
                       description="Fine-tune a network on a folder or dataset zip, or train one from scratch. "
                                   "Options mean what they mean in NVIDIA's train.py (except that --kimg takes "
                                   "fractions); several GPUs: run it under torchrun --nproc_per_node=N.")
    p.add_argument("--outdir", required=True, help="folder for snapshots and sample grids")
    p.add_argument("--data", required=True, help="image folder (searched recursively) or dataset zip")
    p.add_argument("--cfg", choices=("stylegan2", "stylegan3-t", "stylegan3-r"),
                   help="architecture when training from scratch (default stylegan2); a --resume network keeps its own")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs (processes under torchrun; default 1)")
    p.add_argument("--batch", type=int, help="total batch size (default 32)")
    p.add_argument("--gamma", type=float, help="R1 weight (default: 0.0002 * resolution^2 / batch)")
    p.add_argument("--kimg", type=float,
                   help="train until this many thousand images, fractions allowed (default 25000)")
    p.add_argument("--tick", type=float, help="kimg between progress lines (default 4)")
    p.add_argument("--snap", type=float, help="ticks between snapshots, as NVIDIA (default 50, i.e. 200 kimg)")
    p.add_argument("--mirror", type=_flag, nargs="?", const=True, help="add x-flipped images (--mirror=1)")
    p.add_argument("--aug", choices=("ada", "noaug", "fixed"), help="augmentation (default ada)")
    p.add_argument("--p", type=float, help="augmentation probability for --aug fixed (default 0.2)")
    p.add_argument("--target", type=float, help="ADA target for the sign of D(real) (default 0.6)")
    p.add_argument("--resume", help="network to fine-tune (.pkl/.safetensors), a run folder, or 'latest' "
                                    "(the newest snapshot in --outdir); default: train from scratch")
    p.add_argument("--glr", type=float, help="G learning rate (default 0.002 StyleGAN2, 0.0025 StyleGAN3)")
    p.add_argument("--dlr", type=float, help="D learning rate (default 0.002)")
    p.add_argument("--cbase", type=int, help="channel base, scratch networks and a fresh D (default 32768)")
    p.add_argument("--cmax", type=int, help="maximum channels (default 512)")
    p.add_argument("--map", type=int, help="mapping layers from scratch (default 2; 8 for StyleGAN2 at 512 px+)")
    p.add_argument("--mbstd-group", dest="mbstd_group", type=int, help="minibatch-stddev group size (default 4)")
    p.add_argument("--freezed", type=int, help="freeze this many of D's first layers (default 0)")
    p.add_argument("--cond", type=_flag, nargs="?", const=True, help="scratch: conditional on dataset.json labels")
    p.add_argument("--resolution", type=int, help="output size when training from scratch")
    p.add_argument("--fit", choices=("crop", "pad"), help="make images square by centre crop or padding (default crop)")
    p.add_argument("--minutes", type=float, metavar="M", help="stop after M minutes, writing a snapshot first "
                                                             "(Ctrl+C and SIGTERM do the same); resume with --resume latest")
    p.add_argument("--eq-rot", dest="eq_rot", type=float, metavar="W",
                   help="StyleGAN3: weight of a loss that makes turning the input turn the picture (default 0, off)")
    p.add_argument("--turn-fakes", dest="turn_fakes", type=_flag, nargs="?", const=True,
                   help="StyleGAN3: draw every fake with a random input turn, so D judges turned pictures "
                        "(--turn-fakes=1; only for data with every angle, like toyfaces --variant rotated)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", help="auto (CUDA when available; default), cpu, cuda or cuda:N")
    p.add_argument("--no-cache", dest="cache", action="store_const", const=False,
                   help="do not cache the prepared images")
    p.set_defaults(func=cmd_finetune)


# ---------------------------------------------------------------------------------------------
# blend (model blending; engine/blending.py)

def cmd_blend(args: argparse.Namespace) -> int:
    from engine.blending import blend_files

    output = Path(args.output)
    if output.suffix != ".safetensors":
        raise StyleDeckError(f"--output {output} must end in .safetensors (a StyleDeck checkpoint).")
    if output.resolve() in (Path(args.base).resolve(), Path(args.tuned).resolve()):
        raise StyleDeckError(f"--output {output} is one of the inputs; choose another name.")
    output.parent.mkdir(parents=True, exist_ok=True)
    result = blend_files(args.base, args.tuned, output, split=args.split, width=args.width)
    print("tuned share per block (0 = base, 1 = tuned):")
    print("  " + "  ".join(f"{name} {t:.2f}" for name, t in zip(result.blocks, result.weights)))
    print(f"wrote {result.path}")
    return 0


# ---------------------------------------------------------------------------------------------
# make-dataset (procedural training images; engine/datasets)

def cmd_make_dataset(args: argparse.Namespace) -> int:
    from engine.datasets.toyfaces import make_dataset

    with progress_bar(args.count, args.kind) as advance:
        out = make_dataset(args.out, args.count, args.resolution, seed=args.seed, variant=args.variant,
                           progress=advance)
    print(f"wrote {args.count} {args.kind} image{'s' if args.count != 1 else ''} of {args.resolution} px "
          f"({args.variant}, seed {args.seed}) to {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# project (a photo into W / W+; engine/projector.py)

def cmd_project(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from engine.photo import PHOTO_SUFFIXES, prepare_photo
    from engine.projector import ProjectionOptions, project, save_projection
    from engine.pti import PTIOptions

    given = {f.name: getattr(args, f.name) for f in fields(ProjectionOptions) if getattr(args, f.name, None) is not None}
    if args.save_video:
        given["preview_every"] = 1                                       # NVIDIA's video has every step
    opts = ProjectionOptions(**given)
    pti = PTIOptions(compare=args.pti_compare,
                     **{name: value for name, value in (("steps", args.pti_steps), ("lr", args.pti_lr),
                                                        ("rank", args.pti_rank)) if value is not None})
    target = Path(args.target)
    if target.is_dir():                                                  # batch: one subfolder per photo
        photos = sorted(p for p in target.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
        if not photos:
            raise StyleDeckError(f"{target} holds no photos ({', '.join(PHOTO_SUFFIXES)}).")
        jobs = [(p, Path(args.outdir) / p.stem) for p in photos]
    elif target.exists():
        jobs = [(target, Path(args.outdir))]
    else:
        raise StyleDeckError(f"The target {target} does not exist; give a photo or a folder of photos.")
    _, _, G = load_generator(args)
    failures = 0
    for path, outdir in jobs:
        try:
            photo = prepare_photo(path, G.img_resolution, fit=args.fit, channels=G.img_channels, align=args.align)
        except StyleDeckError as exc:
            if len(jobs) == 1:
                raise
            print(f"error: {exc} Skipped.", file=sys.stderr)
            failures += 1
            continue
        if photo.note:
            print(f"note: {photo.note}", file=sys.stderr)
        image = photo.image
        frames: list[np.ndarray] = []
        with progress_bar(opts.num_steps, f"projecting {path.name}", unit="step") as advance, _translate_oom():
            def show(event: Progress) -> None:
                advance(event)
                if args.save_video and event.preview is not None:
                    frames.append(event.preview)
            result = project(G, image, opts, progress=show)
        written = save_projection(outdir, result, image, video_frames=frames if args.save_video else None)
        print(f"{path.name}: wrote {', '.join(p.name for p in written.values())} to {outdir} "
              f"({'aligned face, ' if photo.aligned else ''}{result.loss_used} loss {result.losses[-1]:.4f})")
        if args.pti or args.pti_compare:
            _pivotal_tune_projection(G, result, image, opts, pti, outdir)
    return 1 if failures else 0


def _pivotal_tune_projection(G: torch.nn.Module, result: Any, image: np.ndarray, opts: Any, pti: Any,
                             outdir: Path) -> None:
    """--pti: tune a low-rank delta of G around the projected ws, write it and its image, report its PSNR
    (against full tuning too with --pti-compare)."""
    from dataclasses import replace

    from engine.projector import lpips_loss
    from engine.pti import save_delta, tune_projection

    # PTI follows the projection's loss: LPIPS (+ MSE, as the PTI paper) when it ran, MSE otherwise.
    loss_fn = lpips_loss(opts, next(G.parameters()).device) if result.loss_used == "lpips" else None
    pti = replace(pti, loss="lpips" if loss_fn is not None else "pixel")
    with progress_bar(pti.total_steps, "pivotal tuning", unit="step") as advance, _translate_oom():
        tuned = tune_projection(G, result.ws, image, pti, loss_fn=loss_fn, progress=advance)
    delta_path = save_delta(outdir / "pti_delta.safetensors", tuned.delta)
    save_png(outdir / "proj_pti.png", tuned.image)
    hint = "" if pti.compare else "; --pti-compare adds full tuning to compare against"
    print(f"pivotal tuning ({pti.steps} steps, {pti.loss} loss): wrote {delta_path.name} and proj_pti.png; "
          f"{tuned.report.summary()}{hint}")


# ---------------------------------------------------------------------------------------------
# video (animations; engine/video.py)

def _grid_size(text: str) -> tuple[int, int]:
    """NVIDIA's --grid syntax: "4x2" or "4,2" -> (columns, rows)."""
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) == 2 and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return int(parts[0]), int(parts[1])
    raise argparse.ArgumentTypeError(f"expected columns x rows like 2x2; got {text!r}")


def _video_size(text: str) -> tuple[int, int] | int:
    from engine.video_encode import parse_size
    try:
        return parse_size(text)
    except StyleDeckError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_video(args: argparse.Namespace) -> int:
    from engine.renderer import Renderer
    from engine.video import Motion, export_animation, keyframe_spec
    from engine.video_encode import EncodeOptions

    if args.angles is not None and (args.turns is not None or args.rotate):
        raise StyleDeckError("--angles sets the start and end angle; give it without --turns or --rotate.")
    start_angle = args.angles[0] if args.angles is not None else args.rotate
    turned = (args.angles[1] - args.angles[0]) if args.angles is not None else 360.0 * (args.turns or 0.0)
    motion = Motion(origin=(start_angle, *args.translate), rotate=turned, path=args.path, shift=args.shift,
                    radius=args.radius, cycles=args.cycles)
    _, _, G = load_generator(args)
    class_to_c(args.class_idx, G.c_dim)                                   # a clear error before any work
    _warn_unused_class(G, args)
    spec = keyframe_spec(args.seeds, grid=args.grid, num_keyframes=args.num_keyframes, w_frames=args.w_frames,
                         shuffle_seed=args.shuffle_seed, class_idx=args.class_idx,
                         interpolation=args.interpolation, easing=args.easing, loop=args.loop, motion=motion,
                         psi=args.trunc, cutoff=args.trunc_cutoff, noise_mode=args.noise_mode)
    if args.frames is not None or args.duration is not None or not args.loop:
        from dataclasses import replace
        segments = spec.num_keyframes if args.loop else max(spec.num_keyframes - 1, 1)
        frames = args.frames if args.frames is not None else (
            round(args.duration * args.fps) if args.duration is not None else segments * args.w_frames)
        spec = replace(spec, num_frames=frames)
    renderer = Renderer(G, next(G.parameters()).device)
    size = args.size
    if isinstance(size, int):                                             # the longer side; keep the aspect
        cols, rows = spec.grid
        scale = size / (G.img_resolution * max(cols, rows))
        size = (max(1, round(G.img_resolution * cols * scale)), max(1, round(G.img_resolution * rows * scale)))
    opts = EncodeOptions(fps=args.fps, format=args.format, size=size, quality=args.quality, bitrate=args.bitrate,
                         loop=args.repeat)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with progress_bar(spec.num_frames, "rendering", unit="frame") as advance:
        result = export_animation(renderer, spec, output, opts, batch=args.batch, progress=advance)
    total = result.render_s + result.encode_s
    print(f"wrote {result.num_frames} frames ({result.size[0]}x{result.size[1]}, {result.fps:g} fps, {result.format}) "
          f"to {result.path}; render {result.render_s:.1f} s, encode {result.encode_s:.1f} s "
          f"({result.num_frames / max(total, 1e-9):.1f} frames/s)")
    return 0


def _add_video(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("video", help="render an animation: latent loops, StyleGAN3 rotation and translation "
                                     "(like NVIDIA's gen_video.py)",
                       description="Render a looping interpolation through seed keyframes (options as NVIDIA's "
                                   "gen_video.py: each grid cell loops through --num-keyframes seeds, --w-frames "
                                   "frames apart), optionally turned and moved through a StyleGAN3 network's input "
                                   "transform, to mp4, gif, webp or a folder of PNG frames.")
    _add_network(p)
    p.add_argument("--seeds", type=_range_list, required=True, help="keyframe seeds, e.g. 0-31")
    p.add_argument("--shuffle-seed", dest="shuffle_seed", type=int, default=None, help="shuffle the seeds with this seed")
    p.add_argument("--grid", type=_grid_size, default=(1, 1), metavar="WxH", help="grid of loops, e.g. 2x2 (default 1x1)")
    p.add_argument("--num-keyframes", dest="num_keyframes", type=int, default=None,
                   help="keyframes per cell; the seeds repeat to fill (default: len(seeds) / cells)")
    p.add_argument("--w-frames", dest="w_frames", type=int, default=120, help="frames between keyframes (default 120)")
    _add_latent_options(p)
    p.add_argument("--output", required=True, metavar="PATH",
                   help="lerp.mp4, .gif, .webp, or a folder name for PNG frames")
    p.add_argument("--interpolation", choices=("cubic", "linear", "spherical"), default="cubic",
                   help="how W moves between keyframes: cubic spline (gen_video.py's; default), linear, or "
                        "spherical about w_avg")
    p.add_argument("--easing", choices=("linear", "smooth"), default="linear",
                   help="smooth: ease in and out at each keyframe and at the ends of the motion")
    p.add_argument("--no-loop", dest="loop", action="store_false",
                   help="go from the first keyframe to the last once instead of looping back")
    p.add_argument("--frames", type=int, default=None, help="total frames (default: keyframe segments x --w-frames)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="length in seconds (frames = S x fps)")
    p.add_argument("--rotate", type=float, default=0.0, metavar="DEG", help="StyleGAN3: starting rotation in degrees")
    p.add_argument("--translate", type=_vec2, default=(0.0, 0.0), metavar="X,Y",
                   help="StyleGAN3: starting translation in image widths")
    p.add_argument("--turns", type=float, default=None, help="StyleGAN3: full turns over the animation, e.g. 1")
    p.add_argument("--angles", type=_vec2, default=None, metavar="FROM,TO",
                   help="StyleGAN3: rotate from FROM to TO degrees over the animation")
    p.add_argument("--path", choices=("none", "line", "circle", "figure8"), default="none",
                   help="StyleGAN3: translation path (default none)")
    p.add_argument("--shift", type=_vec2, default=(0.0, 0.0), metavar="X,Y",
                   help="--path line: offset reached at the end, in image widths (a loop comes back)")
    p.add_argument("--radius", type=float, default=0.1, help="--path circle/figure8: size in image widths (default 0.1)")
    p.add_argument("--cycles", type=int, default=1, help="--path circle/figure8: times round (default 1)")
    p.add_argument("--format", choices=("mp4", "gif", "webp", "png"), default=None,
                   help="output format (default: from the --output suffix)")
    p.add_argument("--fps", type=float, default=60.0, help="frames per second (default 60, as gen_video.py)")
    p.add_argument("--size", type=_video_size, default=None, metavar="WxH|N",
                   help="output size, or one number for the longer side (default: as rendered)")
    p.add_argument("--quality", type=float, default=8.0, help="0-10: mp4 CRF, webp quality (default 8)")
    p.add_argument("--bitrate", default=None, help="mp4: fixed bitrate instead of --quality, e.g. 16M")
    p.add_argument("--repeat", type=int, default=0, help="gif/webp: times to play, 0 = for ever (default)")
    p.add_argument("--batch", type=int, default=8, help="frames rendered per network call (default 8)")
    p.set_defaults(func=cmd_video)


# ---------------------------------------------------------------------------------------------
# Parser and entry point

def _add_network(p: argparse.ArgumentParser, device: bool = True) -> None:
    p.add_argument("--network", metavar="PATH",
                   help="NVIDIA network pickle (.pkl) or StyleDeck checkpoint (.safetensors); "
                        "default: the network bundled in models/")
    if device:
        p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")


def _add_latent_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trunc", dest="trunc", type=float, default=1.0, metavar="PSI",
                   help="truncation psi: w_avg + psi (w - w_avg); 1 is off (default 1)")
    p.add_argument("--trunc-cutoff", dest="trunc_cutoff", type=_count, default=None, metavar="N",
                   help="truncate only the first N ws layers (default: all)")
    p.add_argument("--class", dest="class_idx", type=int, default=None, metavar="IDX",
                   help="class label for a conditional network")
    p.add_argument("--noise-mode", dest="noise_mode", choices=NOISE_MODES, default="const",
                   help="per-pixel noise: const (fixed, default), random or none")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py", description="StyleDeck: explore and edit the latent space of StyleGAN2/3 networks.",
        epilog="Run 'main.py <command> --help' for a command's options.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (and tracebacks) to stderr")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    p = sub.add_parser("info", help="describe a network: family, resolution, layers, parameters",
                       description="Describe a network: family, resolution, ws layers and their groups, "
                                   "parameter counts, conditional or not.")
    _add_network(p, device="cpu")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="render seeds to PNGs (like NVIDIA's gen_images.py)",
                       description="Render one PNG per seed, named seedNNNN.png, as NVIDIA's gen_images.py.")
    _add_network(p)
    p.add_argument("--seeds", type=_range_list, required=True, help="seeds, e.g. 0-3,7")
    _add_latent_options(p)
    p.add_argument("--translate", type=_vec2, default=(0.0, 0.0), metavar="X,Y",
                   help="StyleGAN3: translate the image (in image widths), e.g. 0.3,1")
    p.add_argument("--rotate", type=float, default=0.0, metavar="DEG", help="StyleGAN3: rotation in degrees")
    p.add_argument("--outdir", default="out", help="folder for the PNGs (default: out)")
    p.add_argument("--grid", action="store_true", help="also write all seeds as one grid.png")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("mix", help="style-mixing grid (like NVIDIA's style_mixing.py)",
                       description="Each row seed takes the styles of each column seed on the chosen layers; "
                                   "writes ROW-COL.png per pair, SEED-SEED.png per seed and grid.png.")
    _add_network(p)
    p.add_argument("--rows", type=_range_list, required=True, help="row seeds (the base faces), e.g. 0-3")
    p.add_argument("--cols", type=_range_list, required=True, help="column seeds (the styles), e.g. 4-7")
    p.add_argument("--styles", default="0-6",
                   help="ws layers the column seeds give: a group (coarse, middle, fine), indices like 0-6, "
                        "or both, e.g. coarse,8 (default 0-6, as NVIDIA)")
    _add_latent_options(p)
    p.add_argument("--outdir", default="out", help="folder for the PNGs (default: out)")
    p.set_defaults(func=cmd_mix)

    p = sub.add_parser("convert", help="convert a network to a StyleDeck checkpoint or rosinality .pt",
                       description="Convert a network file: to StyleDeck's native checkpoint (.safetensors), "
                                   "or with --format rosinality to a rosinality stylegan2-pytorch .pt.")
    _add_network(p, device=None)
    p.add_argument("--output", metavar="PATH", help="file to write (default: beside the input, new suffix)")
    p.add_argument("--format", choices=("native", "rosinality"), default="native",
                   help="native (.safetensors, default) or rosinality (.pt, StyleGAN2 only)")
    p.add_argument("--keep", metavar="NAMES", help="networks to write, comma-separated (e.g. G_ema,D; default all)")
    p.add_argument("--half", action="store_true", help="store the weights as float16 (half the file size)")
    p.add_argument("--training-info", metavar="JSON", help="a JSON file of facts about the run (dataset, time, "
                                                           "machine, ...) to record with the training metadata")
    p.set_defaults(func=cmd_convert)

    _add_finetune(sub)

    p = sub.add_parser("blend", help="blend a fine-tuned network with its base, coarse layers from the base",
                       description="Make a network whose coarse layers come from the base and fine layers from "
                                   "the tuned network, with a smooth transition; writes a StyleDeck checkpoint.")
    p.add_argument("--base", required=True, metavar="PATH", help="the network the tuned one started from")
    p.add_argument("--tuned", required=True, metavar="PATH", help="the fine-tuned network")
    p.add_argument("--split", type=float, default=0.5,
                   help="share of the blocks, coarse first, taken from the base: 0 all tuned, 1 all base "
                        "(default 0.5)")
    p.add_argument("--width", type=float, default=0.1,
                   help="width of the transition around the split, as a share of the blocks (default 0.1; "
                        "0 switches at once)")
    p.add_argument("--output", required=True, metavar="PATH", help="checkpoint to write (.safetensors)")
    p.set_defaults(func=cmd_blend)

    p = sub.add_parser("make-dataset", help="draw a procedural training dataset (toy cartoon faces)",
                       description="Draw a procedural dataset in the layout of NVIDIA's dataset_tool.py: a folder "
                                   "(or a .zip) of 00000/img00000000.png, ... and dataset.json. Image i of seed S "
                                   "is always the same picture.")
    p.add_argument("kind", choices=("toyfaces",), help="what to draw: toyfaces (parametric cartoon faces)")
    p.add_argument("--out", required=True, metavar="PATH", help="folder to create (absent or empty), or a .zip")
    p.add_argument("--count", type=_count, required=True, metavar="N", help="number of images")
    p.add_argument("--resolution", type=_count, required=True, metavar="R", help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--variant", choices=("upright", "rotated"), default="upright",
                   help="upright faces, or rotated: the whole picture turned and shifted at random, "
                        "for StyleGAN3 (default upright)")
    p.set_defaults(func=cmd_make_dataset)

    p = sub.add_parser("project", help="find the latent of a photo (like NVIDIA's projector.py)",
                       description="Optimise a latent so the network reproduces a photo; writes proj.png, "
                                   "target.png, projected_w.npz (key w, [1, num_ws, w_dim]) and proj.mp4 as "
                                   "NVIDIA's projector.py. A folder of photos gives one subfolder per photo.")
    _add_network(p)
    p.add_argument("--target", required=True, metavar="PATH", help="photo (any size; see --fit) or folder of photos")
    p.add_argument("--num-steps", dest="num_steps", type=int, help="optimisation steps (default 1000)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--save-video", dest="save_video", type=_flag, nargs="?", const=True, default=True,
                   help="write proj.mp4 of the optimisation, target beside projection (default 1, as NVIDIA)")
    p.add_argument("--outdir", default="out", help="folder for the outputs (default: out)")
    p.add_argument("--mode", choices=("w", "w+"), help="one w for all layers (w, default) or one per layer (w+)")
    p.add_argument("--loss", choices=("lpips", "pixel"),
                   help="lpips (VGG16; default) or pixel (MSE + MS-SSIM, no download needed)")
    p.add_argument("--lpips-weights", dest="lpips_weights", metavar="PATH",
                   help="torchvision's VGG16 weights file (vgg16-397923af.pth) when it is not in torch.hub's cache")
    p.add_argument("--fit", choices=("crop", "pad"), default="crop",
                   help="make the photo square by a centred crop (default) or white padding")
    p.add_argument("--align", action="store_true",
                   help="FFHQ-style face crop from eye and mouth landmarks (dlib); without a detector or a face, "
                        "--fit is used and a note says so")
    p.add_argument("--w-plus-from", dest="w_plus_from", type=float, metavar="SHARE",
                   help="w+ mode: share of the steps run in w first, so the layers start from one w (default 0)")
    p.add_argument("--pti", action="store_true",
                   help="then pivotal tuning: train a low-rank change of the network around the latent and write "
                        "it, pti_delta.safetensors (a few MB, for this network only), and its image, proj_pti.png")
    p.add_argument("--pti-steps", dest="pti_steps", type=int, metavar="N", help="pivotal-tuning steps (default 350)")
    p.add_argument("--pti-lr", dest="pti_lr", type=float, metavar="LR",
                   help="pivotal-tuning learning rate (default 3e-4)")
    p.add_argument("--pti-rank", dest="pti_rank", type=int, metavar="R",
                   help="rank of the trained delta per weight tensor (default 8)")
    p.add_argument("--pti-compare", dest="pti_compare", action="store_true",
                   help="implies --pti; also tune the whole network (not stored), to report the compact delta's "
                        "PSNR against full tuning (twice the time)")
    p.set_defaults(func=cmd_project)

    _add_video(sub)
    return parser


def _drop_interrupted_frames(exc: BaseException) -> None:
    """Free what the interrupted frames held, with 'Exception ignored' reports silenced meanwhile.

    Ctrl+C can land inside a library's constructor (imageio's PNG writer, say); the half-built object's
    finalizer then fails when the traceback goes, and Python prints that as a traceback after our
    'stopped'. It is noise about an object we are abandoning anyway, so it is not shown.
    """
    previous = sys.unraisablehook
    sys.unraisablehook = lambda _unraisable: None
    try:
        exc.__traceback__ = None
        gc.collect()
    finally:
        sys.unraisablehook = previous


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0, 1 error, 2 usage, 130 stopped)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        with _sigint_flag():
            return args.func(args)
    except (Cancelled, KeyboardInterrupt) as exc:
        if isinstance(exc, KeyboardInterrupt):
            _drop_interrupted_frames(exc)
        print("stopped", file=sys.stderr)
        return 130
    except StyleDeckError as exc:
        log.debug("details", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the CLI boundary: a bug, not a user error; keep the traceback
        log.exception("unexpected failure")
        print(f"error: unexpected failure ({type(exc).__name__}: {exc}); the traceback above has the details.",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
