"""Ship a starter model: the last snapshot of a run, halved, with the facts of its training.

    python models/training/ship_starter.py --run RUN_DIR --log RUN.log --command "python main.py finetune ..." \
        --dataset-command "python main.py make-dataset toyfaces ..." --dataset toyfaces --variant upright \
        --count 10000 --name toyfaces-sg2-64 [--history RUN-COMMANDS.txt]

writes models/NAME.safetensors (G_ema and D, float16 storage, metadata: dataset, kimg, training time,
machine, settings, command) and models/training/NAME.log (the command and one line per tick), and
prints the registry entry to add to models/registry.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
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


def training_seconds(ticks: list[str]) -> float:
    """Wall time of the ticks: each tick's kimg step times its s/kimg (covers resumed segments too)."""
    total, last = 0.0, 0.0
    for line in ticks:
        kimg, s_per_kimg = (float(x) for x in TICK.search(line).groups())
        if kimg < last:           # a resumed segment repeats the kimg where it started
            last = kimg
        total += (kimg - last) * s_per_kimg
        last = kimg
    return total


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
    p.add_argument("--log", required=True, type=Path, help="the finetune output (stdout+stderr)")
    p.add_argument("--command", required=True, help="the exact finetune command")
    p.add_argument("--dataset-command", required=True, help="the exact make-dataset command")
    p.add_argument("--dataset", default="toyfaces")
    p.add_argument("--variant", default="upright")
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--name", required=True, help="file name in models/, without suffix")
    p.add_argument("--machine", help="describe the machine (default: this one)")
    p.add_argument("--history", type=Path,
                   help="a text file of the run's starts and resumes (when, from which kimg), kept in the log")
    args = p.parse_args()

    sys.path.insert(0, str(ROOT))
    from engine.training.snapshot import find_snapshots
    snaps = find_snapshots(args.run)
    if not snaps:
        raise SystemExit(f"no snapshot in {args.run}")
    snap = snaps[-1]
    ticks = tick_lines(args.log.read_text(errors="replace"))
    from engine.checkpoint import read_checkpoint_metadata
    meta = read_checkpoint_metadata(snap.network)
    recorded = meta["training"] or {}
    resolution = recorded.get("options", {}).get("resolution")
    info = {
        "dataset": {"name": args.dataset, "variant": args.variant, "count": args.count, "resolution": resolution,
                    "command": args.dataset_command},
        "training_time_s": round(training_seconds(ticks)),
        "machine": args.machine or machine(),
        "command": args.command,
        "log": f"models/training/{args.name}.log",
    }
    out = ROOT / "models" / f"{args.name}.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        info_path = Path(tmp) / "info.json"
        info_path.write_text(json.dumps(info))
        subprocess.run([sys.executable, str(ROOT / "main.py"), "convert", "--network", str(snap.network),
                        "--output", str(out), "--keep", "G_ema,D", "--half", "--training-info", str(info_path)],
                       check=True)
    log_out = ROOT / "models" / "training" / f"{args.name}.log"
    history = ("".join(f"# history: {line}\n" for line in args.history.read_text().splitlines() if line.strip())
               if args.history else "")
    log_out.write_text(f"# dataset: {args.dataset_command}\n# training: {args.command}\n"
                       f"# machine: {info['machine']}\n# snapshot shipped: {snap.network.name}\n"
                       + history + "\n".join(ticks) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {log_out}")
    print(json.dumps({"file": out.name, "family": meta["networks"]["G_ema"]["family"],
                      "resolution": resolution, "kimg": recorded.get("kimg")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
