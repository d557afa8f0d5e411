"""Render speed: each op's kernel against its reference, and the generator on the fast and reference paths.

On CUDA (the default where a GPU is present), in one run:
  1. ops: cuda_ops' bias_act, upfirdn2d and filtered_lrelu with impl="auto" (the compiled kernel where it
     built and passed its self-test; `cuda_ops.status()` labels what ran) against impl="ref", at the shapes
     the 1024 px networks give them, batch 16, float16 (what their top layers run in);
  2. generators: StyleGAN2 config F, StyleGAN3-T and StyleGAN3-R (NVIDIA's configurations, random
     weights, bench/generator_speed.py's ARCHS) at 256 and 1024 px, batch-1 latency and batch-16
     throughput of the synthesis (ws -> float32 image; the renderer caches the mapping per source), on:
       reference  the reference path (float32, eager, no TF32) with every op on its plain-PyTorch reference
       eager      the network as NVIDIA's scripts run it: float16 top layers, eager, ops on "auto"
       fast       engine/fast_path.py's default: float16, channels-last, modconv form per batch, CUDA graph
       fast-bf16  the fast path in bfloat16
       fast-alt   the fast path with the other modulated-conv form than it picks (checks that choice)
     and Renderer.render() end to end (EditState -> uint8 numpy image) on the fast path, batch 1;
  3. the issue's targets (measured on an H100; the H200 has its compute and 1.4x its memory bandwidth).
On the CPU (`--device cpu`): the bundled models (engine.bundled_networks()) and StyleGAN2 / StyleGAN3-T at
256 px, batch 1 and 8, fast path against reference path (on the CPU the fast path is the reference path,
so the ratio shows only the cost of the plumbing).

Timing (METHOD.md): warm-up calls first (cuDNN autotuning, kernel builds and self-tests, graph
capture; one is enough for a call over 0.25 s); then CUDA events around each call (host clock around a
synchronised call on the CPU), in rounds that call each variant once in turn, so that drift in load or
clocks hits all alike, and the median per variant; rounds adapt to --cell-seconds, at least
--min-repeats. `--json PATH` writes every
number (rewritten after each cell, so a run cut short keeps what it measured).

    python bench/gpu_speed.py --json out.json                 # the device machine (bench/device_check.sh)
    python bench/gpu_speed.py --device cpu --quick            # CPU smoke run
"""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                       # run from anywhere without installing
sys.path.insert(0, str(ROOT / "bench"))

import cuda_ops  # noqa: E402
import engine  # noqa: E402
from engine.fast_path import RenderOptions, Synthesizer  # noqa: E402
from engine.latents import network_family  # noqa: E402
from engine.renderer import Renderer  # noqa: E402
from generator_speed import ARCHS, COMMON  # noqa: E402  (one definition of NVIDIA's configurations)

# The targets (H100).
LATENCY_TARGET_MS = {("sg2", 256): 3.0, ("sg2", 1024): 7.0, ("sg3t", 256): 3.0, ("sg3t", 1024): 7.0}
THROUGHPUT_TARGET = {("sg2", 1024): 400.0, ("sg3t", 1024): 220.0, ("sg3r", 1024): 100.0}
FILTERED_LRELU_TARGET = 8.0
VARIANTS = ("reference", "eager", "fast", "fast-bf16", "fast-alt")


# --- timing -------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once_ms(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start_s = time.perf_counter()
    fn()
    return (time.perf_counter() - start_s) * 1e3


# --- results ------------------------------------------------------------------------------------

class Results:
    """Everything measured, written to --json after each cell."""

    def __init__(self, path: str | None, meta: dict[str, Any]):
        self.path = Path(path) if path else None
        self.data: dict[str, Any] = {"meta": meta, "ops": [], "generators": [], "render": [], "targets": []}

    def add(self, section: str, row: dict[str, Any]) -> None:
        self.data[section].append(row)
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)               # a reader never sees half a file


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


# --- ops ----------------------------------------------------------------------------------------

def _build(arch: str, size: int, device: torch.device) -> torch.nn.Module:
    label, cls, kwargs = ARCHS[arch]
    torch.manual_seed(0)
    G = cls(img_resolution=size, **COMMON, **kwargs).eval().requires_grad_(False)
    with torch.no_grad():                      # random networks: give w_avg and the noise something to do
        G.mapping.w_avg.normal_()
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)
    return G.to(device)


