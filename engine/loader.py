"""Open any network file StyleDeck reads, describe a generator, convert pickles to the native format.

The format is sniffed from the first bytes, not the extension: people rename files, and a
`.pkl` that is really a torch zip checkpoint deserves a message that says so.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from engine.checkpoint import family_of_module, load_checkpoint, read_checkpoint_metadata, save_checkpoint
from engine.errors import CorruptFileError, NetworkFileNotFoundError, StyleDeckError
from engine.jobs import CancelToken, Progress, ProgressCallback
from engine.network_pickle import (NETWORK_KEYS, build_networks, load_network_pickle, read_network_pickle,
                                   training_info)

__all__ = ["convert_network", "file_sha256", "load_network", "network_info", "provenance",
           "provenance_lines", "sniff_format"]

FileFormat = Literal["pickle", "safetensors"]
_WHAT_WE_OPEN = "StyleDeck opens NVIDIA network pickles (.pkl) and StyleDeck checkpoints (.safetensors)"


def _check_exists(path: Path) -> None:
    if not path.is_file():
        what = "is a folder, not a network file" if path.is_dir() else "does not exist"
        raise NetworkFileNotFoundError(f"{path} {what}. {_WHAT_WE_OPEN}.")


def sniff_format(path: str | Path) -> FileFormat:
    """'pickle' or 'safetensors', judged from the first bytes; CorruptFileError saying what else it is."""
    path = Path(path)
    _check_exists(path)
    with open(path, "rb") as f:
        head = f.read(16)
        if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
            return "pickle"  # PROTO opcode, protocols 2-5
        if len(head) >= 9 and head[8:9] == b"{":
            # safetensors: little-endian u64 header length, then the JSON header
            (header_len,) = struct.unpack("<Q", head[:8])
            if 2 <= header_len <= 100_000_000:
                return "safetensors"
        if head[:1] in (b"c", b"(", b"}", b"]"):
            f.seek(-1, 2)
            if f.read(1) == b".":  # protocol 0/1 opcodes up to STOP: a (hand-written?) pickle
                return "pickle"
    if head[:4] == b"PK\x03\x04":
        raise CorruptFileError(f"{path.name} is a zip archive, most likely a torch.save checkpoint (such as "
                               f"rosinality's .pt files); {_WHAT_WE_OPEN}.")
    if not head:
        raise CorruptFileError(f"{path.name} is empty. {_WHAT_WE_OPEN}.")
    try:
        head.decode("utf-8")
        looks = "a text file"
    except UnicodeDecodeError:
        looks = "neither a pickle nor a safetensors file"
    raise CorruptFileError(f"{path.name} is {looks}. {_WHAT_WE_OPEN}.")


def load_network(path: str | Path, device: str | torch.device = "cpu", *, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> dict[str, nn.Module]:
    """The networks of a file, keyed G_ema / G / D (those present), in eval mode on `device`.

    Raises:
        NetworkFileNotFoundError: no such file.
        CorruptFileError: not a network file, truncated, or tensors that do not fit.
        UnsafePickleError: a pickle that asks for anything beyond data; nothing in it ran.
        UnsupportedNetworkError: a network class or argument StyleDeck cannot build.
    """
    path = Path(path)
    kind = sniff_format(path)
    if progress is not None:
        progress(Progress(0, 2, f"reading {path.name}"))
    try:
        if kind == "pickle":
            nets = load_network_pickle(path, device="cpu")
        else:
            nets, _ = load_checkpoint(path)
    except FileNotFoundError as exc:  # vanished between the check and the read
        raise NetworkFileNotFoundError(f"{path} does not exist. {_WHAT_WE_OPEN}.") from exc
    if cancel is not None:
        cancel.raise_if_cancelled()
    if progress is not None:
        progress(Progress(1, 2, f"moving {', '.join(nets)} to {device}"))
    for key, net in nets.items():
        net.to(device).eval()
        if key == "G_ema":
            net.requires_grad_(False)
    if progress is not None:
        progress(Progress(2, 2, f"loaded {path.name}"))
    return {key: nets[key] for key in NETWORK_KEYS if key in nets}


def network_info(G: nn.Module) -> dict[str, Any]:
    """What the Model info panel shows about a generator (or discriminator): family, sizes, counts."""
    family = family_of_module(G)
    info: dict[str, Any] = {
        "family": family,
        "class": f"{type(G).__module__}.{type(G).__qualname__}",
        "resolution": int(G.img_resolution),
        "img_channels": int(G.img_channels),
        "c_dim": int(G.c_dim),
        "num_params": sum(p.numel() for p in G.parameters()),
        "init_kwargs": dict(G.init_kwargs),
    }
    if family != "discriminator":
        info.update(z_dim=int(G.z_dim), w_dim=int(G.w_dim), num_ws=int(G.num_ws),
                    num_fp16_res=int(getattr(G.synthesis, "num_fp16_res", 0)))
        if family == "stylegan3":
            info["num_layers"] = int(G.synthesis.num_layers)
            # R configs use 1x1 kernels and radial filters; T configs 3x3 kernels
            info["config"] = "R" if G.init_kwargs.get("use_radial_filters") else "T"
    return info


def provenance(path: str | Path) -> dict[str, Any]:
    """What a network file records about where it came from: origin, training facts, weight storage.

    A StyleDeck checkpoint's metadata (no tensors read); an NVIDIA pickle's facts need the whole
    file read, so a pickle gives {} here (`convert` records them).
    """
    path = Path(path)
    if sniff_format(path) != "safetensors":
        return {}
    meta = read_checkpoint_metadata(path)
    return {key: meta[key] for key in ("origin", "training", "storage") if meta.get(key) is not None}


def provenance_lines(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) rows describing `provenance(...)` for people: dataset, training run, storage."""
    rows: list[tuple[str, str]] = []
    training = facts.get("training") or {}
    dataset = training.get("dataset")
    if isinstance(dataset, dict):
        details = ", ".join(str(x) for x in (dataset.get("variant"),
                                             dataset.get("count") and f"{dataset['count']:,} images",
                                             dataset.get("resolution") and f"{dataset['resolution']} px") if x)
        rows.append(("dataset", f"{dataset.get('name', '?')}" + (f" ({details})" if details else "")))
    elif isinstance(dataset, str):
        rows.append(("dataset", dataset))
    if "kimg" in training:
        run = f"{float(training['kimg']):.1f} kimg"
        if isinstance(training.get("training_time_s"), (int, float)):
            run += f" in {training['training_time_s'] / 3600:.1f} h"
        if training.get("machine"):
            run += f" on {training['machine']}"
        rows.append(("training", run))
    origin = facts.get("origin") or {}
    if origin.get("source"):
        at = f" at {float(origin['kimg']):.1f} kimg" if isinstance(origin.get("kimg"), (int, float)) else ""
        rows.append(("origin", f"{origin['source']}{at}"))
    if facts.get("storage") == "float16":
        rows.append(("weights", "stored as float16"))
    return rows


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def convert_network(src: str | Path, dst: str | Path, training: dict[str, Any] | None = None,
                    keep: Sequence[str] | None = None, half: bool = False,
                    origin: dict[str, Any] | None = None) -> Path:
    """Read `src` (an NVIDIA pickle or a checkpoint) and write its networks to the native file `dst`.

    `training` entries are added to the recorded training metadata; `keep` names the networks to
    write (e.g. G_ema and D, dropping the raw G); `half` stores weights as float16 (see checkpoint);
    `origin` replaces the recorded origin (e.g. a shipped model that a chain of fine-tunes began from).
    """
    src, dst = Path(src), Path(dst)
    kind = sniff_format(src)
    if kind == "pickle":
        data = read_network_pickle(src)
        nets = build_networks(data, src.name)
        origin = origin or {"source": src.name, "sha256": file_sha256(src), "format": "nvidia-pickle"}
        recorded = (nvidia := _jsonable_or_none(training_info(data))) and {"nvidia": nvidia}
    else:
        nets, meta = load_checkpoint(src)
        origin = origin or meta.get("origin")  # a re-save keeps the file it came from
        recorded = meta.get("training")
    if keep is not None:
        unknown = [key for key in keep if key not in nets]
        if unknown or not keep:
            raise StyleDeckError(f"{src.name} holds {', '.join(nets)}; it has no {', '.join(unknown) or 'network'} "
                                 "to keep.")
        nets = {key: nets[key] for key in keep}
    if training:
        recorded = {**(recorded or {}), **training}
    return save_checkpoint(dst, nets, origin=origin, training=recorded or None, half=half)


def _jsonable_or_none(info: dict[str, Any]) -> dict[str, Any] | None:
    """The entries of `info` that JSON can hold; a snapshot's odd extras are dropped, not fatal."""
    kept = {}
    for key, value in info.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        kept[key] = value
    return kept or None
