"""Training snapshots on disk: networks, training state and sample grid; never a pickle.

One snapshot at `cur_nimg` images is three files in the run's folder:

    network-snapshot-000012000.safetensors        G, G_ema, D (engine.checkpoint's format), with the
                                                  run's options and counters in its `training` JSON
    network-snapshot-000012000.state.safetensors  what resuming exactly needs besides the weights:
                                                  Adam moments (`opt.G.*`, `opt.D.*`), augmentation
                                                  (`aug.*`), loss running averages (`loss.*`), counters
    fakes000012000.png                            a grid of G_ema samples

Each file is written atomically (temporary file, then rename). The state file goes first and the
network file last, so a network file on disk means its state is complete; a snapshot counts only
when both exist and record the same `cur_nimg`. Killing the process at any moment therefore leaves
either the previous snapshots or one more, never a damaged one (a leftover `.tmp` or a lone state
file is ignored and cleaned up by the next run).
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from engine.checkpoint import read_checkpoint_metadata
from engine.errors import CorruptFileError, StyleDeckError
from engine.jobs import atomic_write

log = logging.getLogger(__name__)

__all__ = ["STATE_FORMAT", "Snapshot", "find_snapshots", "join_state", "latest_snapshot", "load_optimizer_tensors",
           "optimizer_tensors", "read_state", "snapshot_of_network", "snapshot_paths", "split_state", "write_state"]

STATE_FORMAT = "styledeck-training-state"
STATE_VERSION = 1
_NAME = re.compile(r"^network-snapshot-(\d{9,})\.safetensors$")


@dataclass(frozen=True)
class Snapshot:
    """The files of one snapshot and the image count it was taken at."""
    network: Path
    state: Path
    grid: Path
    cur_nimg: int


def snapshot_paths(outdir: str | Path, cur_nimg: int) -> Snapshot:
    """Where the snapshot at `cur_nimg` images lives (the files may not exist yet)."""
    outdir = Path(outdir)
    stem = f"network-snapshot-{cur_nimg:09d}"
    return Snapshot(outdir / f"{stem}.safetensors", outdir / f"{stem}.state.safetensors",
                    outdir / f"fakes{cur_nimg:09d}.png", cur_nimg)


def write_state(path: str | Path, tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> Path:
    """Write training-state tensors and a JSON `info` (counters, options) atomically to `path`."""
    path = Path(path)
    # clone: safetensors refuses tensors that share memory
    data = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {"format": STATE_FORMAT, "version": STATE_VERSION, **info}
    with atomic_write(path) as tmp:
        save_file(data, str(tmp), metadata={"styledeck": json.dumps(meta)})
    return path


def read_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, info) of a training-state file; CorruptFileError when it is not one."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptFileError(f"{path.name} is not a readable training-state file: {exc}") from exc
    try:
        info = json.loads(header.get("styledeck", ""))
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path.name}: its description is not valid JSON ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != STATE_FORMAT:
        raise CorruptFileError(f"{path.name} is not a StyleDeck training-state file")
    if info.get("version", 0) > STATE_VERSION:
        raise StyleDeckError(f"{path.name} was written by a newer StyleDeck (state version {info['version']}); "
                             "update StyleDeck to resume from it.")
    return tensors, info


def _complete(snap: Snapshot) -> bool:
    """Both files present, readable headers, and the same image count in each."""
    if not (snap.network.is_file() and snap.state.is_file()):
        return False
    try:
        training = read_checkpoint_metadata(snap.network).get("training") or {}
        with safe_open(str(snap.state), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("styledeck", "{}"))
    except (StyleDeckError, SafetensorError, OSError, ValueError) as exc:
        log.warning("ignoring snapshot %s: %s", snap.network.name, exc)
        return False
    return training.get("cur_nimg") == snap.cur_nimg == info.get("cur_nimg")


def find_snapshots(outdir: str | Path) -> list[Snapshot]:
    """The complete snapshots in `outdir`, oldest first."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        return []
    found = []
    for path in outdir.iterdir():
        if match := _NAME.match(path.name):
            snap = snapshot_paths(outdir, int(match.group(1)))
            if _complete(snap):
                found.append(snap)
    return sorted(found, key=lambda s: s.cur_nimg)


def latest_snapshot(outdir: str | Path) -> Snapshot | None:
    """The newest complete snapshot in `outdir`, or None."""
    snaps = find_snapshots(outdir)
    return snaps[-1] if snaps else None


def snapshot_of_network(path: str | Path) -> Snapshot | None:
    """The Snapshot whose network file is `path`, when `path` is one with its state beside it; else None."""
    path = Path(path)
    match = _NAME.match(path.name)
    if not match:
        return None
    snap = snapshot_paths(path.parent, int(match.group(1)))
    return snap if _complete(snap) else None


def remove_leftovers(outdir: str | Path) -> None:
    """Delete temporary files of writes a kill interrupted (`.network-snapshot-*`, `.fakes*`)."""
    for path in Path(outdir).glob(".*"):
        if path.is_file() and (path.name.startswith(".network-snapshot-") or path.name.startswith(".fakes")):
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Training state <-> flat tensors and JSON values

def split_state(prefix: str, state: Mapping[str, Any], tensors: dict[str, torch.Tensor],
                info: dict[str, Any]) -> None:
    """A flat state dict (keys may hold dots, as nn.Module's) into tensors for safetensors and
    plain values for the JSON `info`, each under `prefix.`."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[f"{prefix}.{key}"] = value
        else:
            info[f"{prefix}.{key}"] = value.item() if isinstance(value, np.generic) else value


def join_state(prefix: str, tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict split_state stored under `prefix`."""
    start = len(prefix) + 1
    return {key[start:]: value for source in (tensors, info) for key, value in source.items()
            if key.startswith(prefix + ".")}


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Adam's per-parameter tensors keyed '<param index>.<name>' (step, exp_avg, exp_avg_sq)."""
    return {f"{idx}.{name}": torch.as_tensor(value) for idx, state in opt.state_dict()["state"].items()
            for name, value in state.items()}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    full = opt.state_dict()
    full["state"] = state
    opt.load_state_dict(full)


def loss_state(loss: Any) -> dict[str, torch.Tensor]:
    """The loss's running state (the path-length mean)."""
    return dict(loss.state_dict()) if hasattr(loss, "state_dict") else {}


def load_loss_state(loss: Any, state: Mapping[str, Any]) -> None:
    if state and hasattr(loss, "load_state_dict"):
        loss.load_state_dict(dict(state))