def op_cases(device: torch.device, batch: int) -> list[tuple[str, str, Callable[[str], Any]]]:
    """(op, where, fn(impl)) at the shapes the 1024 px networks give each op, in float16."""
    h = torch.float16
    cases = []
    sg2 = _build("sg2", 1024, "cpu")
    top = sg2.synthesis.b1024.conv1                              # [N, 32, 1024, 1024] in config F
    x = torch.randn(batch, top.out_channels, 1024, 1024, device=device, dtype=h)
    b = torch.randn(top.out_channels, device=device, dtype=h)
    cases.append(("bias_act", f"SG2 b1024 conv1 output {list(x.shape)} lrelu+clamp",
                  lambda impl, x=x, b=b: cuda_ops.bias_act(x, b, act="lrelu", gain=math.sqrt(2), clamp=256, impl=impl)))
    conv0 = sg2.synthesis.b1024.conv0                            # upsampling conv: FIR after the transposed conv
    y = torch.randn(batch, conv0.out_channels, 1025, 1025, device=device, dtype=h)
    f = conv0.resample_filter.to(device)
    cases.append(("upfirdn2d", f"SG2 b1024 conv0 FIR {list(y.shape)} 4x4 taps",
                  lambda impl, y=y, f=f: cuda_ops.upfirdn2d(y, f, padding=1, gain=4, impl=impl)))
    del sg2
    for arch in ("sg3t", "sg3r"):
        G = _build(arch, 1024, "cpu")
        layers = [getattr(G.synthesis, name) for name in G.synthesis.layer_names]
        inputs = []
        for layer in layers:
            side = int(layer.in_size[0]) + layer.conv_kernel - 1    # the modulated conv's output
            inputs.append((torch.randn(batch, layer.out_channels, side, side, device=device, dtype=h),
                           None if layer.up_filter is None else layer.up_filter.to(device),
                           None if layer.down_filter is None else layer.down_filter.to(device),
                           layer.bias.to(device, h), layer))

        def run(impl: str, inputs=inputs) -> None:
            for xi, fu, fd, bi, layer in inputs:
                gain, slope = (1, 1) if layer.is_torgb else (math.sqrt(2), 0.2)
                cuda_ops.filtered_lrelu(xi, fu, fd, bi, layer.up_factor, layer.down_factor, layer.padding,
                                        gain, slope, layer.conv_clamp, impl=impl)

        cases.append(("filtered_lrelu", f"{ARCHS[arch][0]} 1024 px, all {len(layers)} layers", run))
        del G
    return cases


def bench_ops(device: torch.device, args: argparse.Namespace, results: Results, budget: Budget) -> None:
    batch = args.op_batch
    print(f"\n## ops: impl='auto' against impl='ref', batch {batch}, float16, median ms")
    header = f"{'op':<15} {'shapes':<52} {'auto ms':>9} {'ref ms':>9} {'ref/auto':>9}"
    print(header + "\n" + "-" * len(header))
    for op, where, fn in op_cases(device, batch):
        if budget.left() <= 0:
            print(f"{op:<15} {where:<52} skipped: time budget spent")
            continue
        row: dict[str, Any] = {"op": op, "where": where, "batch": batch, "dtype": "float16"}
        with torch.no_grad():
            timed = measure_interleaved({impl: functools.partial(fn, impl) for impl in ("auto", "ref")}, device,
                                        args.warmup, args.cell_seconds, args.min_repeats)
        row.update(timed)
        if all(isinstance(timed[impl], dict) for impl in ("auto", "ref")):
            row["speedup"] = timed["ref"]["median_ms"] / timed["auto"]["median_ms"]
            print(f"{op:<15} {where:<52} {timed['auto']['median_ms']:>9.3f} {timed['ref']['median_ms']:>9.3f} "
                  f"{row['speedup']:>8.2f}x", flush=True)
        else:
            print(f"{op:<15} {where:<52} auto: {timed['auto']}; ref: {timed['ref']}")
        results.add("ops", row)
        torch.cuda.empty_cache()
    status = cuda_ops.status(probe=False)
    results.data["meta"]["cuda_ops_status"] = status
    for op, how in status.items():
        print(f"# {op}: {how}")


# --- generators ---------------------------------------------------------------------------------

