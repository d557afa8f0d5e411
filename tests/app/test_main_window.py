"""The window end to end: real widgets, the real engine, tiny networks; waits on signals, never sleeps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent, QGuiApplication, QKeySequence
from PySide6.QtTest import QTest

import engine
from app_helpers import SHOW_TIMEOUT_MS, direct_renderer

T = SHOW_TIMEOUT_MS


def add_style_source(qtbot, window, seed: int = 7) -> int:
    """Add a style source through the source strip; the image stays (its weights start at 0)."""
    index = window.source_strip.add_style_source(seed=seed)
    qtbot.waitUntil(lambda: window.render_controller.idle, timeout=T)
    return index


def test_group_slider_changes_exactly_its_layers_and_the_image(qtbot, main_window):
    w = main_window
    index = add_style_source(qtbot, w, seed=7)
    assert index == 1 and len(w.session.state.sources) == 2
    before_ws, before_image = w.render_controller.last_ws.copy(), w.canvas.image().copy()
    coarse = next(g for g in w.groups if g.name == "coarse").layers
    slider = w.mixing_panel.group_slider(1, "coarse")
    with qtbot.waitSignal(w.render_controller.shown, timeout=T) as blocker:
        slider.setValue(slider.maximum())
    result = blocker.args[0]
    assert result is w.render_controller.last_result and not result.preview
    changed = sorted(np.flatnonzero(np.any(result.ws != before_ws, axis=1)))
    assert changed == list(coarse)
    # the coarse rows are now the style source's own ws (amount 1), the rest the base's
    renderer = direct_renderer(w.network_path)
    style = renderer.compose(engine.initial_state(w.network_path, renderer.num_ws, seeds=(7,)))
    np.testing.assert_array_equal(result.ws[list(coarse)], style[list(coarse)])
    assert not np.array_equal(w.canvas.image(), before_image)
    assert np.array_equal(w.canvas.image(), renderer.render(w.session.state).image)


def test_psi_zero_shows_the_w_avg_image(qtbot, main_window):
    w = main_window
    with qtbot.waitSignal(w.render_controller.shown, timeout=T) as blocker:
        w.truncation_panel.psi_slider.setValue(0)
    assert w.session.state.psi == 0.0
    G = engine.load_network(w.network_path)["G_ema"]
    w_avg = G.mapping.w_avg.numpy()
    assert np.array_equal(blocker.args[0].ws, np.broadcast_to(w_avg, blocker.args[0].ws.shape))
    with torch.no_grad():
        img = G.synthesis(torch.from_numpy(w_avg)[None, None].repeat(1, G.num_ws, 1), noise_mode="const")
    assert np.array_equal(w.canvas.image(), engine.to_rgb(engine.to_uint8(img)[0]))


def test_corrupt_file_shows_an_error_and_keeps_the_model(qtbot, main_window, tmp_path):
    w = main_window
    good = w.network_path
    bad = tmp_path / "broken.pkl"
    bad.write_bytes(b"\x80\x04not really a pickle" * 10)
    with qtbot.waitSignal(w.loader.failed, timeout=T):
        w.open_network(bad)
    box = w.error_box
    assert box is not None and box.isVisible() and not box.isModal()
    assert "broken.pkl" in box.text() and "broken.pkl" in w.last_error
    assert "broken.pkl" in w.statusBar().currentMessage()
    box.close()
    assert w.network_path == good
    before = w.canvas.image().copy()
    with qtbot.waitSignal(w.render_controller.shown, timeout=T):
        w.source_strip.set_seed(0, 123)  # the old model still renders
    assert not np.array_equal(w.canvas.image(), before)


def test_stylegan3_window_and_transform(qtbot, open_window, sg3_path):
    w = open_window(sg3_path)
    assert [g.label.startswith("layers") for g in w.groups] == [True] * len(w.groups)
    assert w.noise_panel.rotate_box.isEnabled()
    before = w.canvas.image().copy()
    with qtbot.waitSignal(w.render_controller.shown, timeout=T):
        w.noise_panel.rotate_box.setValue(30.0)
    assert w.session.state.transform[0] == 30.0
    assert not np.array_equal(w.canvas.image(), before)
    assert np.array_equal(w.canvas.image(), direct_renderer(sg3_path).render(w.session.state).image)


def test_status_bar_shows_render_time_and_fps(qtbot, main_window):
    w = main_window
    with qtbot.waitSignal(w.render_controller.shown, timeout=T):
        w.source_strip.set_seed(0, 5)
    text = w.render_label.text()
    assert "ms" in text and "fps" in text and "32×32" in text
    assert w.render_controller.fps > 0


def test_grid_mode_shows_the_mixing_grid(qtbot, main_window):
    w = main_window
    w.mixing_panel.grid_rows_edit.setText("1,2")
    w.mixing_panel.grid_cols_edit.setText("3-5")
    with qtbot.waitSignal(w.render_controller.shown, timeout=T) as blocker:
        w.mixing_panel.grid_button.click()
    assert w.grid_action.isChecked()
    assert w.canvas.image().shape == (3 * 32, 4 * 32, 3)
    layers = w.mixing_panel.grid_layers()
    expected = direct_renderer(w.network_path).render_grid([1, 2], [3, 4, 5], layers)
    assert np.array_equal(blocker.args[0].image, expected.image)
    with qtbot.waitSignal(w.render_controller.shown, timeout=T):
        w.grid_action.setChecked(False)
    assert w.canvas.image().shape == (32, 32, 3)


def test_save_and_copy_image(qtbot, main_window, tmp_path):
    w = main_window
    saved = w.save_image(tmp_path / "face.png")
    state, ws = engine.read_image_recipe(saved)
    assert state == w.session.state and np.array_equal(ws, w.render_controller.last_ws)
    w.copy_image()
    qimage = QGuiApplication.clipboard().image()
    assert (qimage.width(), qimage.height()) == (32, 32)
    r, g, b = w.canvas.image()[3, 5]
    assert qimage.pixelColor(5, 3).getRgb()[:3] == (r, g, b)


def test_menus_have_standard_shortcuts(main_window):
    w = main_window
    assert w.undo_action.shortcut() == QKeySequence(QKeySequence.Undo)
    assert w.redo_action.shortcut() == QKeySequence(QKeySequence.Redo)
    titles = [a.text() for a in w.menuBar().actions()]
    assert titles == ["&File", "&Edit", "&View"]
    assert all(w.docks[k].isVisible() for k in ("mixing", "truncation", "noise", "model"))


def test_dropping_a_network_file_opens_it(qtbot, main_window, sg3_path):
    w = main_window
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(sg3_path))])
    event = QDropEvent(QPointF(10, 10), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    with qtbot.waitSignal(w.render_controller.shown, timeout=T):
        w.dropEvent(event)
    assert w.network_path == str(sg3_path)
    assert w.canvas.image().shape == (16, 16, 3)
    assert str(sg3_path) == w.model_panel.recent_files()[0]


def test_recent_menu_lists_opened_networks(qtbot, main_window, sg3_path):
    w = main_window
    with qtbot.waitSignal(w.render_controller.shown, timeout=T):
        w.open_network(sg3_path)
    w._fill_recent()
    paths = [a.text() for a in w.recent_menu.actions()]
    assert paths[:2] == [str(sg3_path), w.model_panel.recent_files()[1]]
    with qtbot.waitSignal(w.render_controller.shown, timeout=T):
        w.recent_menu.actions()[1].trigger()   # back to the StyleGAN2
    assert w.canvas.image().shape == (32, 32, 3)


def test_canvas_fit_and_actual_pixels(main_window):
    canvas = main_window.canvas
    canvas.actual_size()
    ratio = canvas.view_widget.devicePixelRatioF() or 1.0
    assert canvas.zoom() == pytest.approx(1.0 / ratio, rel=1e-3)   # one image pixel per device pixel
    canvas.fit()
    (x0, x1), (y0, y1) = canvas.view.viewRange()
    assert x0 <= 0 and x1 >= 32 and y0 <= 0 and y1 >= 32


def test_arrow_keys_step_the_base_seed(qtbot, main_window):
    w = main_window
    box = w.source_strip.cards[0].seed_box
    box.setFocus()
    with qtbot.waitSignal(w.render_controller.shown, timeout=T):
        QTest.keyClick(box, Qt.Key_Up)
    assert w.session.state.sources[0].seed == 1
    assert np.array_equal(w.canvas.image(), direct_renderer(w.network_path).render(w.session.state).image)
    with qtbot.waitSignal(w.render_controller.shown, timeout=T):
        w.source_strip.cards[0].random_button.click()
    assert w.session.state.sources[0].seed == box.value()


def test_every_dock_can_be_raised_by_its_screenshot_panel_name(main_window):
    """`--screenshot-panel` offers exactly the window's docks, and each comes up when asked."""
    from app import PANELS
    assert set(PANELS) == set(main_window.docks)
    for key in PANELS:
        main_window.show_panel(key)
        assert main_window.docks[key].isVisible()
