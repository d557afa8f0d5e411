"""The Projection panel: a short real projection from the panel into the window's tiny network."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import engine
from app_helpers import SHOW_TIMEOUT_MS, direct_renderer

RUN_TIMEOUT_MS = 120_000  # 30 steps of a 16 px network plus w statistics, on a busy 2-core box


@pytest.fixture
def photo(tmp_path, sg3_path) -> Path:
    """A target the 16 px network can reach: its own render of seed 5, saved as a PNG."""
    renderer = direct_renderer(sg3_path)
    image = renderer.render(engine.initial_state(str(sg3_path), renderer.num_ws, seeds=(5,))).image
    return engine.save_png(tmp_path / "face.png", image)


@pytest.fixture
def window(open_window, sg3_path):
    return open_window(sg3_path)


def _set_up(panel, photo: Path, steps: int) -> None:
    panel.set_photo(photo)
    panel.steps_spin.setValue(steps)
    panel.mode_combo.setCurrentIndex(panel.mode_combo.findData("w+"))
    panel.loss_combo.setCurrentIndex(panel.loss_combo.findData("pixel"))


def test_projection_dock_is_hidden_and_in_the_view_menu(window):
    dock = window.docks["projection"]
    assert not dock.isVisible()
    view = [a for a in window.menuBar().actions() if a.text() == "&View"][0].menu()
    assert dock.toggleViewAction() in view.actions()
    window.show_panel("projection")
    assert dock.isVisible()
    assert window.tabifiedDockWidgets(dock)                       # a tab among the right-hand docks


def test_projection_runs_and_the_photo_becomes_the_base(qtbot, window, photo, tmp_path):
    panel = window.projection_panel
    window.show_panel("projection")
    _set_up(panel, photo, 30)
    assert panel.target_image is not None and panel.target_image.shape == (16, 16, 3)
    assert panel.start_button.isEnabled()
    sources_before = len(window.session.state.sources)
    shown_before = window.render_controller.last_result.image.copy()

    with qtbot.waitSignal(panel.run_ended, timeout=RUN_TIMEOUT_MS) as ended:
        qtbot.mouseClick(panel.start_button, qtbot_left())
        qtbot.waitUntil(lambda: panel.previews_seen >= 1 and _points(panel) >= 2,
                        timeout=RUN_TIMEOUT_MS)
        assert panel.cancel_button.isEnabled() and not panel.start_button.isEnabled()
    assert ended.args == ["finished"], panel.error_label.text()

    xs, ys = panel.loss_curve.getData()
    assert xs[-1] == 30 and len(xs) >= 2 and np.all(np.isfinite(ys))
    assert ys[-1] < ys[0]                                         # it optimised
    assert panel.progress_bar.value() == panel.progress_bar.maximum() == 30
    assert panel.reconstruction_image.shape == (16, 16, 3)
    assert not panel.reconstruction_label.pixmap().isNull() and not panel.target_label.pixmap().isNull()
    assert panel.result.ws.shape == (1, window.session.state.num_ws, 16)

    # the photo is the base of the editor now, a stored latent in the strip; the canvas shows its render
    base = window.session.state.sources[0]
    assert base.seed is None and base.label == "photo: face"
    assert len(window.session.state.sources) == sources_before
    np.testing.assert_allclose(base.latent_array(), panel.result.ws[0], rtol=0, atol=0)
    assert window.source_strip.cards[0].seed_box.specialValueText() == "photo: face"
    qtbot.waitUntil(lambda: not np.array_equal(window.render_controller.last_result.image, shown_before),
                    timeout=SHOW_TIMEOUT_MS)
    reference = direct_renderer(window.network_path).render(window.session.state).image
    np.testing.assert_array_equal(window.render_controller.last_result.image, reference)
    # the render of the stored latent is the panel's reconstruction (same ws, const noise)
    assert np.abs(reference.astype(int) - panel.result.image.astype(int)).mean() < 8

    # a picture of the panel after a run (PROJECTION_SHOT=path keeps it for a look)
    panel.resize(420, 760)
    shot = Path(os.environ.get("PROJECTION_SHOT", tmp_path / "projection_panel.png"))
    assert panel.grab().save(str(shot)) and shot.stat().st_size > 0

    # Save projection: NVIDIA's files, the npz readable by plain numpy
    assert panel.save_button.isEnabled()
    paths = panel.save_projection(tmp_path / "out")
    assert {p.name for p in paths.values()} == {"proj.png", "target.png", "projected_w.npz"}
    with np.load(tmp_path / "out" / "projected_w.npz") as npz:
        assert npz["w"].shape == (1, window.session.state.num_ws, 16)

    # a second run, cancelled: nothing is added
    state_before = window.session.state
    panel.steps_spin.setValue(100_000)
    with qtbot.waitSignal(panel.run_ended, timeout=RUN_TIMEOUT_MS) as ended:
        panel.start()
        qtbot.waitUntil(lambda: panel.progress_bar.value() >= 1, timeout=RUN_TIMEOUT_MS)
        qtbot.mouseClick(panel.cancel_button, qtbot_left())
    assert ended.args == ["cancelled"]
    assert window.session.state is state_before
    assert panel.start_button.isEnabled() and not panel.cancel_button.isEnabled()


def test_bad_photo_is_a_readable_error(qtbot, window, tmp_path):
    panel = window.projection_panel
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    panel.set_photo(bad)
    assert panel.target_image is None
    assert not panel.error_label.isHidden() and panel.error_label.text()
    with qtbot.waitSignal(panel.run_ended, timeout=RUN_TIMEOUT_MS) as ended:
        panel.start()                                             # the engine says why; nothing crashes
    assert ended.args == ["failed"]
    assert "broken.png" in panel.error_label.text()
    assert window.session.state.sources[0].seed is not None


def test_pivotal_tuning_and_face_alignment_run_in_the_same_job(qtbot, window, photo, tmp_path):
    panel = window.projection_panel
    window.show_panel("projection")
    _set_up(panel, photo, 10)
    with qtbot.waitSignal(panel.target_ready, timeout=RUN_TIMEOUT_MS):
        panel.align_check.setChecked(True)        # the landmark search runs off the GUI thread
        assert panel.status_label.text() == "Finding the face..."
    # a 16 px render holds no face: the user's crop, with a note
    assert "Face alignment skipped" in panel.status_label.text()
    assert panel.target_image is not None and panel.target_image.shape == (16, 16, 3)
    assert not panel.pti_steps_spin.isEnabled()
    panel.pti_check.setChecked(True)
    assert panel.pti_steps_spin.isEnabled()
    panel.pti_steps_spin.setValue(12)
    previews = []
    panel.runner.progressed.connect(lambda e: previews.append(e.step) if e.preview is not None else None)

    with qtbot.waitSignal(panel.run_ended, timeout=RUN_TIMEOUT_MS) as ended:
        panel.start()
        assert not panel.pti_check.isEnabled() and not panel.pti_steps_spin.isEnabled()
    assert ended.args == ["finished"], panel.error_label.text()
    assert panel.progress_bar.maximum() == panel.progress_bar.value() == 10 + 12
    xs, _ = panel.loss_curve.getData()
    pti_xs, pti_ys = panel.pti_curve.getData()
    # the runner forwards progress at ~20 Hz plus the run's last step, so the projection's step 10 may be skipped
    assert 0 < xs[-1] <= 10 < pti_xs[0] and pti_xs[-1] == 22 and np.all(np.isfinite(pti_ys))
    assert any(step > 10 for step in previews)                     # the tuning streams previews too
    tuned = panel.tuned
    # the compact (low-rank) form, trained directly; the panel does not run full tuning beside it
    assert tuned is not None and tuned.report.psnr_compact > tuned.report.psnr_base, tuned.report.summary()
    assert tuned.full is None and tuned.report.psnr_full is None
    text = panel.status_label.text()
    assert "Face alignment skipped" in text and "Pivotal tuning" in text and "full tuning not run" in text
    assert f"untuned {tuned.report.psnr_base:.2f} dB, compact {tuned.report.psnr_compact:.2f} dB" in text
    np.testing.assert_array_equal(panel.reconstruction_image, tuned.image)
    base = window.session.state.sources[0]                         # the latent is the base, as without PTI
    assert base.label == "photo: face"
    np.testing.assert_allclose(base.latent_array(), panel.result.ws[0], rtol=0, atol=0)

    # Save: NVIDIA's files plus the compact delta, which rebuilds the tuned image on the base network
    paths = panel.save_projection(tmp_path / "out")
    assert {p.name for p in paths.values()} == {"proj.png", "target.png", "projected_w.npz",
                                                "pti_delta.safetensors", "proj_pti.png"}
    delta = engine.load_delta(tmp_path / "out" / "pti_delta.safetensors")
    networks = engine.load_network(window.network_path, device="cpu")
    network_bytes = sum(t.numel() * t.element_size() for t in networks["G_ema"].state_dict().values())
    # measured 2.3x smaller for this 46 KB network (tests/engine/test_pti.py: 46x at 64 px, 256 channels)
    assert (tmp_path / "out" / "pti_delta.safetensors").stat().st_size < network_bytes / 2
    G_tuned = engine.apply_delta(networks["G_ema"], delta)
    renderer = engine.Renderer({"G_ema": G_tuned}, "cpu")
    state = engine.initial_state(str(window.network_path), renderer.num_ws, seeds=(0,))
    again = renderer.render(engine.with_base(state, engine.Source.from_latent(panel.result.ws, label="p"))).image
    assert np.abs(again.astype(int) - tuned.image.astype(int)).mean() < 2

    # cancelling during the tuning stage: nothing is added
    state_before = window.session.state
    panel.pti_steps_spin.setValue(100_000)
    with qtbot.waitSignal(panel.run_ended, timeout=RUN_TIMEOUT_MS) as ended:
        panel.start()
        qtbot.waitUntil(lambda: panel.progress_bar.value() > 11, timeout=RUN_TIMEOUT_MS)
        panel.cancel()
    assert ended.args == ["cancelled"]
    assert window.session.state is state_before


def _points(panel) -> int:
    xs, _ = panel.loss_curve.getData()
    return 0 if xs is None else len(xs)


def qtbot_left():
    from PySide6.QtCore import Qt
    return Qt.LeftButton


def test_dropping_an_image_file_sets_the_photo(window, photo):
    from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent
    panel = window.projection_panel
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(photo))])
    enter = QDragEnterEvent(panel.rect().center(), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    panel.dragEnterEvent(enter)
    assert enter.isAccepted()
    panel.dropEvent(QDropEvent(QPointF(panel.rect().center()), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier))
    assert panel.photo_path == str(photo) and panel.photo_edit.text() == str(photo)
    assert panel.target_image.shape == (16, 16, 3) and panel.start_button.isEnabled()

    other = QMimeData()
    other.setUrls([QUrl.fromLocalFile("/tmp/network.pkl")])
    refused = QDragEnterEvent(panel.rect().center(), Qt.CopyAction, other, Qt.LeftButton, Qt.NoModifier)
    panel.dragEnterEvent(refused)
    assert not refused.isAccepted()


def test_face_alignment_of_a_real_photo_runs_off_the_gui_thread(qtbot, window, tmp_path):
    from skimage import data
    panel = window.projection_panel
    portrait = engine.save_png(tmp_path / "astronaut.png", data.astronaut())
    panel.set_photo(portrait)
    plain = panel.target_image.copy()                         # the centre crop, shown at once
    with qtbot.waitSignal(panel.target_ready, timeout=RUN_TIMEOUT_MS):
        panel.align_check.setChecked(True)
        assert panel.target_runner.running                    # the GUI thread is free meanwhile
    assert panel.status_label.text() == "Face aligned."
    assert panel.target_image.shape == plain.shape == (16, 16, 3)
    assert not np.array_equal(panel.target_image, plain)      # the FFHQ crop is tighter than the centre crop
    with qtbot.waitSignal(panel.target_ready, timeout=RUN_TIMEOUT_MS):
        panel.align_check.setChecked(False)                   # back to the plain crop, synchronously
    np.testing.assert_array_equal(panel.target_image, plain)
