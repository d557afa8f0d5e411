"""Model blending: one generator made of a fine-tuned network and the base it was tuned from.

Artists keep a base model's structure (pose, layout: the coarse layers) and take a tuned model's
textures and colours (the fine layers). Here every synthesis block gets a weight t in [0, 1] and
its parameters and buffers become t * tuned + (1 - t) * base, where the block is

- StyleGAN2: one resolution, b4 ... b<R> (its conv0, conv1, torgb, noise, const), so
  `len(weights) == len(G.synthesis.block_resolutions)`;
- StyleGAN3: one layer, the input then L0 ... L<num_layers> (the last is ToRGB), so
  `len(weights) == G.num_ws`.

The mapping network (its layers and `w_avg`) takes the weight of the coarsest block, so it comes
from the base whenever the coarse layers do (the usual blend: the same z gives the base's layout),
and from the tuned network when everything does. `mapping_weight=` overrides this.

t = 0 and t = 1 copy the tensor exactly, so the all-base schedule renders the base network's
images bit for bit and the all-tuned one the tuned network's.

`blend_schedule(num_blocks, split, width)` makes the weights (a half-cosine ramp from base to
tuned); `BlendPreview` holds two network files for the Fine-tune panel's live preview (numpy
images out) and writes the result; `blend_files` is the CLI's one-shot version.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from engine.checkpoint import family_of_module, save_checkpoint
from engine.errors import StyleDeckError, UnsupportedNetworkError
from engine.images import to_uint8
from engine.latents import class_to_c, seed_to_z
from engine.loader import file_sha256, load_network

__all__ = ["BlendPreview", "BlendResult", "blend_block_names", "blend_files", "blend_networks", "blend_schedule"]


def _generator_family(G: nn.Module, role: str) -> str:
    family = family_of_module(G)
    if family not in ("stylegan2", "stylegan3"):
        raise UnsupportedNetworkError(f"the {role} network is a {family}; blending takes two generators")
    return family


def blend_block_names(G: nn.Module) -> list[str]:
    """Names of the blocks a blend weights, coarse to fine: ['b4', 'b8', ...] or ['input', 'L0_36_512', ...]."""
    if _generator_family(G, "given") == "stylegan2":
        return [f"b{res}" for res in G.synthesis.block_resolutions]
    return ["input", *G.synthesis.layer_names]


def blend_schedule(num_blocks: int, split: float, width: float) -> list[float]:
    """Weights of the tuned network per block, coarse to fine: 0 (base) below `split`, 1 (tuned) above.

    Block i sits at x_i = (i + 0.5) / num_blocks, the middle of its share of [0, 1]; so `split`
    is the share of blocks (coarse first) that come from the base: split 0 takes every block
    from the tuned network, split 1 every block from the base. Over `width` around the split
    the weight rises along a half cosine, t = (1 - cos(pi (x - lo) / width)) / 2 with
    lo = split - width / 2; it is exactly 0 below that band and exactly 1 above it, so blocks
    outside the band are pure copies. width 0 is a hard switch (a block at exactly the split is base).
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
    if not (math.isfinite(split) and 0.0 <= split <= 1.0):
        raise StyleDeckError(f"The split must be between 0 (all tuned) and 1 (all base); got {split}.")
    if not (math.isfinite(width) and width >= 0.0):
        raise StyleDeckError(f"The transition width must be 0 or more; got {width}.")
    lo, hi = split - width / 2, split + width / 2
    weights = []
    for i in range(num_blocks):
        x = (i + 0.5) / num_blocks
        if x <= lo:
            weights.append(0.0)
        elif x >= hi:
            weights.append(1.0)
        else:
            weights.append(0.5 - 0.5 * math.cos(math.pi * (x - lo) / width))
    return weights


def _block_prefixes(G: nn.Module) -> list[str]:
    """State-dict prefixes of the blocks, in the order of blend_block_names."""
    names = blend_block_names(G)
    return [f"synthesis.{name}." for name in names]


