"""Training speed: images/s, s/kimg and peak memory of engine.training.train for StyleGAN2 and StyleGAN3-T.

Each row is one run of the real training loop (`train`, ADA on, lazy R1 and path-length
regularisation as configured for the architecture) from scratch on a folder of random images,
in its own child process so that the peak memory belongs to that run alone:

- images/s: images shown per second over the timed steps (after --warmup untimed ones); the
  timed steps include the lazy regularisation steps that fall among them (path length every 4th
  G step for StyleGAN2; R1 every 16th D step, so rarely within a short run);
- s/kimg: 1000 / images/s;
- peak memory: the child's maximum resident set size (ru_maxrss) on the CPU, or
  torch.cuda.max_memory_allocated on a GPU.

Networks are NVIDIA's training configurations (channel_base 32768, channel_max 512, num_fp16_res 4,
conv_clamp 256; mapping depth as engine.training.loop.scratch_networks picks it), so on CUDA the
top resolutions train in float16 as NVIDIA's do. --cbase/--cmax shrink them (the "starter" sizes).

    python bench/training_speed.py                                    # 256 px, batch 32 on CUDA if present
    python bench/training_speed.py --device cpu --sizes 32,64,128 --batch 4
    python bench/training_speed.py --device cpu --sizes 32 --archs sg2 --cbase 8192 --cmax 256
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

ARCHS = {"sg2": ("StyleGAN2", "stylegan2"), "sg3t": ("StyleGAN3-T", "stylegan3-t")}


def make_folder(folder: Path, count: int, size: int) -> Path:
    """`count` random RGB PNGs of size x size."""
    from engine.images import save_png
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        save_png(folder / f"{i:04d}.png", rng.integers(0, 256, [size, size, 3], dtype=np.uint8))
    return folder


def run_one(arch: str, size: int, batch: int, steps: int, warmup: int, device: str, cbase: int, cmax: int,
            threads: int | None) -> dict:
    """One timed training run in this process; the measurements as a dict."""
    import torch

    from engine.loader import load_network
    from engine.training.loop import TrainOptions, train
    if threads:
        torch.set_num_threads(threads)
    per_step: list[float] = []
    mem: list[float] = []

    def record(event) -> None:
        if event.metrics and "images_per_s" in event.metrics:
            per_step.append(event.metrics["images_per_s"])
            mem.append(event.metrics.get("gpu_mem_gb", 0.0))

    with tempfile.TemporaryDirectory() as tmp:
        data = make_folder(Path(tmp) / "data", max(batch * 2, 8), size)
        total = (warmup + steps) * batch
        opts = TrainOptions(outdir=str(Path(tmp) / "run"), data=str(data), cfg=ARCHS[arch][1], resolution=size,
                            batch=batch, kimg=total / 1000, tick=batch / 1000, snap=10 ** 6, cbase=cbase,
                            cmax=cmax, device=device, cache=False, grid_size=(2, 2),
                            mbstd_group=min(4, batch))
        start = time.perf_counter()
        result = train(opts, progress=record)
        wall = time.perf_counter() - start
        nets = load_network(result.snapshot)
        G_params = sum(p.numel() for p in nets["G"].parameters())
        D_params = sum(p.numel() for p in nets["D"].parameters())
    timed = per_step[warmup:]
    # mean throughput over the timed steps: total images / total time (harmonic mean of the rates)
    images_per_s = len(timed) / sum(1 / r for r in timed) if timed else float("nan")
    if device.startswith("cuda"):
        peak = max(mem) * 2 ** 30 if mem else float("nan")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"arch": arch, "size": size, "batch": batch, "images_per_s": images_per_s,
            "s_per_kimg": 1000 / images_per_s, "peak_bytes": peak, "G_params": G_params, "D_params": D_params,
            "wall_s": wall, "steps": steps, "median_step_images_per_s": statistics.median(timed) if timed else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated resolutions (default: 256 on CUDA, 32,64,128 on CPU)")
    parser.add_argument("--archs", default="sg2,sg3t", help="comma-separated: sg2, sg3t")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 32 on CUDA, 4 on CPU)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps (default 4)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--cbase", type=int, default=32768)
    parser.add_argument("--cmax", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: arch,size
    args = parser.parse_args()

    import torch
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    batch = args.batch or (32 if on_gpu else 4)
    if args.one:
        arch, size = args.one.split(",")
        print(json.dumps(run_one(arch, int(size), batch, args.steps, args.warmup, device, args.cbase, args.cmax,
                                 args.threads)))
        return

    sizes = [int(s) for s in (args.sizes or ("256" if on_gpu else "32,64,128")).split(",")]
    where = torch.cuda.get_device_name() if on_gpu else f"{platform.processor() or platform.machine()} CPU"
    print(f"# {where}, torch {torch.__version__}, batch {batch}, {args.steps} timed steps after {args.warmup}, "
          f"cbase {args.cbase}, cmax {args.cmax}")
    print(f"{'network':<12} {'size':>5} {'G params':>9} {'D params':>9} {'img/s':>8} {'s/kimg':>9} {'peak mem':>9}")
    for arch in args.archs.split(","):
        for size in sizes:
            cmd = [sys.executable, __file__, "--one", f"{arch},{size}", "--device", device, "--batch", str(batch),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--cbase", str(args.cbase),
                   "--cmax", str(args.cmax)] + (["--threads", str(args.threads)] if args.threads else [])
            done = subprocess.run(cmd, capture_output=True, text=True)
            name = ARCHS[arch][0]
            if done.returncode != 0:
                reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
                print(f"{name:<12} {size:>5}  failed: {reason}")
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{name:<12} {size:>5} {row['G_params'] / 1e6:>8.1f}M {row['D_params'] / 1e6:>8.1f}M "
                  f"{row['images_per_s']:>8.2f} {row['s_per_kimg']:>9.0f} {row['peak_bytes'] / 2 ** 30:>8.2f}G",
                  flush=True)


if __name__ == "__main__":
    main()
