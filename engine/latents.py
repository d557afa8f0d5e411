"""Latents: seeds to z to w, truncation, style mixing over layer groups, and noise modes.

Vocabulary (conventions §10): `z [N, z_dim]`, `c [N, c_dim]`, `w [N, w_dim]`,
`ws [N, num_ws, w_dim]`. A seed gives the same z as NVIDIA's gen_images.py and
style_mixing.py, so a seed names the same face here as there.
"""
from __future__ import annotations

import base64
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch

from engine.checkpoint import family_of_module
from engine.errors import StyleDeckError
from engine.networks.layers import truncate

NoiseMode = Literal["const", "random", "none"]
NOISE_MODES: tuple[str, ...] = ("const", "random", "none")
GroupName = Literal["coarse", "middle", "fine"]
GROUP_NAMES: tuple[str, ...] = ("coarse", "middle", "fine")
MAX_SEED = 2**32 - 1  # np.random.RandomState accepts seeds in [0, 2**32 - 1]


def check_noise_mode(mode: str) -> NoiseMode:
    """`mode` if it is one of NOISE_MODES; otherwise a StyleDeckError listing them."""
    if mode not in NOISE_MODES:
        raise StyleDeckError(f"Unknown noise mode {mode!r}; use one of {', '.join(NOISE_MODES)}.")
    return mode  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Seeds, classes, ranges

def seed_to_z(seed: int, z_dim: int) -> torch.Tensor:
    """z [1, z_dim] float32 for `seed`, as NVIDIA's scripts draw it: RandomState(seed).randn(1, z_dim).

    NVIDIA passes the float64 array on and the mapping network casts it to float32 first, so
    the float32 value here gives bit-identical w.
    """
    if not 0 <= int(seed) <= MAX_SEED:
        raise StyleDeckError(f"Seed {seed} is out of range; seeds go from 0 to {MAX_SEED}.")
    z = np.random.RandomState(int(seed)).randn(1, z_dim)  # [1, z_dim] float64
    return torch.from_numpy(z).to(torch.float32)


