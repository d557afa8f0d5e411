"""EditSession history (apply, drags, undo/redo) and session files through the window."""
from __future__ import annotations

import dataclasses

import numpy as np

import engine
from app.session import EditSession
from app_helpers import SHOW_TIMEOUT_MS

T = SHOW_TIMEOUT_MS


def states(n: int = 4) -> list[engine.EditState]:
    base = engine.initial_state("net.pkl", 8, seeds=(0, 1))
    return [dataclasses.replace(base, psi=1.0 - i / 10) for i in range(n)]


def test_apply_undo_redo(qtbot):
    a, b, c, d = states()
    session = EditSession(a)
    seen, flags = [], []
    session.changed.connect(seen.append)
    session.undo_changed.connect(lambda u, r: flags.append((u, r)))
    session.apply(a)                       # equal state: no signal, no history
    assert seen == [] and not session.can_undo
    session.apply(b)
    session.apply(c)
    assert seen == [b, c] and flags[-1] == (True, False)
    session.undo()
    assert session.state == b and session.can_redo
    session.undo()
    assert session.state == a and not session.can_undo
    session.redo()
    assert session.state == b
    session.apply(d)                       # a new edit drops the redo branch
    assert not session.can_redo and flags[-1] == (True, False)
    session.undo()
    assert session.state == b
    session.undo(); session.undo()         # past the start: nothing happens
    assert session.state == a


def test_a_drag_is_one_undo_step(qtbot):
    a, b, c, d = states()
    session = EditSession(a)
    drags = []
    session.drag_changed.connect(drags.append)
    session.begin_drag()
    for s in (b, c, d):
        session.apply(s, record=False)
    session.end_drag()
    assert drags == [True, False] and session.state == d
    session.undo()
    assert session.state == a and not session.can_undo
    session.begin_drag()                   # a click without a move is no edit
    session.end_drag()
    assert not session.can_undo


def test_reset_clears_history(qtbot):
    a, b, _, _ = states()
    session = EditSession(a)
    session.apply(b)
    session.reset(a)
    assert session.state == a and not session.can_undo and not session.can_redo


def test_undo_restores_the_image_bit_for_bit(qtbot, main_window):
    w = main_window
    session, shown = w.session, w.render_controller.shown
    before = w.canvas.image().copy()
    with qtbot.waitSignal(shown, timeout=T):
        session.apply(dataclasses.replace(session.state, psi=0.0))
    assert not np.array_equal(w.canvas.image(), before)
    assert w.undo_action.isEnabled()
    with qtbot.waitSignal(shown, timeout=T):
        w.undo_action.trigger()
    assert np.array_equal(w.canvas.image(), before)
    with qtbot.waitSignal(shown, timeout=T):
        w.redo_action.trigger()
    assert w.session.state.psi == 0.0


def test_session_save_then_load_reproduces_the_image(qtbot, main_window, tmp_path):
    w = main_window
    w.source_strip.add_style_source(seed=21)
    qtbot.waitUntil(lambda: w.render_controller.idle, timeout=T)
    with qtbot.waitSignal(w.render_controller.shown, timeout=T):
        w.mixing_panel.group_slider(1, "middle").setValue(600)
    with qtbot.waitSignal(w.render_controller.shown, timeout=T):
        w.truncation_panel.psi_slider.setValue(70)
    saved_state, saved_image = w.session.state, w.canvas.image().copy()
    path = w.save_session(tmp_path / "look.styledeck.json")
    with qtbot.waitSignal(w.render_controller.shown, timeout=T):
        w.source_strip.set_seed(0, 1234)
    assert not np.array_equal(w.canvas.image(), saved_image)
    with qtbot.waitSignal(w.render_controller.shown, timeout=T):
        w.open_session(path)
    assert w.session.state == saved_state
    assert np.array_equal(w.canvas.image(), saved_image)


def test_session_opens_its_network_in_a_fresh_window(qtbot, main_window, open_window, sg3_path, tmp_path):
    path = main_window.save_session(tmp_path / "s.json")
    image = main_window.canvas.image().copy()
    other = open_window(sg3_path)         # a window on another network
    with qtbot.waitSignal(other.render_controller.shown, timeout=T):
        other.open_session(path)
    assert other.network_path == main_window.network_path
    assert np.array_equal(other.canvas.image(), image)


def test_a_corrupt_session_file_is_an_error_not_a_crash(qtbot, main_window, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "styledeck-session", "version": 1, "state": {"psi": "x"}}')
    state = main_window.session.state
    main_window.open_session(bad)
    assert main_window.error_box is not None and "bad.json" in main_window.last_error
    main_window.error_box.close()
    assert main_window.session.state == state