def _check_same_architecture(base: nn.Module, tuned: nn.Module) -> None:
    """UnsupportedNetworkError naming the first difference in class, keys or shapes."""
    fb, ft = _generator_family(base, "base"), _generator_family(tuned, "tuned")
    if fb != ft:
        raise UnsupportedNetworkError(f"Cannot blend a {fb} base with a {ft} tuned network: blending needs the "
                                      "tuned network to be a fine-tune of the base (same architecture).")
    sb, st = base.state_dict(), tuned.state_dict()
    only_base = [k for k in sb if k not in st]
    only_tuned = [k for k in st if k not in sb]
    if only_base or only_tuned:
        key, where = (only_base[0], "base") if only_base else (only_tuned[0], "tuned")
        raise UnsupportedNetworkError(
            f"Cannot blend networks of different architectures: {key} exists only in the {where} network "
            f"(base {base.img_resolution} px, tuned {tuned.img_resolution} px). The tuned network must be a "
            "fine-tune of the base.")
    for key, value in sb.items():
        if value.shape != st[key].shape or value.dtype != st[key].dtype:
            raise UnsupportedNetworkError(
                f"Cannot blend networks of different architectures: {key} is {list(value.shape)} "
                f"({value.dtype}) in the base and {list(st[key].shape)} ({st[key].dtype}) in the tuned network. "
                "The tuned network must be a fine-tune of the base.")


def _mix(base: torch.Tensor, tuned: torch.Tensor, t: float) -> torch.Tensor:
    """t * tuned + (1 - t) * base, exact copies at t = 0 and t = 1; other dtypes must agree."""
    if not tuned.is_floating_point():
        if not torch.equal(base, tuned):
            raise UnsupportedNetworkError("Cannot blend: the networks differ in a non-float buffer, so the "
                                          "tuned network is not a fine-tune of the base.")
        return tuned.clone()
    if t == 0.0:
        return base.clone()
    if t == 1.0:
        return tuned.clone()
    return torch.lerp(base, tuned, t)


@torch.no_grad()
def blend_networks(base: nn.Module, tuned: nn.Module, weights: Sequence[float], *,
                   mapping_weight: float | None = None, out: nn.Module | None = None) -> nn.Module:
    """A new generator: each synthesis block i is weights[i] * tuned + (1 - weights[i]) * base.

    Args:
        base: the network the tuned one started from (a StyleGAN2 or StyleGAN3 Generator).
        tuned: the fine-tuned network; same architecture as `base`.
        weights: one weight of the tuned network per block, coarse to fine (see blend_block_names),
            each in [0, 1]; `blend_schedule` makes a smooth ramp.
        mapping_weight: the mapping network's weight; default weights[0] (the coarsest block's).
        out: a network of the same architecture to write into (e.g. a live preview reused
            between blends); default a deep copy of `tuned`.

    Returns:
        The blended generator (`out`, or the copy) in eval mode, on `tuned`'s device; the
        inputs are left untouched.

    Raises:
        UnsupportedNetworkError: the two networks differ in family, keys or shapes.
    """
    _check_same_architecture(base, tuned)
    prefixes = _block_prefixes(tuned)
    weights = [float(t) for t in weights]
    if len(weights) != len(prefixes):
        raise ValueError(f"this network blends {len(prefixes)} blocks ({', '.join(blend_block_names(tuned))}); "
                         f"got {len(weights)} weights")
    mapping_weight = weights[0] if mapping_weight is None else float(mapping_weight)
    if not all(0.0 <= t <= 1.0 for t in [*weights, mapping_weight]):
        raise ValueError(f"blend weights must lie in [0, 1]; got {weights}, mapping {mapping_weight}")

    if out is None:
        out = copy.deepcopy(tuned)
    else:
        _check_same_architecture(tuned, out)
    device = next(iter(tuned.state_dict().values())).device
    base_state = {k: v.to(device) for k, v in base.state_dict().items()}
    blended: dict[str, torch.Tensor] = {}
    for key, value in tuned.state_dict().items():
        if key.startswith("mapping."):
            t = mapping_weight
        else:
            matches = [i for i, p in enumerate(prefixes) if key.startswith(p)]
            if len(matches) != 1:  # nothing outside mapping and the blocks in our networks
                raise UnsupportedNetworkError(f"Cannot blend: {key} belongs to no synthesis block")
            t = weights[matches[0]]
        blended[key] = _mix(base_state[key], value, t)
    out.load_state_dict(blended, strict=True)
    return out.eval().requires_grad_(False)


