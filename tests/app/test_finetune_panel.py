"""The Fine-tune panel with a real worker process: start, live plots, pause, stop, load the snapshot, blend.

The network is a 16 px StyleGAN2 with its D (so no fresh 512-channel D is built), the data eight
20 px images made here plus one broken file; the child trains on one thread.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import engine
from app.panels.finetune import FinetunePanel, format_eta
from app_helpers import SHOW_TIMEOUT_MS, direct_renderer
from engine.networks import discriminator, stylegan2
from reference_data import perturbed

RUN_TIMEOUT_MS = 90_000     # a spawned child imports torch first: seconds on a busy 2-core box


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A 16 px StyleGAN2 (G, G_ema) with a matching small D, as a native checkpoint."""
    torch.manual_seed(0)
    G = perturbed(stylegan2.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                                      channel_base=256, channel_max=16, num_fp16_res=0,
                                      mapping_kwargs=dict(num_layers=2)), 5)
    D = discriminator.Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=16,
                                    num_fp16_res=0, epilogue_kwargs=dict(mbstd_group_size=2))
    return engine.save_checkpoint(tmp_path_factory.mktemp("base") / "tiny16.safetensors",
                                  {"G": G, "G_ema": G, "D": D})


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Eight 20 px images (a coloured square on a background) and one file that is not an image."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for i in range(8):
        image = np.full((20, 20, 3), rng.integers(0, 256, 3), np.uint8)
        x, y = rng.integers(0, 10, 2)
        image[y:y + 8, x:x + 8] = rng.integers(0, 256, 3)
        assert cv2.imwrite(str(folder / f"img{i}.png"), image)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


