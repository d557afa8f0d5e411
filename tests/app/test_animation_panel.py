"""The Animation panel: a playing preview, and real exports from the window's tiny networks."""
from __future__ import annotations

import os

import imageio.v3 as iio
import numpy as np
import pytest


RUN_TIMEOUT_MS = 120_000


@pytest.fixture
def window(open_window, sg3_path):
    window = open_window(sg3_path)
    window.show_panel("animation")
    return window


def _settings(panel, kind: str, fmt: str, fps: float, seconds: float) -> None:
    panel.kind_combo.setCurrentIndex(panel.kind_combo.findData(kind))
    panel.format_combo.setCurrentIndex(panel.format_combo.findData(fmt))
    panel.fps_spin.setValue(fps)
    panel.duration_spin.setValue(seconds)


def test_animation_dock_is_in_the_view_menu(open_window, sg3_path):
    window = open_window(sg3_path)
    dock = window.docks["animation"]
    assert not dock.isVisible()
    view = [a for a in window.menuBar().actions() if a.text() == "&View"][0].menu()
    assert dock.toggleViewAction() in view.actions()
    window.show_panel("animation")
    assert dock.isVisible() and window.tabifiedDockWidgets(dock)


def test_export_a_gif_from_the_panel(qtbot, window, tmp_path):
    panel = window.animation_panel
    _settings(panel, "rotate", "gif", fps=10, seconds=0.6)                # 6 frames, a full turn
    out = tmp_path / "spin.gif"
    panel.output_edit.setText(str(out))
    with qtbot.waitSignal(panel.run_ended, timeout=RUN_TIMEOUT_MS) as ended:
        qtbot.mouseClick(panel.export_button, qtbot_left())
        assert panel.cancel_button.isEnabled() and not panel.export_button.isEnabled()
    assert ended.args == ["finished"], panel.error_label.text()
    frames = list(iio.imiter(out))
    assert len(frames) == 6 and frames[0].shape == (16, 16, 3)
    assert iio.immeta(out)["duration"] == 100
    # frame 0 is the image on the canvas: the animation starts from the editor's current view
    np.testing.assert_array_equal(frames[0], _gif_roundtrip(window.render_controller.last_result.image, tmp_path))
    assert panel.progress_bar.value() == panel.progress_bar.maximum() == 6
    assert panel.eta_label.text().startswith("done in")
    assert sorted(os.listdir(tmp_path)) == ["ref.gif", "spin.gif"]


def _gif_roundtrip(image: np.ndarray, folder) -> np.ndarray:
    """`image` through the same palette the export gives a frame (gif is lossy)."""
    from engine.video_encode import EncodeOptions, encode_frames
    path = folder / "ref.gif"
    encode_frames([image], path, EncodeOptions(fps=10))
    return next(iter(iio.imiter(path)))


def test_the_preview_plays(qtbot, window):
    panel = window.animation_panel
    _settings(panel, "both", "mp4", fps=30, seconds=2.0)
    with qtbot.waitSignal(panel.preview_ready, timeout=RUN_TIMEOUT_MS) as ready:
        panel.refresh_preview()
    assert ready.args == [24] and len(panel.preview_frames) == 24
    assert max(panel.preview_frames[0].shape[:2]) <= 128
    assert panel.play_timer.isActive()
    shown = []
    qtbot.waitUntil(lambda: shown.append(panel._preview_index) or len(set(shown)) >= 3, timeout=5_000)
    panel.play_button.click()                                           # pause
    assert not panel.play_timer.isActive() and panel.play_button.text() == "Play"


def test_cancel_leaves_no_file(qtbot, window, tmp_path):
    panel = window.animation_panel
    _settings(panel, "rotate", "mp4", fps=60, seconds=60.0)             # 3600 frames: far more than it gets to
    out = tmp_path / "long.mp4"
    panel.output_edit.setText(str(out))
    with qtbot.waitSignal(panel.run_ended, timeout=RUN_TIMEOUT_MS) as ended:
        panel.export()
        qtbot.waitUntil(lambda: panel.progress_bar.value() > 0, timeout=RUN_TIMEOUT_MS)
        assert "left" in panel.eta_label.text()
        qtbot.mouseClick(panel.cancel_button, qtbot_left())
    assert ended.args == ["cancelled"]
    assert os.listdir(tmp_path) == []
    assert "nothing was written" in panel.status_label.text()


def test_stylegan2_offers_only_the_latent_loop(qtbot, open_window, sg2_path, tmp_path):
    window = open_window(sg2_path)
    window.show_panel("animation")
    panel = window.animation_panel
    model = panel.kind_combo.model()
    enabled = {panel.kind_combo.itemData(i): model.item(i).isEnabled() for i in range(panel.kind_combo.count())}
    assert enabled == {"loop": True, "rotate": False, "translate": False, "both": False}
    _settings(panel, "loop", "png", fps=10, seconds=0.4)
    panel.seeds_edit.setText("4,5")
    out = tmp_path / "frames"
    with qtbot.waitSignal(panel.run_ended, timeout=RUN_TIMEOUT_MS) as ended:
        panel.export(out)
    assert ended.args == ["finished"], panel.error_label.text()
    names = sorted(os.listdir(out))
    assert names == [f"frame{i:05d}.png" for i in range(4)]
    np.testing.assert_array_equal(iio.imread(out / names[0]), window.render_controller.last_result.image)


def qtbot_left():
    from PySide6.QtCore import Qt
    return Qt.LeftButton
