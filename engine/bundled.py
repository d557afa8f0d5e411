"""The networks shipped in models/: where they are and which one opens when none is named."""
from __future__ import annotations

import json
import os
from pathlib import Path

from engine.errors import StyleDeckError

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_SUFFIXES = (".safetensors", ".pkl")


def models_dir() -> Path:
    """Where bundled networks live: $STYLEDECK_MODELS, or models/ in the repository."""
    return Path(os.environ.get("STYLEDECK_MODELS", ROOT / "models"))


def bundled_networks() -> list[Path]:
    """The networks in models/ that exist, the one to open by default first: models/registry.json's
    default, then its other entries in order; without a registry, every checkpoint by name."""
    folder = models_dir()
    registry = folder / "registry.json"
    if registry.is_file():
        try:
            entries = json.loads(registry.read_text())
        except (OSError, ValueError) as exc:
            raise StyleDeckError(f"{registry} is not valid JSON ({exc}); fix it or pass --network.") from exc
        candidates = []
        if isinstance(entries, dict) and isinstance(entries.get("default"), str):
            candidates.append(entries["default"])
        models = entries.get("models", []) if isinstance(entries, dict) else entries
        for entry in models if isinstance(models, list) else []:
            if isinstance(entry, dict):
                candidates += [entry[k] for k in ("file", "path") if isinstance(entry.get(k), str)]
        found = list(dict.fromkeys(folder / name for name in candidates if (folder / name).is_file()))
        if found:
            return found
    return sorted(p for p in folder.glob("*") if p.suffix in CHECKPOINT_SUFFIXES and p.is_file()) \
        if folder.is_dir() else []


def default_network() -> Path:
    """The network to use when --network is not given (the first of bundled_networks()); a
    StyleDeckError when there is none."""
    networks = bundled_networks()
    if networks:
        return networks[0]
    raise StyleDeckError(f"No network is bundled in {models_dir()} yet. Pass --network with the path of an NVIDIA "
                         "network pickle (.pkl) or a StyleDeck checkpoint (.safetensors).")