@pytest.fixture(autouse=True)
def quiet_child(monkeypatch, tmp_path):
    """The child trains on one thread (two would fight the GUI for a 2-core box) and caches in tmp."""
    monkeypatch.setenv("STYLEDECK_TRAIN_THREADS", "1")
    monkeypatch.setenv("STYLEDECK_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def make_panel(qtbot, tiny_base):
    """A FinetunePanel on its own whose editor has `tiny_base` open; its run and blend jobs end with the test."""
    panels = []

    def make() -> FinetunePanel:
        panel = FinetunePanel(editor_network=lambda: str(tiny_base))
        qtbot.addWidget(panel)
        panels.append(panel)
        return panel

    yield make
    for panel in panels:
        panel.shutdown()


def fill(panel: FinetunePanel, data: Path, outdir: Path, kimg: float = 1.0) -> None:
    panel.data_edit.setText(str(data))
    panel.outdir_edit.setText(str(outdir))
    panel.kimg_spin.setValue(kimg)
    panel.batch_spin.setValue(4)
    panel.snap_spin.setValue(0.008)     # a snapshot every 2 steps


def test_options_come_from_the_widgets(make_panel, tmp_path, images, tiny_base):
    panel = make_panel()
    assert not panel.start()                                # nothing chosen yet: a readable error, no process
    assert panel.process is None and "images" in panel.error_label.text()
    fill(panel, images, tmp_path / "run", kimg=0.5)
    panel.aug_combo.setCurrentIndex(panel.aug_combo.findData("fixed"))
    panel.p_spin.setValue(0.3)
    panel.gamma_spin.setValue(0.5)
    opts = panel.options()
    assert (opts.resume, opts.kimg, opts.batch, opts.snap, opts.aug, opts.p, opts.gamma, opts.glr) == \
        (str(tiny_base), 0.5, 4, 0.008, "fixed", 0.3, 0.5, None)   # glr "auto" -> the engine's default
    assert (opts.eq_rot, opts.turn_fakes) == (0.0, False)          # turning is off unless asked for
    panel.turn_check.setChecked(True)
    panel.eq_spin.setValue(2.5)
    assert (panel.options().eq_rot, panel.options().turn_fakes) == (2.5, True)
    panel.start_combo.setCurrentIndex(panel.start_combo.findData("scratch"))
    panel.cfg_combo.setCurrentIndex(panel.cfg_combo.findData("stylegan3-t"))
    opts = panel.options()
    assert (opts.resume, opts.cfg, opts.resolution) == ("", "stylegan3-t", 256)
    panel.start_combo.setCurrentIndex(panel.start_combo.findData("file"))
    with pytest.raises(engine.StyleDeckError, match="network file"):
        panel.options()
    assert [format_eta(s) for s in (None, float("inf"), 12.4, 190, 7500)] == \
        ["–", "–", "12 s", "3 min 10 s", "2 h 05 min"]


def test_finetune_from_the_panel_then_load_and_blend(qtbot, open_window, tiny_base, images, tmp_path):
    window = open_window(tiny_base)
    panel = window.finetune_panel
    dock = window.docks["finetune"]
    assert not dock.isVisible()                                             # hidden until asked for
    view_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&View")
    toggle = next(a for a in view_menu.actions() if a.text() == "Fine-tune")
    toggle.trigger()
    qtbot.waitUntil(lambda: dock.isVisible() and not panel.visibleRegion().isEmpty())
    assert panel.editor_label.text() == tiny_base.name                      # defaults to the editor's network

    fill(panel, images, tmp_path / "run", kimg=1.0)                         # 250 steps: still running when stopped
    assert panel.start()
    qtbot.waitUntil(lambda: len(panel.series("loss/G")[0]) >= 3 and panel.latest_snapshot is not None,
                    timeout=RUN_TIMEOUT_MS)
    assert panel.running and panel.progress_bar.value() > 0 and "ETA" in panel.eta_label.text()
    kimg, loss_g = panel.series("loss/G")
    assert kimg == sorted(kimg) and kimg[0] > 0 and all(np.isfinite(loss_g))
    plotted_x, plotted_y = panel.curves["loss/G"].getData()                 # what the plot draws
    assert len(plotted_x) >= 3 and np.allclose(plotted_y[:3], loss_g[:3])
    assert len(panel.series("loss/D")[0]) >= 3 and len(panel.series("aug_p")[0]) >= 3
    qtbot.waitUntil(lambda: panel.grid_image is not None, timeout=RUN_TIMEOUT_MS)
    assert panel.grid_image.dtype == np.uint8 and panel.grid_image.shape[2] == 3
    assert not panel.grid_label.pixmap().isNull()
    assert "1 skipped" in panel.status_label.text() and "broken.png" in panel.status_label.text()  # while running

    panel.pause_button.click()
    assert panel.process.paused and panel.pause_button.text() == "Resume"
    panel.pause_button.click()
    assert not panel.process.paused and panel.pause_button.text() == "Pause"

    shot = Path(os.environ.get("STYLEDECK_SCREENSHOT_DIR", tmp_path)) / "finetune_window.png"
    assert window.grab().save(str(shot), "PNG")

    with qtbot.waitSignal(panel.run_ended, timeout=RUN_TIMEOUT_MS) as ended:
        panel.stop_button.click()
    assert isinstance(ended.args[0], engine.Stopped)
    assert not panel.running and panel.start_button.isEnabled() and not panel.stop_button.isEnabled()
    snapshot = Path(panel.latest_snapshot)
    assert snapshot.is_file() and snapshot.parent == tmp_path / "run"
    assert "stopped" in panel.status_label.text()

    with qtbot.waitSignal(window.render_controller.shown, timeout=SHOW_TIMEOUT_MS):
        panel.load_button.click()
    assert window.network_path == str(snapshot)
    assert window.model_panel.info_labels["file"].text() == snapshot.name
    assert panel.editor_label.text() == snapshot.name
    shown = window.canvas.image()
    assert shown is not None and shown.shape == (16, 16, 3)
    state = window.session.state
    tuned_image = direct_renderer(snapshot).render(state).image
    assert np.array_equal(shown, tuned_image)                               # the window renders the snapshot
    base_image = direct_renderer(tiny_base).render(state).image
    assert not np.array_equal(tuned_image, base_image)                      # training changed the network

    # Blend: all tuned reproduces the snapshot's image, all base the base network's, exactly.
    assert panel.blend_group.isEnabled()

    def preview_at(split: int, width: int) -> np.ndarray:
        panel.blend_image = None
        panel.width_slider.setValue(width)
        panel.split_slider.setValue(split)
        panel.request_blend_preview()
        qtbot.waitUntil(lambda: panel.blend_image is not None and not panel.blend_runner.running,
                        timeout=SHOW_TIMEOUT_MS)
        return panel.blend_image

    assert np.array_equal(preview_at(0, 0), tuned_image)
    assert np.array_equal(preview_at(100, 0), base_image)
    mixed = preview_at(50, 40)
    assert not np.array_equal(mixed, tuned_image) and not np.array_equal(mixed, base_image)
    assert not panel.blend_label.pixmap().isNull() and "tuned share" in panel.weights_label.text()

    with qtbot.waitSignal(panel.blend_saved, timeout=SHOW_TIMEOUT_MS) as saved:
        panel.save_blend(str(tmp_path / "blended.safetensors"))
    blended = direct_renderer(saved.args[0]).render(state).image
    assert np.array_equal(blended, mixed)
    assert panel.grab().save(str(shot.with_name("finetune_panel_blend.png")), "PNG")   # the whole panel


def test_a_short_run_finishes_and_reports_the_skipped_file(qtbot, make_panel, images, tmp_path):
    panel = make_panel()
    fill(panel, images, tmp_path / "run", kimg=0.008)                      # two steps of 4 images
    with qtbot.waitSignal(panel.run_ended, timeout=RUN_TIMEOUT_MS) as ended:
        assert panel.start()
    assert isinstance(ended.args[0], engine.Finished)
    assert panel.progress_bar.value() == 1000 and panel.series("loss/G")[0][-1] == pytest.approx(0.008)
    assert "8 images, 1 skipped: broken.png" in panel.status_label.text()
    assert Path(panel.latest_snapshot).name == "network-snapshot-000000008.safetensors"
    assert panel.load_button.isEnabled() and panel.blend_group.isEnabled()


def test_a_folder_without_images_fails_readably(qtbot, make_panel, tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "notes.png").write_bytes(b"not an image")
    panel = make_panel()
    fill(panel, empty, tmp_path / "run")
    with qtbot.waitSignal(panel.run_ended, timeout=RUN_TIMEOUT_MS) as ended:
        assert panel.start()
    assert isinstance(ended.args[0], engine.Failed)
    assert panel.error_label.isVisibleTo(panel) and "no usable image" in panel.error_label.text()
    assert "notes.png" in panel.error_label.text() and "Traceback" not in panel.error_label.text()
    assert panel.start_button.isEnabled() and not panel.load_button.isEnabled()
    assert not panel.blend_group.isEnabled()


def test_turning_a_stylegan2_is_refused_readably(qtbot, make_panel, images, tmp_path):
    panel = make_panel()                                    # the editor has a StyleGAN2 open
    fill(panel, images, tmp_path / "run", kimg=0.008)
    panel.turn_check.setChecked(True)
    with qtbot.waitSignal(panel.run_ended, timeout=RUN_TIMEOUT_MS) as ended:
        assert panel.start()
    assert isinstance(ended.args[0], engine.Failed)
    assert "need a StyleGAN3 network" in panel.error_label.text() and "Traceback" not in panel.error_label.text()
    assert panel.start_button.isEnabled() and panel.latest_snapshot is None


def test_closing_the_window_stops_the_run(qtbot, open_window, tiny_base, images, tmp_path):
    window = open_window(tiny_base)
    panel = window.finetune_panel
    fill(panel, images, tmp_path / "run", kimg=10.0)
    assert panel.start()
    qtbot.waitUntil(lambda: panel.last_progress is not None, timeout=RUN_TIMEOUT_MS)
    process = panel.process
    window.close()
    assert not process.alive
    assert "stopped" in window.statusBar().currentMessage()