def _variant_fn(G: torch.nn.Module, variant: str, batch: int, device: torch.device) -> tuple[Callable, str]:
    """(fn(ws) -> image, description) for one variant."""
    family = network_family(G)
    if variant == "eager":
        return (lambda ws: G.synthesis(ws, noise_mode="const").to(torch.float32),
                "network default precision, eager, ops auto")
    if variant == "reference":
        synth = Synthesizer(G, family, RenderOptions(path="reference"))

        def run(ws: torch.Tensor) -> torch.Tensor:
            with cuda_ops.reference_only():
                return synth(ws, "const")

        return run, synth.plan(batch).describe() + ", reference ops"
    options = {"fast": RenderOptions(), "fast-bf16": RenderOptions(half="bfloat16"),
               "fast-alt": RenderOptions(modconv="scaled" if batch == 1 else "grouped")}[variant]
    synth = Synthesizer(G, family, options)
    return (lambda ws: synth(ws, "const")), synth.plan(batch).describe()


def measure_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, cell_seconds: float,
                        min_repeats: int, max_repeats: int = 100) -> dict[str, dict[str, float] | str]:
    """Per name, the median and spread (ms) of its fn, timed in rounds that call every fn once in turn,
    so that drift in the machine's load or clocks hits every variant alike. A fn that runs out of
    memory is reported as such and left out of the rounds."""
    first: dict[str, float] = {}
    out: dict[str, dict[str, float] | str] = {}
    for name, fn in fns.items():
        try:
            for i in range(max(warmup, 1)):
                start = time.perf_counter()
                fn()
                _sync(device)
                if time.perf_counter() - start > 0.25:   # a slow call: it is warm after one
                    break
            first[name] = _time_once_ms(fn, device)
        except torch.cuda.OutOfMemoryError:
            out[name] = "out of memory"
            torch.cuda.empty_cache()
    live = [n for n in fns if n in first]
    total = sum(first.values())
    rounds = int(min(max_repeats, max(min_repeats, cell_seconds * 1e3 * len(live) / max(total, 1e-3))))
    times = {n: [first[n]] for n in live}
    for _ in range(rounds - 1):
        for n in live:
            times[n].append(_time_once_ms(fns[n], device))
    for n in live:
        t = times[n]
        out[n] = {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t), "repeats": len(t)}
    return out


def bench_generators(device: torch.device, args: argparse.Namespace, results: Results, budget: Budget) -> None:
    on_cuda = device.type == "cuda"
    batches = [1, args.batch]
    variants = [v for v in args.variants.split(",") if v and (on_cuda or v in ("reference", "fast"))]
    networks: list[tuple[str, str, Callable[[], torch.nn.Module]]] = []
    if args.bundled:
        for path in engine.bundled_networks():
            networks.append(("bundled", f"bundled {path.stem}"[:28],
                             functools.partial(lambda p: _pick(engine.load_network(p, device=str(device))), path)))
    for size in args.sizes:
        for arch in args.archs:
            networks.append((arch, ARCHS[arch][0], functools.partial(_build, arch, size, device)))

    print(f"\n## generator synthesis (ws -> float32 image): batch 1 median ms, batch {args.batch} images/s; "
          "'x': speed relative to the reference row; variants timed in interleaved rounds")
    header = (f"{'network':<28} {'size':>5} {'variant':<10} {'b1 ms':>9} {'x':>7} {f'b{args.batch} img/s':>10} "
              f"{'x':>7}  plan (batch 1 | batch {args.batch})")
    print(header + "\n" + "-" * len(header))
    for arch, label, make in networks:
        if budget.left() <= 0:
            print(f"{label:<28} skipped: time budget spent")
            continue
        try:
            G = make()
        except torch.cuda.OutOfMemoryError:
            print(f"{label:<28} out of memory building the network")
            continue
        size = int(G.img_resolution)
        with torch.no_grad():
            ws_all = G.mapping(torch.randn(max(batches), G.z_dim, device=device), None, truncation_psi=0.7)
        rows = {v: {"network": label, "arch": arch, "size": size, "variant": v} for v in variants}
        cells: dict[str, list] = {v: [] for v in variants}
        for batch in batches:
            if budget.left() <= 0 or (arch in args.skip_batch and batch > 1):
                for v in variants:
                    cells[v].append((batch, None, "budget" if budget.left() <= 0 else "skipped"))
                continue
            ws = ws_all[:batch].contiguous()
            fns, plans = {}, {}
            for v in variants:
                fn, plans[v] = _variant_fn(G, v, batch, device)
                fns[v] = functools.partial(fn, ws)
            # On the CPU a batch call is warm after the batch-1 calls (same kernels, no autotuning).
            warmup = args.warmup if on_cuda else (args.cpu_warmup if batch == 1 else 0)
            with torch.no_grad():
                timed = measure_interleaved(fns, device, warmup, args.cell_seconds, args.min_repeats)
            for v in variants:
                t = timed.get(v)
                if isinstance(t, dict):
                    rows[v][f"b{batch}"] = dict(t, plan=plans[v], images_per_s=batch * 1e3 / t["median_ms"])
                    cells[v].append((batch, t["median_ms"], plans[v]))
                else:
                    rows[v][f"b{batch}"] = {"error": t}
                    cells[v].append((batch, None, t))
            del fns
            if on_cuda:
                torch.cuda.empty_cache()
        base: dict[int, float] = {}
        for v in variants:
            results.add("generators", rows[v])
            _print_row(label, size, v, cells[v], base, args.batch)
        if on_cuda and "fast" in variants and budget.left() > 0:
            _bench_render(G, label, size, device, args, results)
        del G, ws_all
        if on_cuda:
            torch.cuda.empty_cache()


