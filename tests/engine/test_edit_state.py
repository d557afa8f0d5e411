"""EditState: invariants, the pure helpers, JSON and session files (malformed ones included)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from engine.edit_state import (EditState, from_json, group_amount, initial_state, load_session, save_session,
                               set_group_amount, to_json, with_base, with_source, without_source)
from engine.errors import CorruptFileError, StyleDeckError
from engine.latents import Source

NUM_WS = 10


def _three_sources() -> EditState:
    state = initial_state("nets/tiny.pkl", NUM_WS, seeds=(1, 2, 3))
    state = set_group_amount(state, 1, [0, 1, 2], 0.25)
    return set_group_amount(state, 2, [2, 3], 0.5)


# --- the value and its invariants -------------------------------------------------------------

def test_initial_state_shows_the_base_alone():
    state = initial_state("net.pkl", NUM_WS, seeds=(7, 8))
    assert state.sources == (Source.from_seed(7), Source.from_seed(8))
    assert state.mix == ((1.0,) * NUM_WS, (0.0,) * NUM_WS)
    assert (state.psi, state.cutoff, state.noise_mode, state.transform) == (1.0, None, "const", (0.0, 0.0, 0.0))
    assert state.num_ws == NUM_WS and state.base == Source.from_seed(7)


def test_states_are_frozen_hashable_values():
    a, b = _three_sources(), _three_sources()
    assert a == b and hash(a) == hash(b)
    assert a != dataclasses.replace(a, psi=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.psi = 0.3  # type: ignore[misc]
    # Lists given by a caller become tuples, so equality does not depend on the container.
    c = EditState("net.pkl", [Source.from_seed(1)], [[1.0] * NUM_WS], transform=[0, 0, 0])
    assert c == initial_state("net.pkl", NUM_WS, seeds=(1,))


@pytest.mark.parametrize("change, field", [
    (dict(mix=((1.0,) * NUM_WS,)), "mix"),                                     # 1 row, 2 sources
    (dict(mix=((0.5,) * NUM_WS, (0.6,) * NUM_WS)), "mix"),                     # column sums to 1.1
    (dict(mix=((1.5,) * NUM_WS, (-0.5,) * NUM_WS)), "mix"),                    # negative weight
    (dict(mix=((1.0,) * NUM_WS, (0.0,) * (NUM_WS - 1))), "mix"),               # ragged rows
    (dict(psi=2.5), "psi"), (dict(psi=float("nan")), "psi"),
    (dict(cutoff=NUM_WS + 1), "cutoff"), (dict(cutoff=True), "cutoff"),
    (dict(noise_mode="loud"), "noise_mode"),
    (dict(transform=(1.0, 2.0)), "transform"),
    (dict(sources=()), "sources"),
])
def test_invalid_states_are_refused_naming_the_field(change, field):
    state = initial_state("net.pkl", NUM_WS, seeds=(1, 2))
    with pytest.raises(StyleDeckError, match=field):
        dataclasses.replace(state, **change)


# --- helpers ---------------------------------------------------------------------------------

def test_set_group_amount_moves_only_those_layers_and_keeps_columns_summing_to_one():
    state = initial_state("net.pkl", NUM_WS, seeds=(1, 2))
    new = set_group_amount(state, 1, [0, 1, 2], 0.3)
    assert new.mix[1] == (0.3, 0.3, 0.3) + (0.0,) * (NUM_WS - 3)
    assert new.mix[0][:3] == pytest.approx((0.7, 0.7, 0.7)) and new.mix[0][3:] == (1.0,) * (NUM_WS - 3)
    assert group_amount(new, 1, [0, 1, 2]) == pytest.approx(0.3)
    assert group_amount(new, 1, [0, 1, 2, 3, 4, 5]) == pytest.approx(0.15)
    assert group_amount(new, 0, [5]) == 1.0
    assert state.mix[1] == (0.0,) * NUM_WS  # the old state is untouched


def test_other_style_sources_give_way_when_the_styles_ask_for_more_than_one():
    state = initial_state("net.pkl", 4, seeds=(1, 2, 3))
    state = set_group_amount(state, 1, [0, 1], 0.6)
    state = set_group_amount(state, 2, [1, 2], 0.8)
    # Layer 1: source 2 keeps 0.8 (where its slider was put); source 1 shrinks to the 0.2 left.
    assert state.mix[2][1] == 0.8 and state.mix[1][1] == pytest.approx(0.2) and state.mix[0][1] == 0.0
    assert state.mix[1][0] == 0.6 and state.mix[0][0] == pytest.approx(0.4)   # layer 0 untouched by source 2
    assert state.mix[2][2] == 0.8 and state.mix[0][2] == pytest.approx(0.2)
    for layer in range(4):
        assert sum(row[layer] for row in state.mix) == pytest.approx(1.0, abs=1e-12)
        assert min(row[layer] for row in state.mix) >= 0.0
    full = set_group_amount(state, 1, [0, 1, 2, 3], 1.0)
    assert full.mix[1] == (1.0,) * 4 and full.mix[0] == (0.0,) * 4 and full.mix[2] == (0.0,) * 4


def test_set_group_amount_refuses_the_base_bad_layers_and_amounts():
    state = initial_state("net.pkl", NUM_WS, seeds=(1, 2))
    with pytest.raises(StyleDeckError, match="base"):
        set_group_amount(state, 0, [0], 0.5)
    with pytest.raises(StyleDeckError, match="Layer 10"):
        set_group_amount(state, 1, [10], 0.5)
    with pytest.raises(StyleDeckError, match="0 to 1"):
        set_group_amount(state, 1, [0], 1.5)


def test_with_and_without_sources():
    state = initial_state("net.pkl", NUM_WS, seeds=(1,))
    added = with_source(state, Source.from_seed(5))
    assert added.sources[1] == Source.from_seed(5) and added.mix[1] == (0.0,) * NUM_WS
    mixed = set_group_amount(added, 1, [0, 1], 0.4)
    reseeded = with_source(mixed, Source.from_seed(6), 1)            # replace: weights stay
    assert reseeded.sources == (Source.from_seed(1), Source.from_seed(6)) and reseeded.mix == mixed.mix
    rebased = with_base(mixed, Source.from_seed(9))
    assert rebased.sources[0] == Source.from_seed(9) and rebased.mix == mixed.mix
    removed = without_source(mixed, 1)
    assert removed.sources == (Source.from_seed(1),) and removed.mix == ((1.0,) * NUM_WS,)
    with pytest.raises(StyleDeckError):
        without_source(mixed, 0)
    with pytest.raises(StyleDeckError):
        with_source(mixed, Source.from_seed(3), 5)


# --- JSON and session files ------------------------------------------------------------------

def _with_latent(state: EditState) -> EditState:
    latent = Source.from_latent(np.random.default_rng(0).standard_normal((NUM_WS, 8)).astype(np.float32), "photo")
    return dataclasses.replace(with_source(state, latent), psi=0.7, cutoff=4, noise_mode="none",
                               transform=(12.5, 0.1, -0.2))


def test_json_round_trip_is_exact():
    state = _with_latent(_three_sources())
    assert from_json(json.loads(json.dumps(to_json(state)))) == state


def test_session_save_then_load_gives_the_same_state(tmp_path):
    state = _with_latent(_three_sources())
    path = save_session(tmp_path / "edit.styledeck.json", state)
    document = json.loads(path.read_text())
    assert (document["format"], document["version"]) == ("styledeck-session", 1)
    assert load_session(path) == state
    assert [p.name for p in tmp_path.iterdir()] == ["edit.styledeck.json"]  # no temporary left behind


def _write(tmp_path, document) -> str:
    path = tmp_path / "bad.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def _good_document() -> dict:
    return {"format": "styledeck-session", "version": 1, "state": to_json(_three_sources())}


def _missing(field):
    def edit(d):
        del d["state"][field]
    return edit


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.update(version="1"), "version"),
    (lambda d: d.update(format="something-else"), "format"),
    (lambda d: d.pop("state"), "state"),
    (_missing("mix"), "mix"), (_missing("psi"), "psi"), (_missing("sources"), "sources"),
    (lambda d: d["state"]["mix"].pop(), "mix"),                                   # 2 rows for 3 sources
    (lambda d: d["state"]["mix"][1].append(0.0), "mix"),                          # ragged row
    (lambda d: d["state"]["mix"][1].__setitem__(0, "x"), "mix[1]"),
    (lambda d: d["state"].update(mix=5), "mix"),
    (lambda d: d["state"].update(psi=9.0), "psi"),
    (lambda d: d["state"].update(noise_mode="loud"), "noise_mode"),
    (lambda d: d["state"].update(transform=[1]), "transform"),
    (lambda d: d["state"]["sources"][1].pop("seed"), "sources[1]"),
    (lambda d: d["state"]["sources"].__setitem__(0, 3), "sources[0]"),
])
def test_malformed_sessions_are_corrupt_file_errors_naming_file_and_field(tmp_path, edit, field):
    document = _good_document()
    edit(document)
    with pytest.raises(CorruptFileError) as info:
        load_session(_write(tmp_path, document))
    assert "bad.json" in str(info.value) and repr(field) in str(info.value), str(info.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_files_that_are_not_json_sessions_are_corrupt(tmp_path, text):
    with pytest.raises(CorruptFileError, match="bad.json"):
        load_session(_write(tmp_path, text))
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CorruptFileError, match="bin.json"):
        load_session(tmp_path / "bin.json")


def test_missing_session_file_is_a_clear_error(tmp_path):
    with pytest.raises(StyleDeckError, match="no session file"):
        load_session(tmp_path / "nope.json")
