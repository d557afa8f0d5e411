"""Animation export speed: frames/s of rendering and of each encoder (mp4, gif, webp, PNG frames), timed apart.

Random weights in NVIDIA's configurations (weights do not change the work): StyleGAN2 config F and
StyleGAN3-T, num_fp16_res 4, so on CUDA the top layers run in float16 as NVIDIA's do. StyleGAN2
renders a latent loop between two seeds (one synthesis call per batch); StyleGAN3-T renders a
full turn of the same loop, each frame with its own input transform (the Fourier input per frame,
the layers batched).

    python bench/export_speed.py                          # CUDA: 256 and 1024 px, 60 frames
    python bench/export_speed.py --device cpu --threads 1 # CPU: 64 and 128 px, small channels, 4 frames

Each row: one network and size. `render` is frames/s of render_frames (latents to uint8 frames,
CUDA synchronised by the copy to the host); each format's column is frames/s of its encoder on
--encode-frames frames (the rendered ones, repeated in order when fewer were rendered: on a CPU
rendering is too slow to make many, and a few frames would time mostly ffmpeg's start-up), written
through encode_frames to a temporary folder at 25 fps; `mp4 share` is the mp4
encoder's part of a full mp4 export (render + encode), and `gif/mp4` how many times longer
the gif encoder takes than the mp4 one. Ratios are the result; absolute numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from engine.devices import resolve_device  # noqa: E402
from engine.latents import Source  # noqa: E402
from engine.networks import stylegan2, stylegan3  # noqa: E402
from engine.renderer import Renderer  # noqa: E402
from engine.video import AnimationSpec, Motion, render_frames  # noqa: E402
from engine.video_encode import EncodeOptions, encode_frames  # noqa: E402

FORMATS = {"mp4": "clip.mp4", "gif": "clip.gif", "webp": "clip.webp", "png": "frames"}


def make_generator(arch: str, size: int, cbase: int, cmax: int) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=size, img_channels=3, num_fp16_res=4,
                  conv_clamp=256, channel_base=cbase, channel_max=cmax)
    if arch == "sg2":
        return stylegan2.Generator(**common, mapping_kwargs=dict(num_layers=8))
    return stylegan3.Generator(**common, mapping_kwargs=dict(num_layers=2))


def spec_for(arch: str, frames: int) -> AnimationSpec:
    keyframes = ((Source.from_seed(1), Source.from_seed(2)),)
    motion = Motion.turns(1) if arch == "sg3t" else Motion()
    return AnimationSpec(keyframes=keyframes, num_frames=frames, motion=motion)


def bench_one(arch: str, size: int, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    renderer = Renderer(make_generator(arch, size, args.cbase, args.cmax).eval(), device)
    spec = spec_for(arch, args.frames)
    list(render_frames(renderer, spec_for(arch, min(args.batch, args.frames)), batch=args.batch))   # warm-up
    start = time.perf_counter()
    frames = list(render_frames(renderer, spec, batch=args.batch))
    render_s = time.perf_counter() - start
    row = {"render": len(frames) / render_s, "render_s": render_s / len(frames)}     # render_s: per frame
    encoded = [frames[i % len(frames)] for i in range(args.encode_frames)]
    with tempfile.TemporaryDirectory() as folder:
        for fmt in args.formats:
            start = time.perf_counter()
            encode_frames(encoded, Path(folder) / FORMATS[fmt], EncodeOptions(fps=25, format=fmt))
            seconds = time.perf_counter() - start
            row[fmt], row[f"{fmt}_s"] = len(encoded) / seconds, seconds / len(encoded)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda[:N]")
    p.add_argument("--sizes", default=None, help="resolutions (default: 256,1024 on cuda, 64,128 on cpu)")
    p.add_argument("--archs", default="sg2,sg3t", help="sg2 and/or sg3t (default both)")
    p.add_argument("--frames", type=int, default=None, help="frames rendered (default: 60 cuda, 4 cpu)")
    p.add_argument("--encode-frames", dest="encode_frames", type=int, default=60,
                   help="frames each encoder writes (default 60)")
    p.add_argument("--batch", type=int, default=8, help="frames per synthesis call (default 8)")
    p.add_argument("--formats", default="mp4,gif,webp,png", help="encoders to time (default all four)")
    p.add_argument("--cbase", type=int, default=None, help="channel base (default: 32768 cuda, 4096 cpu)")
    p.add_argument("--cmax", type=int, default=None, help="maximum channels (default: 512 cuda, 128 cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    args.sizes = [int(s) for s in (args.sizes or ("256,1024" if cuda else "64,128")).split(",")]
    args.archs = args.archs.split(",")
    args.formats = args.formats.split(",")
    args.frames = args.frames or (60 if cuda else 4)
    args.cbase = args.cbase or (32768 if cuda else 4096)
    args.cmax = args.cmax or (512 if cuda else 128)
    gpu = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    print(f"# {gpu}, torch {torch.__version__}, {args.frames} frames rendered, {args.encode_frames} encoded, "
          f"batch {args.batch}, "
          f"cbase {args.cbase}, cmax {args.cmax}; frames/s (higher is faster)")
    names = {"sg2": "StyleGAN2", "sg3t": "StyleGAN3-T"}
    header = f"{'network':<12}{'size':>5}{'render':>9}" + "".join(f"{f:>9}" for f in args.formats)
    if "mp4" in args.formats:
        header += f"{'mp4 share':>11}"
    if {"mp4", "gif"} <= set(args.formats):
        header += f"{'gif/mp4':>9}"
    print(header)
    for arch in args.archs:
        for size in args.sizes:
            row = bench_one(arch, size, args, device)
            line = f"{names[arch]:<12}{size:>5}{row['render']:>9.2f}" + "".join(f"{row[f]:>9.1f}" for f in args.formats)
            if "mp4" in args.formats:
                line += f"{row['mp4_s'] / (row['mp4_s'] + row['render_s']):>10.0%} "
            if {"mp4", "gif"} <= set(args.formats):
                line += f"{row['gif_s'] / row['mp4_s']:>8.1f}x"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
