"""The editing state: one immutable value per edit, pure helpers that make the next one, and
session files around its JSON form.

Equality is the change test, a list of states the undo history and a state the render request
(conventions §4). Every helper returns a new `EditState`; `__post_init__` keeps the invariants
(a mix row per source, a weight per ws layer, each layer's weights >= 0 summing to 1), so a
state that exists can be rendered by any network with that many ws layers.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from engine.errors import CorruptFileError, StyleDeckError
from engine.jobs import atomic_write
from engine.latents import NOISE_MODES, Source, base_mix, set_mix_weight

__all__ = ["EditState", "SESSION_FORMAT", "SESSION_VERSION", "from_json", "group_amount", "initial_state",
           "load_session", "save_session", "set_group_amount", "to_json", "with_base", "with_source",
           "without_source"]

SESSION_FORMAT = "styledeck-session"
SESSION_VERSION = 1
PSI_RANGE = (-1.0, 2.0)
_SUM_TOLERANCE = 1e-6  # float sums of a few weights drift by ~1e-16; anything past this is a real error


class _FieldError(StyleDeckError):
    """An invalid EditState field; `field` lets session loading name it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def _finite(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _FieldError(field, f"expected a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class EditState:
    """Everything that decides the image on screen (for a given network file)."""
    network: str                                 # path of the network file ("" when none)
    sources: tuple[Source, ...]                  # [0] is the base; others are style sources
    mix: tuple[tuple[float, ...], ...]           # [num_sources][num_ws]; each column >= 0 and sums to 1
    psi: float = 1.0                             # truncation; 1 is off; range -1..2
    cutoff: int | None = None                    # truncate only layers < cutoff; None = all
    noise_mode: str = "const"                    # const | random | none
    transform: tuple[float, float, float] = (0.0, 0.0, 0.0)  # StyleGAN3 input: rotate degrees, tx, ty

    def __post_init__(self) -> None:
        # Normalise containers (lists from JSON or callers) to tuples, so equality and hashing work.
        if not isinstance(self.network, str):
            raise _FieldError("network", f"expected a path string, got {type(self.network).__name__}")
        sources = tuple(self.sources)
        if not sources:
            raise _FieldError("sources", "there must be at least the base source")
        bad = [i for i, s in enumerate(sources) if not isinstance(s, Source)]
        if bad:
            raise _FieldError(f"sources[{bad[0]}]", f"expected a Source, got {type(sources[bad[0]]).__name__}")
        object.__setattr__(self, "sources", sources)

        if isinstance(self.mix, (str, bytes)) or len(self.mix) != len(sources):
            raise _FieldError("mix", f"has {len(self.mix)} rows but there are {len(sources)} sources")
        mix = tuple(tuple(_finite(v, f"mix[{s}]") for v in row) for s, row in enumerate(self.mix))
        num_ws = len(mix[0])
        if num_ws == 0 or any(len(row) != num_ws for row in mix):
            raise _FieldError("mix", f"rows must all have one weight per ws layer; got lengths "
                                     f"{[len(row) for row in mix]}")
        for layer in range(num_ws):
            column = [row[layer] for row in mix]
            if min(column) < -_SUM_TOLERANCE:
                raise _FieldError("mix", f"layer {layer} has a negative weight {min(column)}")
            if abs(sum(column) - 1.0) > _SUM_TOLERANCE:
                raise _FieldError("mix", f"the weights of layer {layer} sum to {sum(column)}, not 1")
        object.__setattr__(self, "mix", mix)

        psi = _finite(self.psi, "psi")
        if not PSI_RANGE[0] <= psi <= PSI_RANGE[1]:
            raise _FieldError("psi", f"{psi} is outside {PSI_RANGE[0]}..{PSI_RANGE[1]}")
        object.__setattr__(self, "psi", psi)
        if self.cutoff is not None:
            if isinstance(self.cutoff, bool) or not isinstance(self.cutoff, int) or not 0 <= self.cutoff <= num_ws:
                raise _FieldError("cutoff", f"expected None or a layer count 0..{num_ws}, got {self.cutoff!r}")
        if self.noise_mode not in NOISE_MODES:
            raise _FieldError("noise_mode", f"{self.noise_mode!r} is not one of {', '.join(NOISE_MODES)}")
        if isinstance(self.transform, (str, bytes)) or len(self.transform) != 3:
            raise _FieldError("transform", f"expected (rotate, tx, ty), got {self.transform!r}")
        object.__setattr__(self, "transform", tuple(_finite(v, "transform") for v in self.transform))

    @property
    def num_ws(self) -> int:
        return len(self.mix[0])

    @property
    def base(self) -> Source:
        return self.sources[0]


# ---------------------------------------------------------------------------------------------
# Pure helpers: state in, new state out

def initial_state(network: str, num_ws: int, seeds: Sequence[int] = (0,), class_idx: int | None = None) -> EditState:
    """The first seed as base, the others as style sources with weight 0 (the base alone shows)."""
    if not seeds:
        raise StyleDeckError("An editing state needs at least one seed (the base).")
    sources = tuple(Source.from_seed(s, class_idx) for s in seeds)
    return EditState(network=str(network), sources=sources, mix=base_mix(len(sources), num_ws))


def _check_index(state: EditState, index: int, allow_base: bool) -> None:
    lo = 0 if allow_base else 1
    if not lo <= index < len(state.sources):
        what = "source" if allow_base else "style source"
        raise StyleDeckError(f"There is no {what} {index}: the state has sources 0-{len(state.sources) - 1}"
                             + ("" if allow_base else " and 0 is the base") + ".")


def with_source(state: EditState, source: Source, index: int | None = None) -> EditState:
    """index None: add `source` as a new style source with weight 0 everywhere (the image is unchanged);
    otherwise replace the source at `index` (0 = the base), keeping its weights."""
    if index is None:
        mix = state.mix + (tuple(0.0 for _ in range(state.num_ws)),)
        return dataclasses.replace(state, sources=state.sources + (source,), mix=mix)
    _check_index(state, index, allow_base=True)
    sources = state.sources[:index] + (source,) + state.sources[index + 1:]
    return dataclasses.replace(state, sources=sources)


def without_source(state: EditState, index: int) -> EditState:
    """Remove style source `index` (>= 1); the base takes back its weights."""
    _check_index(state, index, allow_base=False)
    rows = [list(row) for row in state.mix]
    rows[0] = [b + s for b, s in zip(rows[0], rows[index])]
    del rows[index]
    sources = state.sources[:index] + state.sources[index + 1:]
    return dataclasses.replace(state, sources=sources, mix=tuple(tuple(r) for r in rows))


def with_base(state: EditState, source: Source) -> EditState:
    """Replace the base source (e.g. a new seed typed in the strip), keeping all weights."""
    return with_source(state, source, 0)


def _check_layers(state: EditState, layers: Sequence[int]) -> list[int]:
    layers = [int(i) for i in layers]
    bad = [i for i in layers if not 0 <= i < state.num_ws]
    if bad:
        raise StyleDeckError(f"Layer {bad[0]} does not exist; this state has ws layers 0-{state.num_ws - 1}.")
    return layers


def set_group_amount(state: EditState, source_index: int, layers: Sequence[int], amount: float) -> EditState:
    """`amount` (0..1) of style source `source_index` (>= 1) in `layers`; the base gives up what the sources take.

    The moved source keeps exactly `amount` (the slider stays where it was put); where the style
    sources of a layer would then ask for more than 1 in total, the OTHER style sources on that
    layer are scaled down proportionally so the styles sum to 1 and the base gets 0.
    """
    _check_index(state, source_index, allow_base=False)
    layers = _check_layers(state, layers)
    amount = _finite(amount, "amount")
    if not 0.0 <= amount <= 1.0:
        raise StyleDeckError(f"A mixing amount goes from 0 to 1; got {amount}.")
    rows = [list(row) for row in state.mix]
    others = [s for s in range(1, len(rows)) if s != source_index]
    for i in layers:
        taken = sum(rows[s][i] for s in others)
        if amount + taken > 1.0 and taken > 0:
            scale = (1.0 - amount) / taken
            for s in others:
                rows[s][i] *= scale
    mix = set_mix_weight(rows, source_index, layers, amount)  # base = 1 - the style sources
    # Scaling can leave the base at -1e-17 instead of 0: clamp that float dust.
    mix = tuple(tuple(max(0.0, w) for w in row) for row in mix)
    return dataclasses.replace(state, mix=mix)


def group_amount(state: EditState, source_index: int, layers: Sequence[int]) -> float:
    """Mean weight of source `source_index` over `layers`: what a group slider shows."""
    _check_index(state, source_index, allow_base=True)
    layers = _check_layers(state, layers)
    if not layers:
        return 0.0
    return sum(state.mix[source_index][i] for i in layers) / len(layers)


# ---------------------------------------------------------------------------------------------
# JSON and session files

def to_json(state: EditState) -> dict[str, Any]:
    """JSON-ready dict of `state` (floats round-trip exactly through json)."""
    return {
        "network": state.network,
        "sources": [s.to_dict() for s in state.sources],
        "mix": [list(row) for row in state.mix],
        "psi": state.psi,
        "cutoff": state.cutoff,
        "noise_mode": state.noise_mode,
        "transform": list(state.transform),
    }


_REQUIRED = ("network", "sources", "mix", "psi", "cutoff", "noise_mode", "transform")


def from_json(d: Mapping[str, Any], where: str = "The session data") -> EditState:
    """EditState from `to_json`'s dict; anything malformed -> CorruptFileError naming `where` and the field."""
    def corrupt(field: str, problem: str) -> CorruptFileError:
        return CorruptFileError(f"{where} is damaged: field {field!r} {problem}. "
                                "Save the session again or choose another file.")

    if not isinstance(d, Mapping):
        raise corrupt("state", f"should be an object, not {type(d).__name__}")
    for field in _REQUIRED:
        if field not in d:
            raise corrupt(field, "is missing")
    if not isinstance(d["sources"], list):
        raise corrupt("sources", "should be a list")
    sources = []
    for i, item in enumerate(d["sources"]):
        try:
            if not isinstance(item, Mapping):
                raise TypeError(f"expected an object, got {type(item).__name__}")
            sources.append(Source.from_dict(dict(item)))
        except (KeyError, TypeError, ValueError, StyleDeckError) as exc:
            raise corrupt(f"sources[{i}]", f"is not a valid source ({exc})") from exc
    mix = d["mix"]
    if not isinstance(mix, list) or not all(isinstance(row, list) for row in mix):
        raise corrupt("mix", "should be a list of lists of weights")
    transform = d["transform"]
    if not isinstance(transform, list):
        raise corrupt("transform", "should be a list [rotate, tx, ty]")
    try:
        return EditState(network=d["network"], sources=tuple(sources), mix=tuple(tuple(r) for r in mix),
                         psi=d["psi"], cutoff=d["cutoff"], noise_mode=d["noise_mode"], transform=tuple(transform))
    except _FieldError as exc:
        raise corrupt(exc.field, str(exc).split(": ", 1)[-1]) from exc


def save_session(path: str | os.PathLike, state: EditState) -> Path:
    """Write `state` as a versioned session file, atomically."""
    path = Path(path)
    document = {"format": SESSION_FORMAT, "version": SESSION_VERSION, "state": to_json(state)}
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return path


def load_session(path: str | os.PathLike) -> EditState:
    """The state in a session file; anything malformed -> CorruptFileError naming the file and the field."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise StyleDeckError(f"There is no session file at {path}.") from exc
    except OSError as exc:
        raise StyleDeckError(f"Cannot read the session file {path}: {exc.strerror or exc}.") from exc
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{path.name} is not a StyleDeck session: it is not text (JSON).") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise CorruptFileError(f"{path.name} is not a StyleDeck session: it is not valid JSON ({exc}).") from exc
    if not isinstance(document, dict) or document.get("format") != SESSION_FORMAT:
        raise CorruptFileError(f"{path.name} is not a StyleDeck session: field 'format' should be "
                               f"{SESSION_FORMAT!r}.")
    version = document.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CorruptFileError(f"{path.name} is damaged: field 'version' should be a whole number, got {version!r}.")
    if version != SESSION_VERSION:
        newer = " (written by a newer StyleDeck; update it to open this file)" if version > SESSION_VERSION else ""
        raise CorruptFileError(f"{path.name}: field 'version' is {version}, but this StyleDeck reads session "
                               f"version {SESSION_VERSION}{newer}.")
    if "state" not in document:
        raise CorruptFileError(f"{path.name} is damaged: field 'state' is missing.")
    return from_json(document["state"], where=path.name)
