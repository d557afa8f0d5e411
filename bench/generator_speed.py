"""Generator speed: batch-1 latency and batch-8 throughput of StyleGAN2, StyleGAN3-T and StyleGAN3-R.

Random weights in NVIDIA's training configurations (the weights do not change the work done):
StyleGAN2 config F (channel_base 32768, channel_max 512, 8 mapping layers), StyleGAN3-T
(the same channels, 2 mapping layers) and StyleGAN3-R (1x1 convolutions, radial filters, channels
doubled); all with num_fp16_res 4 and conv_clamp 256, so on CUDA the top layers run in float16
as NVIDIA's do (on the CPU everything runs in float32).

    python bench/generator_speed.py                       # 64, 256, 1024 px on CUDA if present
    python bench/generator_speed.py --device cpu --sizes 64,256 --repeats 5
    nohup python bench/generator_speed.py --device cpu --sizes 1024 --archs sg2 > cpu.txt &   # slow: background

On a CPU the ops run their plain-PyTorch references, and StyleGAN3 there is slow and memory-hungry
(measured on 2 cores: StyleGAN3-R at 256 px peaks near 15 GB for one image; a batch of 8 was
killed for lack of memory), so pick --sizes/--archs to fit the machine, or --batch 0.

Each row: median batch-1 latency (ms) over --repeats timed calls after --warmup untimed ones,
batch-8 throughput (images/s), and the latency relative to StyleGAN2 at the same size in the same
run (the ratio is the result; absolute times depend on the machine). CUDA is synchronised before
every clock read.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

import cuda_ops  # noqa: E402
from engine.networks import stylegan2, stylegan3  # noqa: E402

COMMON = dict(z_dim=512, c_dim=0, w_dim=512, img_channels=3, num_fp16_res=4, conv_clamp=256)
ARCHS: dict[str, tuple[str, Callable[..., torch.nn.Module], dict[str, Any]]] = {
    "sg2": ("StyleGAN2", stylegan2.Generator,
            dict(channel_base=32768, channel_max=512, mapping_kwargs=dict(num_layers=8))),
    "sg3t": ("StyleGAN3-T", stylegan3.Generator,
             dict(channel_base=32768, channel_max=512, mapping_kwargs=dict(num_layers=2))),
    "sg3r": ("StyleGAN3-R", stylegan3.Generator,
             dict(channel_base=65536, channel_max=1024, conv_kernel=1, use_radial_filters=True,
                  mapping_kwargs=dict(num_layers=2))),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def median_seconds(G: torch.nn.Module, batch: int, repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of one G(z) call on a batch, noise const, after warm-up calls."""
    z = torch.randn([batch, G.z_dim], device=device)
    times = []
    for i in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        G(z, None, noise_mode="const")
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda[:N]")
    p.add_argument("--sizes", default="64,256,1024", help="resolutions, comma separated (default 64,256,1024)")
    p.add_argument("--archs", default="sg2,sg3t,sg3r", help=f"architectures from {','.join(ARCHS)}")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per cell (default: 3 on cpu, 20 on cuda)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: 1 on cpu, 5 on cuda)")
    p.add_argument("--batch", type=int, default=8,
                   help="batch size for the throughput column (default 8; 0 skips it: on a CPU, StyleGAN3 at "
                        "256 px and up needs tens of GB per batch of 8 with the reference ops)")
    p.add_argument("--batch-repeats", type=int, default=None,
                   help="timed batch calls per cell (default: --repeats on cuda, 1 on cpu, after the batch-1 warm-up)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    on_cuda = device.type == "cuda"
    repeats = args.repeats or (20 if on_cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 1)
    # A CPU batch call takes ~batch times as long as a batch-1 call and is warm after those: one will do.
    batch_repeats, batch_warmup = (args.batch_repeats or repeats, warmup) if on_cuda else (args.batch_repeats or 1, 0)
    sizes = [int(s) for s in args.sizes.split(",")]
    archs = [a.strip() for a in args.archs.split(",")]
    if unknown := [a for a in archs if a not in ARCHS]:
        sys.exit(f"unknown architecture(s) {unknown}; choose from {list(ARCHS)}")

    where = torch.cuda.get_device_name(device) if on_cuda else f"{platform.processor() or 'cpu'}, " \
                                                               f"{torch.get_num_threads()} threads"
    print(f"# generator speed on {device} ({where}); torch {torch.__version__}; "
          f"batch 1: {repeats} timed after {warmup} warm-up; batch {args.batch}: {batch_repeats} timed after "
          f"{batch_warmup}; random weights")
    print(f"# ops: {'; '.join(f'{op}: {how}' for op, how in cuda_ops.status().items())}")
    header = f"{'network':<12} {'size':>5} {'params':>8} {'b1 median ms':>13} {'b1 vs SG2':>10} " \
             f"{f'b{args.batch} img/s':>10}"
    print(header)
    print("-" * len(header))
    for size in sizes:
        baseline = None  # SG2's batch-1 latency at this size, when timed in this run
        for arch in archs:
            label, cls, kwargs = ARCHS[arch]
            torch.manual_seed(0)
            G = cls(img_resolution=size, **COMMON, **kwargs).eval().requires_grad_(False).to(device)
            params = sum(p.numel() for p in G.parameters()) / 1e6
            print(f"{label:<12} {size:>5} {params:>7.1f}M ", end="", flush=True)  # slow cells show progress
            try:
                latency = median_seconds(G, 1, repeats, warmup, device)
                if arch == "sg2":
                    baseline = latency
                ratio = f"x{latency / baseline:.2f}" if baseline else "-"
                print(f"{latency * 1e3:>13.1f} {ratio:>10} ", end="", flush=True)
                if args.batch > 0:
                    seconds = median_seconds(G, args.batch, batch_repeats, batch_warmup, device)
                    print(f"{args.batch / seconds:>10.2f}", end="")
            except torch.cuda.OutOfMemoryError:
                print("out of memory", end="")
            finally:
                print(flush=True)
                del G
                if on_cuda:
                    torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