def _pick(networks: dict[str, torch.nn.Module]) -> torch.nn.Module:
    return networks.get("G_ema", networks.get("G")).eval().requires_grad_(False)


def _print_row(label: str, size: int, variant: str, cells: list, base: dict[int, float], batch_n: int) -> None:
    out = [f"{label:<28} {size:>5} {variant:<10}"]
    plans = []
    for batch, ms, plan in cells:
        if ms is None:
            out.append(f"{plan:>17}" if batch == 1 else f" {plan:>18}")
            continue
        if variant == "reference":
            base[batch] = ms
        ratio = f"{base[batch] / ms:.2f}x" if batch in base else "-"
        out.append(f"{ms:>9.2f} {ratio:>7}" if batch == 1 else f" {batch * 1e3 / ms:>10.1f} {ratio:>7}")
        plans.append(plan)
    print(" ".join(out) + "  " + " | ".join(dict.fromkeys(plans)), flush=True)


def _bench_render(G: torch.nn.Module, label: str, size: int, device: torch.device, args: argparse.Namespace,
                  results: Results) -> None:
    """Renderer.render() end to end on the fast path: EditState -> uint8 numpy image (host clock)."""
    renderer = Renderer(G, device)
    state = engine.initial_state("bench", renderer.num_ws, seeds=(1, 2))
    for _ in range(args.warmup):
        renderer.render(state)
    times = []
    for _ in range(args.min_repeats * 5):
        times.append(renderer.render(state).render_ms)
    row = {"network": label, "size": size, "median_ms": statistics.median(times), "path": renderer.path_status}
    results.add("render", row)
    print(f"{'  Renderer.render()':<28} {size:>5} {'fast':<10} {row['median_ms']:>9.2f}  "
          f"(state -> uint8 image on the host; {renderer.path_status})", flush=True)


# --- targets ------------------------------------------------------------------------------------

def report_targets(results: Results) -> None:
    gens = {(r["arch"], r["size"], r["variant"]): r for r in results.data["generators"]}
    rows = []
    for (arch, size), target in LATENCY_TARGET_MS.items():
        got = gens.get((arch, size, "fast"), {}).get("b1", {}).get("median_ms")
        rows.append((f"{ARCHS[arch][0]} {size} px batch-1 latency", f"<= {target:g} ms", got, "ms",
                     got is not None and got <= target))
    for (arch, size), target in THROUGHPUT_TARGET.items():
        cell = next((v for k, v in gens.get((arch, size, "fast"), {}).items() if k.startswith("b") and k != "b1"), {})
        got = cell.get("images_per_s")
        rows.append((f"{ARCHS[arch][0]} {size} px batch-16 throughput", f">= {target:g} img/s", got, "img/s",
                     got is not None and got >= target))
    for op in results.data["ops"]:
        if op["op"] == "filtered_lrelu":
            got = op.get("speedup")
            rows.append((f"filtered_lrelu kernel vs reference ({op['where']})", f">= {FILTERED_LRELU_TARGET:g}x", got,
                         "x", got is not None and got >= FILTERED_LRELU_TARGET))
    print("\n## targets (the issue's, for an H100)")
    for name, target, got, unit, ok in rows:
        value = "not measured" if got is None else f"{got:.2f} {unit}"
        verdict = "-" if got is None else ("met" if ok else "MISSED")
        print(f"{name:<64} {target:>14} {value:>16}  {verdict}")
        results.data["targets"].append({"what": name, "target": target, "measured": got, "met": ok if got else None})
    results.save()


