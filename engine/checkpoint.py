"""StyleDeck's native network file: one `.safetensors` with the weights and a JSON description.

Layout: tensors keyed `G_ema.<name>`, `G.<name>`, `D.<name>` (NVIDIA's state-dict names under the
network's key); the header metadata entry `styledeck` holds JSON:

    {"format": "styledeck-checkpoint", "version": 1,
     "networks": {"G_ema": {"family": "stylegan2", "class": "engine.networks.stylegan2.Generator",
                            "init_kwargs": {...}}, ...},
     "origin": {"source": "ffhq.pkl", "sha256": "..."} | null,
     "training": {...} | null, "storage": "float32" | "float16"}

`storage` "float16" means the floating tensors were halved to ship a smaller file; loading casts
them back into the float32 network, so only the last bits of each weight differ.

A network is rebuilt from its family and init kwargs (NVIDIA's names, verbatim) and loaded
strictly, so a file edited by hand or written by a newer version fails loudly, not subtly.
safetensors holds data only; nothing in the file can run.
"""
from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from engine.errors import CorruptFileError, UnsupportedNetworkError
from engine.jobs import atomic_write

__all__ = ["FORMAT", "FORMAT_VERSION", "build_network", "family_of_module", "load_checkpoint",
           "network_class", "read_checkpoint_metadata", "save_checkpoint"]

FORMAT = "styledeck-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "styledeck"

# family -> (module, class) of ours that builds it; fixed names, never taken from a file
_CLASSES = {
    "stylegan2": ("engine.networks.stylegan2", "Generator"),
    "stylegan3": ("engine.networks.stylegan3", "Generator"),
    "discriminator": ("engine.networks.discriminator", "Discriminator"),
}


def network_class(family: str) -> type[nn.Module]:
    """Our class for a network family: 'stylegan2', 'stylegan3' or 'discriminator'."""
    if family not in _CLASSES:
        raise UnsupportedNetworkError(f"unknown network family {family!r}; StyleDeck builds "
                                      f"{', '.join(_CLASSES)}")
    module, name = _CLASSES[family]
    return getattr(importlib.import_module(module), name)


def family_of_module(net: nn.Module) -> str:
    """The family of one of our network modules."""
    for family in _CLASSES:
        if type(net) is network_class(family):
            return family
    raise UnsupportedNetworkError(f"{type(net).__module__}.{type(net).__qualname__} is not a network StyleDeck "
                                  "can save; it saves StyleGAN2/StyleGAN3 Generators and Discriminators")


