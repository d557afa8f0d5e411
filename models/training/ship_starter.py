"""Ship a starter model: the last snapshot of a run, halved, with the facts of its training.

    python models/training/ship_starter.py --run RUN_DIR --log RUN.log --command "python main.py finetune ..." \
        --dataset-command "python main.py make-dataset toyfaces ..." --dataset toyfaces --variant upright \
        --count 10000 --name toyfaces-sg2-64 [--history RUN-COMMANDS.txt] [--continues models/OLD.safetensors]

writes models/NAME.safetensors (G_ema and D, float16 storage, metadata: dataset, kimg, training time,
machine, settings, command) and models/training/NAME.log (the command and one line per tick), and
prints the registry entry to add to models/registry.json. With --continues (a run that fine-tuned an
already shipped model), the kimg, training time and command count the shipped model's training too, and
the log keeps its ticks first.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TICK = re.compile(r"kimg (\d+\.\d+)\s+(\d+(?:\.\d+)?) s/kimg.*")


def tick_lines(log_text: str) -> list[str]:
    """The per-tick lines of a finetune log (tqdm's redraws dropped)."""
    lines = []
    for chunk in log_text.replace("\r", "\n").split("\n"):
        match = TICK.search(chunk)
        if match and "loss/G" in chunk:
            lines.append(match.group(0).strip())
    return lines


def tick_steps(ticks: list[str]) -> list[tuple[float, float]]:
    """(kimg trained, s/kimg) of each tick (covers resumed segments too)."""
    steps, last = [], 0.0
    for line in ticks:
        kimg, s_per_kimg = (float(x) for x in TICK.search(line).groups())
        if kimg < last:           # a resumed segment repeats the kimg where it started
            last = kimg
        steps.append((kimg - last, s_per_kimg))
        last = kimg
    return steps


def training_seconds(steps: list[tuple[float, float]]) -> float:
    """Wall time of tick_steps: each tick's kimg step times its s/kimg."""
    return sum(kimg * s_per_kimg for kimg, s_per_kimg in steps)


def machine() -> str:
    """'N-core <CPU model>' or the GPU's name, as people read it."""
    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core CPU ({model}), {os.environ.get('OMP_NUM_THREADS', 'all')} thread(s) for training"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path, help="the finetune --outdir")
    p.add_argument("--log", required=True, type=Path, action="append",
                   help="the finetune output (stdout+stderr); repeat it for runs that each went on from the "
                        "last one's snapshot with kimg counted from 0 again, in order")
    p.add_argument("--command", required=True, help="the exact finetune command")
    p.add_argument("--dataset-command", required=True, help="the exact make-dataset command")
    p.add_argument("--dataset", default="toyfaces")
    p.add_argument("--variant", default="upright")
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--name", required=True, help="file name in models/, without suffix")
    p.add_argument("--machine", help="describe the machine (default: this one)")
    p.add_argument("--history", type=Path,
                   help="a text file of the run's starts and resumes (when, from which kimg), kept in the log")
    p.add_argument("--continues", type=Path, metavar="SHIPPED",
                   help="the shipped model this run fine-tuned (may be models/NAME.safetensors itself)")
    args = p.parse_args()

    sys.path.insert(0, str(ROOT))
    from engine.training.snapshot import find_snapshots
    snaps = find_snapshots(args.run)
    if not snaps:
        raise SystemExit(f"no snapshot in {args.run}")
    snap = snaps[-1]
    runs = [tick_lines(log.read_text(errors="replace")) for log in args.log]
    ticks = [line for run in runs for line in run]
    steps = [step for run in runs for step in tick_steps(run)]
    from engine.checkpoint import read_checkpoint_metadata
    from engine.loader import convert_network, file_sha256
    meta = read_checkpoint_metadata(snap.network)
    recorded = meta["training"] or {}
    resolution = (recorded.get("options", {}).get("resolution")   # None when the run resumed a network file
                  or meta["networks"]["G_ema"]["init_kwargs"]["img_resolution"])
    base = read_checkpoint_metadata(args.continues)["training"] if args.continues else None
    base_log = (ROOT / base["log"]).read_text() if base else ""   # read before NAME.log is overwritten
    info = {
        "dataset": {"name": args.dataset, "variant": args.variant, "count": args.count, "resolution": resolution,
                    "command": args.dataset_command},
        "training_time_s": round(training_seconds(steps)),
        "machine": args.machine or machine(),
        "command": args.command,
        "log": f"models/training/{args.name}.log",
    }
    if base:
        info["kimg"] = round(base["kimg"] + sum(kimg for kimg, _ in steps), 3)
        info["training_time_s"] += base["training_time_s"]
        info["command"] = f"{base['command']}\nthen fine-tuned: {args.command}"
    # A fine-tune's snapshot names the file its last run resumed; the shipped model it began from says more.
    origin = ({"source": args.continues.name, "sha256": file_sha256(args.continues), "kimg": base["kimg"]}
              if base else None)
    out = ROOT / "models" / f"{args.name}.safetensors"
    convert_network(snap.network, out, training=info, keep=["G_ema", "D"], half=True, origin=origin)
    log_out = ROOT / "models" / "training" / f"{args.name}.log"
    history = ("".join(f"# history: {line}\n" for line in args.history.read_text().splitlines() if line.strip())
               if args.history else "")
    command = args.command.replace("\n", "\n#   ")   # a command of several lines stays a comment
    log_out.write_text(base_log + (f"\n# then fine-tuned from {args.continues.name} as shipped above:\n" if base else "")
                       + f"# dataset: {args.dataset_command}\n# training: {command}\n"
                       f"# machine: {info['machine']}\n# snapshot shipped: {snap.network.name}\n"
                       + history + "\n".join(ticks) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {log_out}")
    print(json.dumps({"file": out.name, "family": meta["networks"]["G_ema"]["family"],
                      "resolution": resolution, "kimg": info.get("kimg", recorded.get("kimg"))}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