# --- main ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda[:N]")
    p.add_argument("--json", default=None, help="write every number to this JSON file")
    p.add_argument("--quick", action="store_true", help="smoke run: fewer sizes and repeats")
    p.add_argument("--sizes", default=None, help="generator resolutions (default 256,1024 on cuda; 256 on cpu)")
    p.add_argument("--archs", default=None, help="from sg2,sg3t,sg3r (default all on cuda; sg2,sg3t on cpu)")
    p.add_argument("--variants", default=None, help=f"from {','.join(VARIANTS)} (cpu: reference,fast)")
    p.add_argument("--batch", type=int, default=None, help="throughput batch (default 16 on cuda, 8 on cpu)")
    p.add_argument("--op-batch", type=int, default=16, help="batch of the op shapes (cuda)")
    p.add_argument("--no-ops", action="store_true", help="skip the op timings")
    p.add_argument("--skip-batch", default="", help="archs whose batch row is skipped (e.g. sg3t on a small CPU)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before each cuda cell (default 3)")
    p.add_argument("--cpu-warmup", type=int, default=1, help="untimed calls before each cpu cell (default 1)")
    p.add_argument("--cell-seconds", type=float, default=None, help="time each cell about this long (cuda 0.5, cpu 0)")
    p.add_argument("--min-repeats", type=int, default=None, help="at least this many timed calls (default 3, quick 1)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new cells after this many seconds (default 420 on cuda, none on cpu)")
    p.add_argument("--no-bundled", action="store_true", help="cpu: leave out the bundled model")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    args.device = device
    on_cuda = device.type == "cuda"
    args.sizes = [int(s) for s in (args.sizes or ("256,1024" if on_cuda and not args.quick else "256")).split(",")]
    args.archs = [a.strip() for a in (args.archs or ("sg2,sg3t,sg3r" if on_cuda else "sg2,sg3t")).split(",")]
    if unknown := [a for a in args.archs if a not in ARCHS]:
        p.error(f"unknown architecture(s) {unknown}; choose from {list(ARCHS)}")
    args.variants = args.variants or (",".join(VARIANTS) if on_cuda else "reference,fast")
    if unknown := [v for v in args.variants.split(",") if v not in VARIANTS]:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    args.batch = args.batch or (16 if on_cuda else 8)
    args.skip_batch = [a for a in args.skip_batch.split(",") if a]
    args.cell_seconds = args.cell_seconds if args.cell_seconds is not None else (
        (0.2 if args.quick else 0.5) if on_cuda else 0.0)
    args.min_repeats = args.min_repeats or (1 if args.quick and not on_cuda else 3)
    if args.quick and not on_cuda:
        args.cpu_warmup = min(args.cpu_warmup, 1)
    args.bundled = not on_cuda and not args.no_bundled
    if args.budget_s is None:
        args.budget_s = 420.0 if on_cuda else math.inf
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    on_cuda = device.type == "cuda"
    where = torch.cuda.get_device_name(device) if on_cuda else \
        f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "device": str(device),
            "device_name": where, "torch": torch.__version__, "cuda": torch.version.cuda,
            "argv": sys.argv[1:], "batch": args.batch}
    if on_cuda:
        meta["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    results = Results(args.json, meta)
    budget = Budget(args.budget_s)
    print(f"# gpu_speed on {device} ({where}); torch {torch.__version__}; "
          f"{meta['date']}; random weights, noise const")
    if on_cuda and not args.no_ops:
        bench_ops(device, args, results, budget)
    bench_generators(device, args, results, budget)
    if on_cuda:
        report_targets(results)
    else:
        results.data["meta"]["cuda_ops_status"] = cuda_ops.status(probe=False)
        results.save()
        for op, how in results.data["meta"]["cuda_ops_status"].items():
            print(f"# {op} ('auto', which the fast row uses): {how}")
    if args.json:
        print(f"# full numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
