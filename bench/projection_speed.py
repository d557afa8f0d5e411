"""Projection speed: one optimisation step and a whole run (1000 steps by default) for StyleGAN2 and
StyleGAN3-T, in W and W+ mode, with LPIPS and with the pixel loss.

Random networks in NVIDIA's configurations (generator_speed.py's: z/w 512, StyleGAN2 config F with
8 mapping layers, StyleGAN3-T with 2); the weights do not change the work. LPIPS runs on a randomly
initialised VGG16 (`lpips_random_backbone`): the same arithmetic as ImageNet's weights, with
nothing to download.

    python bench/projection_speed.py                              # CUDA: 256 and 1024 px, 1000 steps measured
    python bench/projection_speed.py --device cpu                 # CPU: 64 and 128 px, 4 steps, channels <= 128
    python bench/projection_speed.py --steps 100 --extrapolate    # also estimate 1000 steps from 100 measured

Each row times `engine.project` end to end: setup (w_avg from 10000 mapped z, LPIPS built, and
the steps before the first loss read, cuDNN's algorithm search among them), the mean step after it
(forward, loss, backward, Adam; engine.project reads the losses from the GPU ten steps at a time),
and the measured run of --steps steps. Only with --extrapolate is a 1000-step time estimated from
the mean step (marked "est."). The baseline row, "NVIDIA-style", runs W mode with LPIPS (the
target's configuration) in a loop shaped as NVIDIA's projector.py: each noise map regularised on
its own, the loss read back (a wait for the GPU) every step. The same generator and LPIPS run in
both, so the ratio (baseline step over the row's step, higher is faster) is the loop's own gain.
Target (issue 7): 1000 W-mode steps of a 1024 px StyleGAN2 in under 20 s on an H100.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from generator_speed import ARCHS, COMMON, sync  # noqa: E402  (bench/ is this script's folder)

from engine.projector import (ProjectionOptions, _for_lpips, _learning_rate, _loss_read_every,  # noqa: E402
                              _lpips_model, _target_tensor, _w_stats, project)

CONFIGS = "w:lpips,w+:lpips,w:pixel"   # mode:loss pairs of engine.project to time
TARGET_STEPS = 1000


def make_generator(arch: str, resolution: int, channel_max: int, device: torch.device) -> torch.nn.Module:
    _, cls, kwargs = ARCHS[arch]
    torch.manual_seed(0)
    kwargs = {**kwargs, "channel_max": min(channel_max, kwargs["channel_max"])}
    return cls(img_resolution=resolution, **COMMON, **kwargs).eval().requires_grad_(False).to(device)


def nvidia_style_project(G: torch.nn.Module, target_uint8: np.ndarray, opts: ProjectionOptions, *,
                         progress: Callable[[Any], None], device: torch.device) -> None:
    """The baseline: engine.project's W-mode LPIPS optimisation in the loop shape of NVIDIA's
    projector.py: latent noise drawn on the device, each noise map's pyramid regularised map by map,
    the loss read back every step (NVIDIA prints it), the maps renormalised one by one."""
    target = _for_lpips(_target_tensor(target_uint8, G, device))
    gen = torch.Generator().manual_seed(opts.seed)
    lpips_model, _ = _lpips_model(opts, device)
    w_avg, w_std = _w_stats(G, opts, gen, device)
    w_opt = w_avg.clone().requires_grad_(True)                               # [1, 1, w_dim]
    bufs = {name: torch.randn(buf.shape, generator=gen).to(device).requires_grad_(True)
            for name, buf in G.synthesis.named_buffers() if name.endswith("noise_const")}
    optimizer = torch.optim.Adam([w_opt, *bufs.values()], betas=(0.9, 0.999), lr=opts.initial_lr)
    for step in range(opts.num_steps):
        t = step / opts.num_steps
        noise_scale = w_std * opts.initial_noise_factor * max(0.0, 1.0 - t / opts.noise_ramp_length) ** 2
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(opts, t)
        ws = (w_opt + torch.randn_like(w_opt) * noise_scale).repeat(1, G.num_ws, 1)
        img = functional_call(G.synthesis, bufs, (ws,), {"noise_mode": "const"}).float()
        dist = lpips_model(_for_lpips(img), target).sum()
        reg = dist.new_zeros([])
        for buf in bufs.values():
            v = buf[None, None]
            while True:
                reg = reg + (v * torch.roll(v, shifts=1, dims=3)).mean() ** 2
                reg = reg + (v * torch.roll(v, shifts=1, dims=2)).mean() ** 2
                if v.shape[2] <= 8:
                    break
                v = F.avg_pool2d(v, kernel_size=2)
        loss = dist + opts.regularize_noise_weight * reg
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()                                                          # NVIDIA logs every step
        with torch.no_grad():
            for buf in bufs.values():
                buf -= buf.mean()
                buf *= buf.square().mean().rsqrt()
        progress(SimpleNamespace(step=step + 1))


def time_projection(run: Callable[..., Any], G: torch.nn.Module, target: np.ndarray, opts: ProjectionOptions,
                    device: torch.device, read_every: int) -> tuple[float, float, float]:
    """(setup s, mean step s, measured steps s) of one run of `run` (engine.project or the baseline).

    A run that reads its losses from the device every `read_every` steps delivers its progress events in
    batches, all after the batch's last step; so the clock is read at the event of step k = read_every
    (the first batch's last step, done when it arrives) and at the event of the last step N. A step is
    the time between the two over N - k; setup is the time to step k less k steps.
    """
    stamps: dict[int, float] = {}

    def progress(event) -> None:
        if event.step > 0:                                       # step 0 is a message, not a step
            sync(device)
            stamps[event.step] = time.perf_counter()

    sync(device)
    start = time.perf_counter()
    run(G, target, opts, progress=progress, device=device)
    first, last = read_every, max(stamps)
    step = (stamps[last] - stamps[first]) / (last - first)
    setup = max(0.0, stamps[first] - start - first * step)
    return setup, step, stamps[last] - start - setup


def ops_per_step(run: Callable[..., Any], G: torch.nn.Module, target: np.ndarray, opts: ProjectionOptions,
                 device: torch.device) -> int:
    """Operators dispatched per step (each about one kernel launch and, forward, one autograd node):
    the count of a 3-step run less that of a 2-step run, both under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    counts = []
    for num_steps in (2, 3):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(G, target, replace(opts, num_steps=num_steps), progress=lambda event: None, device=device)
        counts.append(sum(1 for e in prof.events() if e.name.startswith("aten::")
                          and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))))
    return counts[1] - counts[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda[:N]")
    p.add_argument("--sizes", help="resolutions, comma separated (default: 256,1024 on CUDA, 64,128 on CPU)")
    p.add_argument("--archs", default="sg2,sg3t", help="architectures from sg2,sg3t,sg3r (default sg2,sg3t)")
    p.add_argument("--steps", type=int,
                   help=f"steps per run, all measured (default: {TARGET_STEPS} on CUDA, 4 on CPU)")
    p.add_argument("--cmax", type=int,
                   help="cap on channels (default: NVIDIA's 512 on CUDA; 128 on CPU, where 512 takes ~1 s a step)")
    p.add_argument("--configs", default=CONFIGS,
                   help=f"mode:loss pairs of engine.project to time (default {CONFIGS})")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="time the NVIDIA-style loop first, as the ratios' baseline (default on; without it, "
                        "the first of --configs is)")
    p.add_argument("--ops", action="store_true",
                   help="also count the operators each step dispatches (two more short runs per row, profiled)")
    p.add_argument("--extrapolate", action="store_true",
                   help=f"also estimate {TARGET_STEPS} steps from the mean measured step")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    sizes = [int(s) for s in (args.sizes or ("256,1024" if cuda else "64,128")).split(",")]
    steps = args.steps or (TARGET_STEPS if cuda else 4)
    cmax = args.cmax or (512 if cuda else 128)
    if steps <= _loss_read_every(device):
        raise SystemExit(f"--steps must be over {_loss_read_every(device)} here: the steps up to the first loss "
                         "read carry the setup")
    configs = [tuple(pair.split(":")) for pair in args.configs.split(",")]
    if not configs or any(len(c) != 2 or c[0] not in ("w", "w+") or c[1] not in ("lpips", "pixel") for c in configs):
        raise SystemExit(f"--configs {args.configs!r}: give mode:loss pairs, mode w or w+, loss lpips or pixel")
    where = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or 'CPU'}, " \
                                                             f"{torch.get_num_threads()} threads"
    print(f"# projection speed on {device} ({where}); torch {torch.__version__}; {steps} steps per run; "
          f"channel_max {cmax}")
    total_col = f"{TARGET_STEPS} steps s" if steps == TARGET_STEPS else f"{steps} steps s"
    header = (f"{'network':<12} {'px':>5} {'loop':<12} {'mode':<4} {'loss':<6} {'setup s':>8} {'step ms':>9} "
              f"{total_col:>12}")
    header += f" {'1000 est. s':>12}" if args.extrapolate else ""
    header += f" {'ops/step':>9}" if args.ops else ""
    print(header + f" {'x base':>6}")
    for arch in args.archs.split(","):
        for size in sizes:
            G = make_generator(arch, size, cmax, device)
            target = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
            rows = [("NVIDIA-style", "w", "lpips", nvidia_style_project, 1)] if args.baseline else []
            rows += [("StyleDeck", mode, loss, project, _loss_read_every(device)) for mode, loss in configs]
            baseline = None
            for loop, mode, loss, run, read_every in rows:
                opts = ProjectionOptions(num_steps=steps, mode=mode, loss=loss, lpips_random_backbone=True,
                                         preview_every=0)
                setup, step, total = time_projection(run, G, target, opts, device, read_every)
                baseline = baseline or step
                row = (f"{ARCHS[arch][0]:<12} {size:>5} {loop:<12} {mode:<4} {loss:<6} {setup:>8.2f} "
                       f"{step * 1e3:>9.1f} {total:>12.2f}")
                row += f" {step * TARGET_STEPS:>12.1f}" if args.extrapolate else ""
                row += f" {ops_per_step(run, G, target, opts, device):>9}" if args.ops else ""
                print(row + f" {baseline / step:>6.2f}", flush=True)
            del G
            if cuda:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