def class_to_c(class_idx: int | None, c_dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """One-hot label c [1, c_dim] for a conditional network; [1, 0] for an unconditional one.

    Like gen_images.py: a conditional network needs a class; an unconditional one ignores it.
    """
    c = torch.zeros([1, c_dim], device=device)
    if c_dim == 0:
        return c
    if class_idx is None:
        raise StyleDeckError(f"This network is conditional ({c_dim} classes): choose a class (--class).")
    if not 0 <= class_idx < c_dim:
        raise StyleDeckError(f"Class {class_idx} is out of range; this network has classes 0 to {c_dim - 1}.")
    c[:, class_idx] = 1
    return c


def parse_range_list(text: str) -> list[int]:
    """NVIDIA's --seeds syntax: "0-3,7" -> [0, 1, 2, 3, 7]; ranges are inclusive, order is kept."""
    values: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if m := re.fullmatch(r"(\d+)\s*-\s*(\d+)", part):
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise StyleDeckError(f"Range {part!r} runs backwards; write it as {hi}-{lo}.")
            values.extend(range(lo, hi + 1))
        elif re.fullmatch(r"\d+", part):
            values.append(int(part))
        else:
            raise StyleDeckError(f"Cannot read {part!r} in {text!r}: expected numbers and ranges like 0-3,7.")
    return values


# ---------------------------------------------------------------------------------------------
# Layer groups

@dataclass(frozen=True)
class LayerGroup:
    """A named run of ws indices that one slider moves together."""
    name: GroupName
    layers: tuple[int, ...]  # indices into ws[:, num_ws]
    label: str               # what the slider shows: "4-8 px" (StyleGAN2) or "layers 0-4" (StyleGAN3)


def network_family(G: Any) -> Literal["stylegan2", "stylegan3"]:
    """'stylegan2' or 'stylegan3' for one of our generators; a StyleDeckError for anything else."""
    family = family_of_module(G)
    if family not in ("stylegan2", "stylegan3"):
        raise StyleDeckError(f"Latents need a generator; this is a {family}.")
    return family  # type: ignore[return-value]


def ws_resolutions(G: Any) -> list[int]:
    """StyleGAN2: the resolution each ws index styles, [num_ws].

    Block b{res} reads ws[i : i + num_conv + num_torgb] and advances i by num_conv, so its ToRGB
    shares an index with the next block's first conv. An index belongs to the lowest resolution
    that reads it: for 1024 px this gives StyleGAN's two indices per resolution (0-1 -> 4 px,
    2-3 -> 8 px, ..., 16-17 -> 1024 px), the convention the papers' coarse/middle/fine follow.
    """
    if network_family(G) != "stylegan2":
        raise StyleDeckError("Per-layer resolutions are defined for StyleGAN2 networks only.")
    synthesis = G.synthesis
    resolution_of: dict[int, int] = {}
    w_idx = 0
    for res in synthesis.block_resolutions:
        block = getattr(synthesis, f"b{res}")
        for i in range(w_idx, w_idx + block.num_conv + block.num_torgb):
            resolution_of.setdefault(i, res)
        w_idx += block.num_conv
    resolutions = [resolution_of[i] for i in range(len(resolution_of))]
    assert len(resolutions) == G.num_ws, (len(resolutions), G.num_ws)
    return resolutions


def _span(values: Sequence[int]) -> str:
    return f"{values[0]}" if values[0] == values[-1] else f"{values[0]}-{values[-1]}"


def layer_groups(G: Any) -> tuple[LayerGroup, ...]:
    """Coarse, middle and fine groups of ws indices, derived from the network.

    StyleGAN2: by the resolution each index styles (`ws_resolutions`): 4-8 px coarse (pose,
    face shape), 16-32 px middle (features, hair style), 64 px and up fine (colour, texture).
    StyleGAN3 has no per-resolution blocks (every layer works at its own sampling rate, which
    rises with the index), so its num_ws indices (0 = input, then one per layer, the last
    ToRGB) split into thirds by index: coarse [0, round(n/3)), middle [round(n/3), round(2n/3)),
    fine the rest; 16 indices give layers 0-4, 5-10, 11-15.
    A group that would hold no index (a 16 px StyleGAN2 has no fine layers) is left out.
    """
    groups: list[LayerGroup] = []
    if network_family(G) == "stylegan2":
        resolutions = ws_resolutions(G)
        bands = {"coarse": (0, 8), "middle": (16, 32), "fine": (64, 1 << 30)}
        for name in GROUP_NAMES:
            lo, hi = bands[name]
            layers = tuple(i for i, r in enumerate(resolutions) if lo <= r <= hi)
            if layers:
                res = sorted({resolutions[i] for i in layers})
                groups.append(LayerGroup(name, layers, f"{_span(res)} px"))  # type: ignore[arg-type]
    else:
        n = G.num_ws
        edges = [0, round(n / 3), round(2 * n / 3), n]
        for k, name in enumerate(GROUP_NAMES):
            layers = tuple(range(edges[k], edges[k + 1]))
            if layers:
                groups.append(LayerGroup(name, layers, f"layers {_span(layers)}"))  # type: ignore[arg-type]
    return tuple(groups)


def parse_styles(text: str, G: Any) -> list[int]:
    """ws indices from group names and ranges: "coarse", "coarse,fine", "0-6" or "0-3,8"; sorted."""
    groups = {g.name: g.layers for g in layer_groups(G)}
    layers: set[int] = set()
    for part in str(text).split(","):
        part = part.strip().lower()
        if part in groups:
            layers.update(groups[part])
        elif part in GROUP_NAMES:
            raise StyleDeckError(f"This {G.img_resolution} px network has no {part} layers; "
                                 f"its groups are {', '.join(groups)}.")
        else:
            layers.update(parse_range_list(part))
    bad = sorted(i for i in layers if i >= G.num_ws)
    if bad:
        raise StyleDeckError(f"Style layer {bad[0]} does not exist: this network has layers 0-{G.num_ws - 1} "
                             f"({', '.join(f'{g.name} {_span(g.layers)}' for g in layer_groups(G))}).")
    return sorted(layers)


# ---------------------------------------------------------------------------------------------
# Truncation and mixing

def mix_ws(sources_ws: torch.Tensor, weights: torch.Tensor | Sequence[Sequence[float]]) -> torch.Tensor:
    """Per-layer weighted sum of several sources: [S, L, w_dim] x [S, L] -> [1, L, w_dim].

    Weights are used as given; columns that sum to 1 interpolate, others extrapolate.
    """
    weights = torch.as_tensor(weights, dtype=sources_ws.dtype, device=sources_ws.device)
    if weights.shape != sources_ws.shape[:2]:
        raise StyleDeckError(f"Mixing weights have shape {list(weights.shape)}, but there are "
                             f"{sources_ws.shape[0]} sources of {sources_ws.shape[1]} layers.")
    return (weights[:, :, None] * sources_ws).sum(dim=0, keepdim=True)  # [1, L, w_dim]


def base_mix(num_sources: int, num_ws: int) -> tuple[tuple[float, ...], ...]:
    """Mixing weights [num_sources][num_ws] that show source 0 alone."""
    return tuple(tuple(1.0 if s == 0 else 0.0 for _ in range(num_ws)) for s in range(num_sources))


def set_mix_weight(mix: Sequence[Sequence[float]], source: int, layers: Sequence[int],
                   value: float) -> tuple[tuple[float, ...], ...]:
    """New weights with `source` at `value` on `layers` (a group's slider); other layers keep theirs.

    Source 0 is the base: on those layers it takes whatever the other sources leave, so each
    layer's weights still sum to 1 and the result stays an interpolation.
    """
    rows = [list(map(float, row)) for row in mix]
    if not 0 < source < len(rows):
        raise StyleDeckError(f"Source {source} cannot be weighted: there are {len(rows)} sources and 0 is the base.")
    for i in layers:
        rows[source][i] = float(value)
        rows[0][i] = 1.0 - sum(rows[s][i] for s in range(1, len(rows)))
    return tuple(tuple(row) for row in rows)


# ---------------------------------------------------------------------------------------------
# Sources and the cache

@dataclass(frozen=True)
class Source:
    """One face to mix from: a seed (with a class for conditional networks) or a stored latent.

    A stored latent (e.g. a projected w) is kept as float32 bytes so that the value is
    immutable, hashable and cheap to compare; its rows are 1 (a w, used for every layer) or
    num_ws (a W+ latent).
    """
    seed: int | None = None
    class_idx: int | None = None
    latent: bytes | None = None
    latent_shape: tuple[int, int] | None = None  # (rows, w_dim)
    label: str = ""

    def __post_init__(self) -> None:
        if (self.seed is None) == (self.latent is None):
            raise StyleDeckError("A source is either a seed or a stored latent, not both or neither.")
        if self.latent is not None:
            if self.latent_shape is None or len(self.latent) != 4 * self.latent_shape[0] * self.latent_shape[1]:
                raise StyleDeckError(f"Stored latent {self.label!r} has {len(self.latent)} bytes, "
                                     f"which does not match its shape {self.latent_shape}.")

    @classmethod
    def from_seed(cls, seed: int, class_idx: int | None = None) -> Source:
        return cls(seed=int(seed), class_idx=class_idx, label=f"seed {seed}")

    @classmethod
    def from_latent(cls, ws: torch.Tensor | np.ndarray, label: str = "latent") -> Source:
        """A stored w [w_dim] / [1, w_dim] or W+ [num_ws, w_dim] / [1, num_ws, w_dim]."""
        array = ws.detach().cpu().numpy() if isinstance(ws, torch.Tensor) else np.asarray(ws)
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2:
            raise StyleDeckError(f"A stored latent must be a w or W+ latent; got shape {list(np.shape(ws))}.")
        return cls(latent=array.tobytes(), latent_shape=(array.shape[0], array.shape[1]), label=label)

    def latent_array(self) -> np.ndarray:
        """The stored latent as float32 [rows, w_dim] (a copy)."""
        if self.latent is None:
            raise StyleDeckError(f"Source {self.label!r} is a seed, not a stored latent.")
        return np.frombuffer(self.latent, dtype=np.float32).reshape(self.latent_shape).copy()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the latent base64-encoded)."""
        d: dict[str, Any] = {"label": self.label}
        if self.seed is not None:
            d.update(seed=self.seed, class_idx=self.class_idx)
        else:
            d.update(latent=base64.b64encode(self.latent).decode("ascii"), latent_shape=list(self.latent_shape))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Source:
        if "latent" in d:
            return cls(latent=base64.b64decode(d["latent"]), latent_shape=tuple(d["latent_shape"]),
                       label=d.get("label", "latent"))
        return cls(seed=int(d["seed"]), class_idx=d.get("class_idx"), label=d.get("label", f"seed {d['seed']}"))


class LatentCache:
    """(seed, class, psi, cutoff) -> ws [num_ws, w_dim] on G's device, least recently used dropped.

    Seeds go through G.mapping exactly as G(z, c, truncation_psi, truncation_cutoff) would;
    stored latents are broadcast to num_ws layers and truncated with the same lerp. One thread
    (the renderer's) uses a cache; it returns copies, so callers may edit what they get.
    """

    def __init__(self, G: Any, max_entries: int = 512):
        self.G = G
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def device(self) -> torch.device:
        return G_device(self.G)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def ws(self, source: Source | int, psi: float = 1.0, cutoff: int | None = None) -> torch.Tensor:
        """ws [num_ws, w_dim] of `source` (a Source or a bare seed) with truncation psi/cutoff."""
        if not isinstance(source, Source):
            source = Source.from_seed(source)
        if source.latent is not None:
            return self._latent_ws(source, psi, cutoff)
        key = (source.seed, source.class_idx, float(psi), cutoff)
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
        else:
            self.misses += 1
            self._entries[key] = self._map(source, psi, cutoff)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return self._entries[key].clone()

    @torch.no_grad()
    def _map(self, source: Source, psi: float, cutoff: int | None) -> torch.Tensor:
        G, device = self.G, self.device
        z = seed_to_z(source.seed, G.z_dim).to(device)             # [1, z_dim]
        c = class_to_c(source.class_idx, G.c_dim, device)          # [1, c_dim]
        ws = G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)  # [1, num_ws, w_dim]
        return ws[0].detach()

    def _latent_ws(self, source: Source, psi: float, cutoff: int | None) -> torch.Tensor:
        G = self.G
        latent = torch.from_numpy(source.latent_array()).to(self.device)  # [rows, w_dim]
        if latent.shape[1] != G.w_dim or latent.shape[0] not in (1, G.num_ws):
            raise StyleDeckError(f"Stored latent {source.label!r} has shape {list(latent.shape)}; this network "
                                 f"needs [1, {G.w_dim}] or [{G.num_ws}, {G.w_dim}].")
        ws = latent.expand(G.num_ws, -1).clone()                          # [num_ws, w_dim]
        return truncate(ws, G.mapping.w_avg, psi, cutoff)


def G_device(G: Any) -> torch.device:
    """The device G's weights are on."""
    return next(iter(G.parameters())).device


def compose_ws(sources: Sequence[Source], mix: Sequence[Sequence[float]] | torch.Tensor,
               cache: LatentCache, psi: float = 1.0, cutoff: int | None = None) -> torch.Tensor:
    """W+ [1, num_ws, w_dim] of several sources mixed per layer: mix [num_sources][num_ws]."""
    if not sources:
        raise StyleDeckError("Nothing to show: there are no sources.")
    ws = torch.stack([cache.ws(s, psi, cutoff) for s in sources])  # [S, L, w_dim]
    return mix_ws(ws, mix)