def load_state_strict(net: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """net.load_state_dict(state, strict=True), with a CorruptFileError naming the key and shapes on mismatch."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected {_some(unexpected)}")
        raise CorruptFileError(f"{where} does not match the network its recorded arguments describe: "
                               f"{'; '.join(parts)}. The file is damaged or was written by other code.")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CorruptFileError(f"{where}: {key} has shape {list(state[key].shape)} in the file, but the "
                                   f"network its recorded arguments describe needs {list(value.shape)}. "
                                   "The file is damaged or was written by other code.")
    net.load_state_dict(state, strict=True)


def _some(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def build_network(family: str, init_kwargs: Mapping[str, Any], state: Mapping[str, torch.Tensor], where: str,
                  init_args: tuple = ()) -> nn.Module:
    """Our `family` network built from NVIDIA's init args/kwargs and loaded strictly with `state`."""
    cls = network_class(family)
    try:
        net = cls(*init_args, **init_kwargs)
    except UnsupportedNetworkError as exc:
        raise UnsupportedNetworkError(f"{where}: {exc}") from exc
    except TypeError as exc:  # an argument our constructor does not take; the message names it
        raise UnsupportedNetworkError(f"{where}: StyleDeck's {family} network cannot be built from the "
                                      f"recorded arguments ({exc}); it may come from a newer or modified "
                                      "StyleGAN.") from exc
    load_state_strict(net, state, where)
    return net


def _jsonable(value: Any, where: str) -> Any:
    """Init kwargs as JSON: numpy scalars -> numbers, tuples -> lists; anything else non-JSON is an error."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}, which JSON cannot hold")
        return value
    raise ValueError(f"{where} is a {type(value).__name__}, which a checkpoint cannot record")


def save_checkpoint(path: str | Path, networks: Mapping[str, nn.Module], origin: Mapping[str, Any] | None = None,
                    training: Mapping[str, Any] | None = None, half: bool = False) -> Path:
    """Write `networks` (e.g. {'G_ema': G}) to one .safetensors file, atomically; returns the path.

    `half` stores floating tensors as float16 (half the size; for shipping, not for resuming training).
    """
    path = Path(path)
    if not networks:
        raise ValueError("save_checkpoint needs at least one network")
    tensors: dict[str, torch.Tensor] = {}
    described = {}
    for key, net in networks.items():
        if "." in key or not key:
            raise ValueError(f"network key {key!r} must be a plain name such as 'G_ema'")
        described[key] = {
            "family": family_of_module(net),
            "class": f"{type(net).__module__}.{type(net).__qualname__}",
            "init_kwargs": _jsonable(net.init_kwargs, f"{key}.init_kwargs"),
        }
        for name, value in net.state_dict().items():
            # clone: safetensors refuses tensors that share memory (e.g. one filter buffer used twice)
            value = value.detach().to("cpu")
            if half and value.is_floating_point():
                value = value.to(torch.float16)
            tensors[f"{key}.{name}"] = value.contiguous().clone()
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "networks": described,
            "origin": _jsonable(origin, "origin") if origin is not None else None,
            "training": _jsonable(training, "training") if training is not None else None,
            "storage": "float16" if half else "float32"}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta), "format": FORMAT})
    return path


def _unreadable(path: Path, exc: Exception) -> CorruptFileError:
    return CorruptFileError(f"{path.name} is not a readable safetensors file (truncated or damaged?): {exc}")


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON description of a StyleDeck checkpoint, checked for format and version; no tensors read."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise _unreadable(path, exc) from exc
    if METADATA_KEY not in header:
        raise CorruptFileError(f"{path.name} is a safetensors file but not a StyleDeck checkpoint (no "
                               f"'{METADATA_KEY}' description in its header)")
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path.name}: its description is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptFileError(f"{path.name}: its description is not a {FORMAT} description")
    if not isinstance(meta.get("version"), int) or meta["version"] > FORMAT_VERSION:
        raise UnsupportedNetworkError(f"{path.name} is a StyleDeck checkpoint of version {meta.get('version')}; "
                                      f"this StyleDeck reads up to version {FORMAT_VERSION}. Update StyleDeck.")
    networks = meta.get("networks")
    if not isinstance(networks, dict) or not networks or not all(
            isinstance(d, dict) and isinstance(d.get("family"), str) and isinstance(d.get("init_kwargs"), dict)
            for d in networks.values()):
        raise CorruptFileError(f"{path.name}: its description lists no networks, or one without family "
                               "and init_kwargs")
    return meta


def load_checkpoint(path: str | Path) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """(networks by key, metadata) of a StyleDeck checkpoint; networks on the CPU in eval mode."""
    path = Path(path)
    meta = read_checkpoint_metadata(path)
    states: dict[str, dict[str, torch.Tensor]] = {key: {} for key in meta["networks"]}
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                key, _, rest = name.partition(".")
                if key not in states or not rest:
                    raise CorruptFileError(f"{path.name} holds the tensor {name}, which belongs to no network "
                                           "in its description")
                states[key][rest] = f.get_tensor(name)
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc
    nets = {}
    for key, desc in meta["networks"].items():
        net = build_network(desc["family"], desc["init_kwargs"], states[key], f"{path.name}: {key}")
        net.eval()
        if key == "G_ema":
            net.requires_grad_(False)
        nets[key] = net
    return nets, meta