def _describe(path: Path) -> dict[str, Any]:
    return {"source": path.name, "sha256": file_sha256(path)}


@dataclass(frozen=True)
class BlendResult:
    """What a blend wrote: the checkpoint, the block names (coarse to fine) and their weights."""
    path: Path
    blocks: tuple[str, ...]
    weights: tuple[float, ...]


class BlendPreview:
    """Two network files held for repeated blends: the Fine-tune panel's live preview and `blend_files`.

    One blended network is kept and rewritten in place on every schedule change; images come back
    as uint8 numpy arrays, so the app needs no torch.
    """

    def __init__(self, base_path: str | Path, tuned_path: str | Path, device: str | torch.device = "cpu"):
        self.base_path, self.tuned_path = Path(base_path), Path(tuned_path)
        nets = {}
        for role, path in (("base", self.base_path), ("tuned", self.tuned_path)):
            loaded = load_network(path, device=device)
            G = loaded.get("G_ema", loaded.get("G"))
            if G is None:
                raise StyleDeckError(f"{path.name} (the {role} network) holds no generator.")
            nets[role] = G
        _check_same_architecture(nets["base"], nets["tuned"])
        self.base, self.tuned = nets["base"], nets["tuned"]
        self.blocks: tuple[str, ...] = tuple(blend_block_names(self.base))
        self._blended: nn.Module | None = None

    def blend(self, split: float, width: float) -> tuple[nn.Module, list[float]]:
        """(the blended generator, its weights) for a schedule; the network is reused between calls."""
        weights = blend_schedule(len(self.blocks), split, width)
        self._blended = blend_networks(self.base, self.tuned, weights, out=self._blended)
        return self._blended, weights

    @torch.no_grad()
    def render(self, split: float, width: float, seeds: Sequence[int], psi: float = 1.0,
               class_idx: int | None = None) -> np.ndarray:
        """Images [N, H, W, C] uint8 of `seeds` (as `generate` draws them, noise const) for a schedule."""
        G, _ = self.blend(split, width)
        device = next(G.parameters()).device
        c = class_to_c(class_idx, G.c_dim, device)                                    # [1, c_dim]
        images = [to_uint8(G(seed_to_z(seed, G.z_dim).to(device), c, truncation_psi=psi, noise_mode="const"))[0]
                  for seed in seeds]                                                  # one at a time, as generate
        return np.stack(images)

    def save(self, output: str | Path, split: float, width: float) -> BlendResult:
        """Write the blend as a native checkpoint (G_ema), its origin naming both files and the schedule."""
        G, weights = self.blend(split, width)
        origin = {"blend": {"base": _describe(self.base_path), "tuned": _describe(self.tuned_path),
                            "split": split, "width": width, "blocks": list(self.blocks),
                            "weights": weights, "mapping_weight": weights[0]}}
        path = save_checkpoint(output, {"G_ema": G}, origin=origin)
        return BlendResult(path, self.blocks, tuple(weights))


def blend_files(base_path: str | Path, tuned_path: str | Path, output: str | Path, split: float,
                width: float) -> BlendResult:
    """Blend the generators (G_ema, else G) of two network files into a native checkpoint at `output`.

    The checkpoint holds the blended network as G_ema; its origin records both sources (name and
    SHA-256) and the schedule (split, width, one weight per block, the mapping's weight).
    """
    return BlendPreview(base_path, tuned_path).save(output, split, width)
