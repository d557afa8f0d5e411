"""Projection speed: one optimisation step and a whole run (1000 steps by default) for StyleGAN2 and
StyleGAN3-T, in W and W+ mode, with LPIPS and with the pixel loss.

Random networks in NVIDIA's configurations (generator_speed.py's: z/w 512, StyleGAN2 config F with
8 mapping layers, StyleGAN3-T with 2); the weights do not change the work. LPIPS runs on a randomly
initialised VGG16 (`lpips_random_backbone`): the same arithmetic as ImageNet's weights, with
nothing to download.

    python bench/projection_speed.py                              # CUDA: 256 and 1024 px, 1000 steps measured
    python bench/projection_speed.py --device cpu                 # CPU: 64 and 128 px, 4 steps, channels <= 128
    python bench/projection_speed.py --steps 100 --extrapolate    # also estimate 1000 steps from 100 measured

Each row times `engine.project` end to end: setup (w_avg from 10000 mapped z, LPIPS built),
the median step (forward, loss, backward, Adam; CUDA synchronised by the loss read every step),
and the measured run of --steps steps. Only with --extrapolate is a 1000-step time estimated from
the median step (marked "est."). The ratio is each row's median step against the first of --configs
(W mode with LPIPS by default) for the same network and size, timed in the same run. Target (issue 7): 1000 W-mode steps of a
1024 px StyleGAN2 in under 20 s on an H100.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from generator_speed import ARCHS, COMMON, sync  # noqa: E402  (bench/ is this script's folder)

from engine.projector import ProjectionOptions, project  # noqa: E402

CONFIGS = "w:lpips,w+:lpips,w:pixel"   # mode:loss pairs; the first is every row's baseline
TARGET_STEPS = 1000


def make_generator(arch: str, resolution: int, channel_max: int, device: torch.device) -> torch.nn.Module:
    _, cls, kwargs = ARCHS[arch]
    torch.manual_seed(0)
    kwargs = {**kwargs, "channel_max": min(channel_max, kwargs["channel_max"])}
    return cls(img_resolution=resolution, **COMMON, **kwargs).eval().requires_grad_(False).to(device)


def time_projection(G: torch.nn.Module, target: np.ndarray, opts: ProjectionOptions,
                    device: torch.device) -> tuple[float, float, float]:
    """(setup s, median step s, measured steps s) of one engine.project run."""
    stamps: list[float] = []

    def progress(event) -> None:
        if event.step > 0:                                       # step 0 is a message, not a step
            sync(device)
            stamps.append(time.perf_counter())

    sync(device)
    start = time.perf_counter()
    project(G, target, opts, progress=progress, device=device)
    steps = np.diff([start] + stamps)                            # [num_steps]: the first includes setup
    median = statistics.median(steps[1:]) if len(steps) > 1 else float(steps[0])
    setup = max(0.0, float(steps[0] - median))                   # the first step's extra time
    return setup, median, float(stamps[-1] - start - setup)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda[:N]")
    p.add_argument("--sizes", help="resolutions, comma separated (default: 256,1024 on CUDA, 64,128 on CPU)")
    p.add_argument("--archs", default="sg2,sg3t", help="architectures from sg2,sg3t,sg3r (default sg2,sg3t)")
    p.add_argument("--steps", type=int,
                   help=f"steps per run, all measured (default: {TARGET_STEPS} on CUDA, 10 on CPU)")
    p.add_argument("--cmax", type=int,
                   help="cap on channels (default: NVIDIA's 512 on CUDA; 128 on CPU, where 512 takes ~1 s a step)")
    p.add_argument("--configs", default=CONFIGS,
                   help=f"mode:loss pairs to time, the first the ratios' baseline (default {CONFIGS})")
    p.add_argument("--extrapolate", action="store_true",
                   help=f"also estimate {TARGET_STEPS} steps from the median measured step")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    sizes = [int(s) for s in (args.sizes or ("256,1024" if cuda else "64,128")).split(",")]
    steps = args.steps or (TARGET_STEPS if cuda else 4)
    cmax = args.cmax or (512 if cuda else 128)
    if steps < 2:
        raise SystemExit("--steps must be at least 2 (the first step also carries the setup)")
    configs = [tuple(pair.split(":")) for pair in args.configs.split(",")]
    if not configs or any(len(c) != 2 or c[0] not in ("w", "w+") or c[1] not in ("lpips", "pixel") for c in configs):
        raise SystemExit(f"--configs {args.configs!r}: give mode:loss pairs, mode w or w+, loss lpips or pixel")
    where = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or 'CPU'}, " \
                                                             f"{torch.get_num_threads()} threads"
    print(f"# projection speed on {device} ({where}); torch {torch.__version__}; {steps} steps per run; "
          f"channel_max {cmax}")
    total_col = f"{TARGET_STEPS} steps s" if steps == TARGET_STEPS else f"{steps} steps s"
    header = f"{'network':<12} {'px':>5} {'mode':<4} {'loss':<6} {'setup s':>8} {'step ms':>9} {total_col:>12}"
    header += f" {'1000 est. s':>12}" if args.extrapolate else ""
    print(header + f" {'ratio':>6}")
    for arch in args.archs.split(","):
        for size in sizes:
            G = make_generator(arch, size, cmax, device)
            target = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
            baseline = None
            for mode, loss in configs:
                opts = ProjectionOptions(num_steps=steps, mode=mode, loss=loss, lpips_random_backbone=True,
                                         preview_every=0)
                setup, step, total = time_projection(G, target, opts, device)
                baseline = baseline or step
                row = (f"{ARCHS[arch][0]:<12} {size:>5} {mode:<4} {loss:<6} {setup:>8.2f} {step * 1e3:>9.1f} "
                       f"{total:>12.2f}")
                row += f" {step * TARGET_STEPS:>12.1f}" if args.extrapolate else ""
                print(row + f" {step / baseline:>6.2f}", flush=True)
            del G
            if cuda:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
