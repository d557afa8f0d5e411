"""The Fine-tune panel: train a network on an image folder in a child process while the editor stays live.

The panel builds an `engine.TrainOptions` from its widgets, starts `engine.start_finetune(opts)`
and drains `FinetuneProcess.poll()` from a QTimer (~8 Hz): progress moves the bar and the ETA,
tick metrics become points on the loss and augmentation plots (x = kimg), snapshots bring the
sample grid and enable "Load latest snapshot" (which asks the window to open it) and the blend
section. Nothing here trains, blends or renders on the GUI thread: training is in the child, and
the blend preview (engine.BlendPreview + engine.Renderer) runs on a JobRunner thread, newest
request wins.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox, QLabel,
                               QLineEdit, QProgressBar, QPushButton, QSlider, QSpinBox, QVBoxLayout, QWidget)

import engine
from app.job_runner import JobRunner
from app.widgets import CollapsibleSection, error_label, row, show_error

log = logging.getLogger(__name__)

POLL_INTERVAL_MS = 120          # ~8 Hz: the process throttles progress to ~10 Hz anyway
CLOSE_WAIT_S = 10.0             # how long closing the window waits for the run to stop after its step
GRID_SIZE = 240                 # px, the sample grid's longer side in the panel
BLEND_PREVIEW_SIZE = 160        # px
START_CHOICES = (("editor", "Network open in the editor"), ("file", "A network file"),
                 ("scratch", "From scratch"))
PLOTTED_LOSSES = (("loss/G", "G", (31, 119, 180)), ("loss/D", "D", (214, 39, 40)),
                  ("loss/r1", "R1", (44, 160, 44)), ("loss/pl", "path length", (148, 103, 189)),
                  ("loss/eq", "turning", (140, 86, 75)))


def _qimage(image: np.ndarray) -> QImage:
    """uint8 [H, W, 3] (or [H, W]) -> a QImage that owns its pixels."""
    image = np.ascontiguousarray(image)
    if image.ndim == 2:
        image = np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    h, w = image.shape[:2]
    return QImage(image.data, w, h, 3 * w, QImage.Format_RGB888).copy()


def _fit_pixmap(image: QImage, side: int) -> QPixmap:
    """Scaled so the longer side is `side`; nearest neighbour when enlarging (tiny grids stay crisp)."""
    mode = Qt.FastTransformation if max(image.width(), image.height()) < side else Qt.SmoothTransformation
    return QPixmap.fromImage(image).scaled(side, side, Qt.KeepAspectRatio, mode)


def format_eta(seconds: float | None) -> str:
    """'2 h 05 min', '3 min 10 s', '12 s', or '–' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def _device(name: str) -> str:
    """'auto' -> CUDA when present, else the CPU (the engine decides; the app never imports torch)."""
    return str(engine.resolve_device(name))


def blend_preview_job(holder: dict[str, Any], base: str, tuned: str, split: float, width: float,
                      state: Any, device: str, *, progress: Any = None, cancel: Any = None) -> dict[str, Any]:
    """Job: blend (base, tuned) with a schedule and render `state` (or seed 0) through engine.Renderer.

    `holder` keeps the loaded BlendPreview between jobs (the panel runs one job at a time), so a
    slider move costs one blend and one render, not two file loads.
    """
    key = (base, tuned, device)
    if holder.get("key") != key:
        holder.clear()
        if progress is not None:
            progress(engine.Progress(0, 1, "loading the base and tuned networks"))
        holder["preview"], holder["key"] = engine.BlendPreview(base, tuned, device=device), key
    preview = holder["preview"]
    G, weights = preview.blend(split, width)
    renderer = engine.Renderer(G, device)       # fresh: its latent cache must see the blended mapping
    if state is None or len(state.mix[0]) != renderer.num_ws:
        state = engine.initial_state(str(tuned), renderer.num_ws, seeds=(0,))
    result = renderer.render(state)
    return {"image": result.image, "weights": list(weights), "blocks": list(preview.blocks)}


def blend_save_job(holder: dict[str, Any], base: str, tuned: str, split: float, width: float, output: str,
                   device: str, *, progress: Any = None, cancel: Any = None) -> Any:
    """Job: write the blend as a native checkpoint (engine.BlendPreview.save)."""
    key = (base, tuned, device)
    if holder.get("key") != key:
        holder.clear()
        holder["preview"], holder["key"] = engine.BlendPreview(base, tuned, device=device), key
    return holder["preview"].save(output, split, width)


class FinetunePanel(QWidget):
    """Fine-tune a network on a folder of images; plots, sample grid, snapshots and blending.

    `editor_network()` gives the path of the network open in the editor (the default base);
    `editor_state()` the editor's EditState (what the blend preview renders). Signals:
    `load_requested(path)` (the window opens it), `message(text)` (the window's status bar),
    `blend_saved(path)`. Attributes tests use: data_edit, base_edit, start_combo, kimg_spin,
    batch_spin, snap_spin, outdir_edit, start_button, pause_button, stop_button, progress_bar,
    eta_label, status_label, load_button, blend_group, split_slider, width_slider,
    blend_label, process, latest_snapshot, series(key).
    """

    load_requested = Signal(str)
    message = Signal(str)
    blend_saved = Signal(str)
    run_ended = Signal(object)          # the last event: Finished, Stopped or Failed

    def __init__(self, parent: QWidget | None = None, *, device: str = "cpu",
                 editor_network: Callable[[], str | None] | None = None,
                 editor_state: Callable[[], Any] | None = None):
        super().__init__(parent)
        self.device = device
        self._editor_network = editor_network or (lambda: None)
        self._editor_state = editor_state or (lambda: None)
        self.process: Any = None                       # engine.FinetuneProcess while a run is on
        self.options_used: Any = None                  # the TrainOptions of the current / last run
        self.base_network: str | None = None           # the file the run started from (None: scratch)
        self.latest_snapshot: str | None = None
        self.last_progress: Any = None
        self.events_seen = 0
        self._series: dict[str, tuple[list[float], list[float]]] = {}
        self._blend_holder: dict[str, Any] = {}
        self._blend_queue: list[tuple[str, tuple]] = []   # (kind, args): pending blend jobs, newest preview wins
        self._blend_kind: str | None = None
        self.blend_image: np.ndarray | None = None
        self.grid_image: np.ndarray | None = None

        self.timer = QTimer(self)
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.timeout.connect(self.poll)
        self.blend_runner = JobRunner(parent=self)
        self.blend_runner.finished.connect(self._blend_done)
        self.blend_runner.failed.connect(self._blend_failed)
        self.blend_runner.cancelled.connect(self._next_blend_job)
        self.blend_timer = QTimer(self)                # slider moves coalesce into one request
        self.blend_timer.setSingleShot(True)
        self.blend_timer.setInterval(60)
        self.blend_timer.timeout.connect(self.request_blend_preview)

        layout = QVBoxLayout(self)
        settings = QWidget()
        settings_layout = QVBoxLayout(settings)
        settings_layout.setContentsMargins(0, 0, 0, 0)
        settings_layout.addWidget(self._data_group())
        settings_layout.addWidget(self._network_group())
        settings_layout.addWidget(self._training_group())
        # folds away when a run starts, so progress, plots and samples fit the dock
        self.settings_section = CollapsibleSection("Settings", settings, expanded=True)
        layout.addWidget(self.settings_section)
        layout.addWidget(self._run_group())
        layout.addWidget(self._plots_group())
        layout.addWidget(self._grid_group())
        layout.addWidget(self._blend_group())
        layout.addStretch(1)
        self._update_start_mode()
        self._update_aug()
        self._set_running(False)
        self.set_editor_network(self._editor_network())

    # --- building --------------------------------------------------------------------------------
    def _data_group(self) -> QGroupBox:
        box = QGroupBox("Images")
        form = QFormLayout(box)
        self.data_edit = QLineEdit()
        self.data_edit.setPlaceholderText("folder of images, or a dataset .zip")
        folder = QPushButton("Folder...")
        folder.clicked.connect(self._choose_folder)
        zip_button = QPushButton("Zip...")
        zip_button.clicked.connect(self._choose_zip)
        form.addRow("Images", row(self.data_edit, folder, zip_button, stretch_index=0))
        self.fit_combo = QComboBox()
        self.fit_combo.addItem("centre crop", "crop")
        self.fit_combo.addItem("pad with white", "pad")
        self.mirror_check = QCheckBox("also x-flipped")
        form.addRow("Make square", row(self.fit_combo, self.mirror_check, stretch_index=0))
        return box

    def _network_group(self) -> QGroupBox:
        box = QGroupBox("Start from")
        form = QFormLayout(box)
        self.start_combo = QComboBox()
        for key, text in START_CHOICES:
            self.start_combo.addItem(text, key)
        self.start_combo.currentIndexChanged.connect(lambda _i: self._update_start_mode())
        form.addRow("Network", self.start_combo)
        self.editor_label = QLabel("(no network open)")
        self.editor_label.setWordWrap(True)
        form.addRow("", self.editor_label)
        self.base_edit = QLineEdit()
        self.base_edit.setPlaceholderText(".pkl or .safetensors")
        self.base_browse = QPushButton("Browse...")
        self.base_browse.clicked.connect(self._choose_base)
        self.base_row = row(self.base_edit, self.base_browse, stretch_index=0)
        form.addRow("File", self.base_row)
        self.cfg_combo = QComboBox()
        for cfg in ("stylegan2", "stylegan3-t", "stylegan3-r"):
            self.cfg_combo.addItem(cfg, cfg)
        self.resolution_combo = QComboBox()
        for res in (16, 32, 64, 128, 256, 512, 1024):
            self.resolution_combo.addItem(f"{res} px", res)
        self.resolution_combo.setCurrentIndex(4)
        self.scratch_row = row(self.cfg_combo, self.resolution_combo)
        form.addRow("Architecture", self.scratch_row)
        self._network_form = form
        return box

    def _training_group(self) -> QGroupBox:
        box = QGroupBox("Training")
        form = QFormLayout(box)
        self.kimg_spin = self._double(0.001, 1e6, 100.0, 3, "thousand real images shown in all (fractions allowed)")
        self.kimg_spin.setSuffix(" kimg")
        form.addRow("Duration", self.kimg_spin)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 1024)
        self.batch_spin.setValue(16)
        form.addRow("Batch size", self.batch_spin)
        # 0 shows "auto": the engine's defaults (NVIDIA's) apply
        self.glr_spin = self._double(0.0, 1.0, 0.0, 5, "G learning rate; auto: 0.002 (StyleGAN2), 0.0025 (StyleGAN3)")
        self.glr_spin.setSpecialValueText("auto")
        self.dlr_spin = self._double(0.00001, 1.0, 0.002, 5, "D learning rate")
        form.addRow("Learning rate G / D", row(self.glr_spin, self.dlr_spin))
        self.gamma_spin = self._double(0.0, 1e4, 0.0, 4, "R1 weight; auto: 0.0002 x resolution² / batch")
        self.gamma_spin.setSpecialValueText("auto")
        form.addRow("R1 gamma", self.gamma_spin)
        self.aug_combo = QComboBox()
        self.aug_combo.addItem("adaptive (ADA)", "ada")
        self.aug_combo.addItem("none", "noaug")
        self.aug_combo.addItem("fixed strength", "fixed")
        self.aug_combo.currentIndexChanged.connect(lambda _i: self._update_aug())
        self.target_spin = self._double(0.0, 1.0, 0.6, 2, "ADA target for E[sign(D(real))]")
        self.target_spin.setSingleStep(0.05)
        self.p_spin = self._double(0.0, 1.0, 0.2, 2, "augmentation probability")
        self.p_spin.setSingleStep(0.05)
        form.addRow("Augmentation", row(self.aug_combo, self.target_spin, self.p_spin, stretch_index=0))
        # StyleGAN3 only (the engine refuses them for StyleGAN2, readably): teach turning the input to turn the picture
        self.turn_check = QCheckBox("turn the fakes")
        self.turn_check.setToolTip("StyleGAN3: draw every fake with a random input turn, so D judges turned "
                                   "pictures (only for images that show every angle)")
        self.eq_spin = self._double(0.0, 1000.0, 0.0, 2, "StyleGAN3: weight of a loss between a turned picture "
                                                         "and the upright one turned by as much; off: 0")
        self.eq_spin.setSpecialValueText("off")
        form.addRow("Turning (StyleGAN3)", row(self.turn_check, QLabel("loss weight"), self.eq_spin))
        self.snap_spin = self._double(0.001, 1e5, 10.0, 3, "kimg between snapshots (and at the end)")
        self.snap_spin.setSuffix(" kimg")
        form.addRow("Snapshot every", self.snap_spin)
        self.outdir_edit = QLineEdit()
        self.outdir_edit.setPlaceholderText("folder for snapshots and sample grids")
        out_browse = QPushButton("Browse...")
        out_browse.clicked.connect(self._choose_outdir)
        form.addRow("Output folder", row(self.outdir_edit, out_browse, stretch_index=0))
        return box

    def _run_group(self) -> QGroupBox:
        box = QGroupBox("Run")
        v = QVBoxLayout(box)
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setCheckable(True)
        self.pause_button.toggled.connect(self.set_paused)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        v.addWidget(row(self.start_button, self.pause_button, self.stop_button))
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setFormat("%p%")
        v.addWidget(self.progress_bar)
        self.eta_label = QLabel("not running")
        v.addWidget(self.eta_label)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        v.addWidget(self.status_label)
        self.error_label = error_label()
        self.error_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        v.addWidget(self.error_label)
        return box

    def _plots_group(self) -> QGroupBox:
        box = QGroupBox("Losses and augmentation")
        v = QVBoxLayout(box)
        self.loss_plot = pg.PlotWidget()
        self.loss_plot.setBackground("w")              # as the projection plot; the colours are for white
        self.loss_plot.setMinimumHeight(150)
        self.loss_plot.setMaximumHeight(230)           # the sample grid below must stay in view
        self.loss_plot.setLabel("bottom", "kimg")
        self.loss_plot.setLabel("left", "loss")
        self.loss_plot.addLegend(offset=(5, 5))
        self.loss_plot.showGrid(x=True, y=True, alpha=0.2)
        self.aug_plot = pg.PlotWidget()
        self.aug_plot.setBackground("w")
        self.aug_plot.setMinimumHeight(90)
        self.aug_plot.setMaximumHeight(120)
        self.aug_plot.setLabel("bottom", "kimg")
        self.aug_plot.setLabel("left", "aug p")
        self.aug_plot.setYRange(0, 1, padding=0.05)
        self.aug_plot.showGrid(x=True, y=True, alpha=0.2)
        self.curves: dict[str, Any] = {}
        for key, name, colour in PLOTTED_LOSSES:
            self.curves[key] = self.loss_plot.plot([], [], name=name, pen=pg.mkPen(colour, width=2))
        self.curves["aug_p"] = self.aug_plot.plot([], [], pen=pg.mkPen((255, 127, 14), width=2))
        v.addWidget(self.loss_plot)
        v.addWidget(self.aug_plot)
        return box

    def _grid_group(self) -> QGroupBox:
        box = QGroupBox("Latest samples")
        v = QVBoxLayout(box)
        self.grid_label = QLabel("no snapshot yet")
        self.grid_label.setAlignment(Qt.AlignCenter)
        self.grid_label.setMinimumHeight(80)
        v.addWidget(self.grid_label)
        self.snapshot_label = QLabel("")
        self.snapshot_label.setWordWrap(True)
        v.addWidget(self.snapshot_label)
        self.load_button = QPushButton("Load latest snapshot")
        self.load_button.setToolTip("Open the newest snapshot in the editor")
        self.load_button.clicked.connect(self.load_latest_snapshot)
        v.addWidget(self.load_button)
        return box

    def _blend_group(self) -> QGroupBox:
        self.blend_group = QGroupBox("Blend with base")
        form = QFormLayout(self.blend_group)
        self.blend_hint = QLabel("Once a snapshot exists: coarse layers from the base, fine from the tuned network.")
        self.blend_hint.setWordWrap(True)
        form.addRow(self.blend_hint)
        self.split_slider = self._slider(50)
        self.split_value = QLabel()
        form.addRow("Split (base share)", row(self.split_slider, self.split_value, stretch_index=0))
        self.width_slider = self._slider(25)
        self.width_value = QLabel()
        form.addRow("Transition width", row(self.width_slider, self.width_value, stretch_index=0))
        self.blend_label = QLabel("")
        self.blend_label.setAlignment(Qt.AlignCenter)
        self.blend_label.setMinimumSize(BLEND_PREVIEW_SIZE // 2, BLEND_PREVIEW_SIZE // 2)
        form.addRow(self.blend_label)
        self.weights_label = QLabel("")
        self.weights_label.setWordWrap(True)
        form.addRow(self.weights_label)
        self.save_blend_button = QPushButton("Save blended network...")
        self.save_blend_button.clicked.connect(self._save_blend_dialog)
        form.addRow(self.save_blend_button)
        self.blend_error = error_label()
        form.addRow(self.blend_error)
        for slider in (self.split_slider, self.width_slider):
            slider.valueChanged.connect(lambda _v: self._blend_sliders_moved())
        self._show_blend_values()
        return self.blend_group

    @staticmethod
    def _double(lo: float, hi: float, value: float, decimals: int, tip: str) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setDecimals(decimals)
        spin.setRange(lo, hi)
        spin.setValue(value)
        spin.setToolTip(tip)
        return spin

    @staticmethod
    def _slider(value: int) -> QSlider:
        slider = QSlider(Qt.Horizontal)
        slider.setRange(0, 100)
        slider.setValue(value)
        return slider

    # --- form state ------------------------------------------------------------------------------
    def set_editor_network(self, path: str | None) -> None:
        """The window tells the panel which network the editor has open (the default base)."""
        self.editor_label.setText(Path(path).name if path else "(no network open in the editor)")
        self.editor_label.setToolTip(str(path or ""))

    def _start_mode(self) -> str:
        return str(self.start_combo.currentData())

    def _update_start_mode(self) -> None:
        mode = self._start_mode()
        form = self._network_form
        form.setRowVisible(self.editor_label, mode == "editor")
        form.setRowVisible(self.base_row, mode == "file")
        form.setRowVisible(self.scratch_row, mode == "scratch")

    def _update_aug(self) -> None:
        aug = self.aug_combo.currentData()
        self.target_spin.setVisible(aug == "ada")
        self.p_spin.setVisible(aug == "fixed")

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.pause_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        if not running:
            blocked = self.pause_button.blockSignals(True)
            self.pause_button.setChecked(False)
            self.pause_button.setText("Pause")
            self.pause_button.blockSignals(blocked)
        self.load_button.setEnabled(self.latest_snapshot is not None)
        self._update_blend_enabled()

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of training images", self.data_edit.text())
        if path:
            self.data_edit.setText(path)

    def _choose_zip(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Dataset zip", self.data_edit.text(), "Zip files (*.zip)")
        if path:
            self.data_edit.setText(path)

    def _choose_base(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Network to fine-tune", self.base_edit.text(),
                                              "Networks (*.pkl *.safetensors);;All files (*)")
        if path:
            self.base_edit.setText(path)

    def _choose_outdir(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder", self.outdir_edit.text())
        if path:
            self.outdir_edit.setText(path)

    def base_path(self) -> str | None:
        """The network file the run starts from, or None for a run from scratch."""
        mode = self._start_mode()
        if mode == "scratch":
            return None
        path = self._editor_network() if mode == "editor" else self.base_edit.text().strip()
        if not path:
            raise engine.StyleDeckError("Open a network in the editor first, or choose a network file, or "
                                        "train from scratch." if mode == "editor" else
                                        "Choose the network file to fine-tune (.pkl or .safetensors).")
        return str(path)

    def options(self) -> Any:
        """The engine.TrainOptions the widgets describe; StyleDeckError names a missing field."""
        data = self.data_edit.text().strip()
        if not data:
            raise engine.StyleDeckError("Choose a folder (or dataset .zip) of training images.")
        data = os.path.expanduser(data)
        if not os.path.exists(data):
            raise engine.StyleDeckError(f"{data} does not exist; choose a folder of images or a dataset .zip.")
        outdir = self.outdir_edit.text().strip()
        if not outdir:
            raise engine.StyleDeckError("Choose an output folder for the snapshots.")
        base = self.base_path()
        kimg, batch = float(self.kimg_spin.value()), int(self.batch_spin.value())
        extra: dict[str, Any] = {}
        if base is None:
            extra.update(cfg=self.cfg_combo.currentData(), resolution=int(self.resolution_combo.currentData()))
        if self.aug_combo.currentData() == "fixed":
            extra["p"] = float(self.p_spin.value())
        return engine.TrainOptions(
            outdir=os.path.expanduser(outdir), data=data, resume=base or "", kimg=kimg, batch=batch,
            gamma=float(self.gamma_spin.value()) or None, glr=float(self.glr_spin.value()) or None,
            dlr=float(self.dlr_spin.value()), mirror=self.mirror_check.isChecked(),
            aug=self.aug_combo.currentData(), target=float(self.target_spin.value()),
            snap=float(self.snap_spin.value()), fit=self.fit_combo.currentData(),
            eq_rot=float(self.eq_spin.value()), turn_fakes=self.turn_check.isChecked(),
            # a plot point per tick: ~100 over the run, at least one step apart, at most NVIDIA's 4 kimg
            tick=min(4.0, max(kimg / 100, batch / 1000)),
            device=self.device, **extra)

    # --- the run -----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.process is not None and not self.process.ended

    def start(self) -> bool:
        """Start a run from the widgets; False (and a readable error) when the options are incomplete."""
        if self.running:
            return False
        try:
            opts = self.options()
        except engine.StyleDeckError as exc:
            self._show_error(str(exc))
            return False
        self._show_error("")
        self.options_used, self.base_network = opts, (opts.resume or None)
        self.latest_snapshot = None
        self.last_progress, self.events_seen = None, 0
        self.grid_image = self.blend_image = None
        self._series.clear()
        for curve in self.curves.values():
            curve.setData([], [])
        self.grid_label.setPixmap(QPixmap())
        self.grid_label.setText("no snapshot yet")
        self.snapshot_label.setText("")
        self.blend_label.setPixmap(QPixmap())
        self.progress_bar.setValue(0)
        self.eta_label.setText("starting the worker...")
        self.status_label.setText(f"Fine-tuning {Path(opts.resume).name if opts.resume else 'from scratch'} "
                                  f"on {Path(opts.data).name} for {opts.kimg:g} kimg")
        self.process = engine.start_finetune(opts)
        self.settings_section.set_expanded(False)
        self._set_running(True)
        self.timer.start()
        self.message.emit("Fine-tuning started.")
        return True

    def set_paused(self, paused: bool) -> None:
        """Pause (True) or resume (False) the run; the button shows what a click will do."""
        if not self.running:
            return
        if paused:
            self.process.pause()
            self.eta_label.setText("paused")
        else:
            self.process.resume()
            self.eta_label.setText("resuming...")
        self.pause_button.setText("Resume" if paused else "Pause")
        if self.pause_button.isChecked() != paused:
            blocked = self.pause_button.blockSignals(True)
            self.pause_button.setChecked(paused)
            self.pause_button.blockSignals(blocked)

    def stop(self) -> None:
        """Ask the run to stop after its step; it writes a snapshot of where it stopped."""
        if self.running:
            self.process.stop()
            self.stop_button.setEnabled(False)
            self.pause_button.setEnabled(False)
            self.eta_label.setText("stopping after this step...")

    def poll(self) -> None:
        """Drain the worker's events (the timer calls this)."""
        if self.process is None:
            self.timer.stop()
            return
        for event in self.process.poll():
            self.events_seen += 1
            self.handle_event(event)
        if self.process.ended:
            self.timer.stop()
            self._set_running(False)

    def handle_event(self, event: Any) -> None:
        if isinstance(event, engine.Started):
            self.eta_label.setText(f"worker started (pid {event.pid})")
        elif isinstance(event, engine.Progressed):
            self._progressed(event.progress)
        elif isinstance(event, engine.SnapshotWritten):
            self._snapshot(str(event.path), event.grid_path, event.kimg)
        elif isinstance(event, engine.Finished):
            self._ended(event, getattr(event.result, "snapshot", None), "Fine-tuning finished")
        elif isinstance(event, engine.Stopped):
            self._ended(event, event.snapshot, "Fine-tuning stopped")
        elif isinstance(event, engine.Failed):
            self._show_error(event.message)
            if event.details:
                log.warning("fine-tuning failed:\n%s", event.details)
            self.eta_label.setText("failed")
            self.message.emit(event.message)
            self.run_ended.emit(event)

    def _progressed(self, progress: Any) -> None:
        self.last_progress = progress
        self.progress_bar.setValue(int(round(progress.fraction * 1000)))
        metrics = progress.metrics or {}
        if metrics:
            self._add_points(metrics)
            kimg, total = metrics.get("kimg", progress.step / 1000), progress.total / 1000
            rate = metrics.get("images_per_s")
            rate_text = f" · {rate:.1f} img/s" if rate else ""
            mem = metrics.get("gpu_mem_gb")
            mem_text = f" · GPU {mem:.1f} GB" if mem else ""
            self.eta_label.setText(f"{kimg:.3f} / {total:g} kimg{rate_text}{mem_text} · "
                                   f"ETA {format_eta(metrics.get('eta_s'))}")
        elif progress.message.startswith(engine.DATASET_MESSAGE):
            self.status_label.setText(progress.message[0].upper() + progress.message[1:] + ".")
        elif progress.message and not self._series and not (self.process is not None and self.process.paused):
            # loading, preparing images, ...; once ticks come, the line keeps their rate and ETA
            self.eta_label.setText(progress.message)
        if progress.preview is not None:
            self._show_grid(np.asarray(progress.preview))

    def _add_points(self, metrics: dict[str, float]) -> None:
        x = float(metrics.get("kimg", 0.0))
        for key, curve in self.curves.items():
            value = metrics.get(key)
            if value is None or not math.isfinite(float(value)):
                continue
            xs, ys = self._series.setdefault(key, ([], []))
            xs.append(x)
            ys.append(float(value))
            curve.setData(xs, ys)

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """The plotted (kimg, value) points of a metric ('loss/G', 'loss/D', 'loss/r1', 'loss/pl', 'loss/eq',
        'aug_p')."""
        xs, ys = self._series.get(key, ([], []))
        return list(xs), list(ys)

    def _show_grid(self, image: np.ndarray) -> None:
        self.grid_image = image
        self.grid_label.setText("")
        self.grid_label.setPixmap(_fit_pixmap(_qimage(image), GRID_SIZE))

    def _snapshot(self, path: str, grid_path: Any, kimg: float) -> None:
        self.latest_snapshot = path
        self.snapshot_label.setText(f"{Path(path).name} ({kimg:g} kimg)")
        self.snapshot_label.setToolTip(path)
        if self.grid_image is None and grid_path is not None:   # the preview event normally brings it first
            image = QImage(str(grid_path))
            if not image.isNull():
                self.grid_label.setText("")
                self.grid_label.setPixmap(_fit_pixmap(image, GRID_SIZE))
        self.load_button.setEnabled(True)
        self._update_blend_enabled()
        if self.blend_group.isEnabled():
            self.request_blend_preview()

    def _ended(self, event: Any, snapshot: Any, what: str) -> None:
        if snapshot is not None:
            self.latest_snapshot = str(snapshot)
            self.snapshot_label.setText(Path(snapshot).name)
        lines = [what + (f"; latest snapshot {Path(snapshot).name}" if snapshot else "; no snapshot was written")
                 + "."]
        result = getattr(event, "result", None)
        report = getattr(result, "dataset_report", None)
        if report is not None:
            lines.append(f"Images: {report.summary()}.")
        lines += [f"{note}." for note in getattr(result, "notes", ()) if "skipped" not in note or report is None]
        self.status_label.setText("\n".join(lines))
        self.eta_label.setText("finished" if isinstance(event, engine.Finished) else "stopped")
        if isinstance(event, engine.Finished):
            self.progress_bar.setValue(1000)
        self.message.emit(lines[0])
        self._set_running(False)
        if self.blend_group.isEnabled():
            self.request_blend_preview()
        self.run_ended.emit(event)

    def _show_error(self, message: str) -> None:
        show_error(self.error_label, message)

    def load_latest_snapshot(self) -> None:
        """Ask the window to open the newest snapshot in the editor."""
        if self.latest_snapshot is not None:
            self.load_requested.emit(self.latest_snapshot)

    def shutdown(self, wait_s: float = CLOSE_WAIT_S) -> bool:
        """Stop a running fine-tune (the window is closing); True when one was running."""
        self.blend_timer.stop()
        self._blend_queue.clear()
        if self.blend_runner.running:
            self.blend_runner.cancel()
            self.blend_runner.wait()
        if not self.running:
            return False
        self.timer.stop()
        self.process.stop()
        if not self.process.join(wait_s):
            log.warning("fine-tuning worker did not stop within %.0f s; it ends after its step", wait_s)
        self.process.poll()
        self._set_running(False)
        return True

    # --- blending --------------------------------------------------------------------------------
    def blend_ready(self) -> bool:
        """A base file and a snapshot to blend it with."""
        return self.base_network is not None and self.latest_snapshot is not None

    def _update_blend_enabled(self) -> None:
        ready = self.blend_ready()
        self.blend_group.setEnabled(ready)
        if not ready:
            self.blend_hint.setText("Once a snapshot of a fine-tune (not from scratch) exists: coarse layers "
                                    "from the base, fine layers from the tuned network.")
        elif self.base_network is not None:
            self.blend_hint.setText(f"Base {Path(self.base_network).name} with "
                                    f"{Path(self.latest_snapshot).name}.")

    def blend_schedule_values(self) -> tuple[float, float]:
        """(split, width) in [0, 1] from the sliders."""
        return self.split_slider.value() / 100, self.width_slider.value() / 100

    def _show_blend_values(self) -> None:
        split, width = self.blend_schedule_values()
        self.split_value.setText(f"{split:.2f}")
        self.width_value.setText(f"{width:.2f}")

    def _blend_sliders_moved(self) -> None:
        self._show_blend_values()
        if self.blend_ready():
            self.blend_timer.start()

    def request_blend_preview(self) -> None:
        """Render the blend of the current sliders (newest request wins)."""
        if not self.blend_ready():
            return
        split, width = self.blend_schedule_values()
        args = (self._blend_holder, self.base_network, self.latest_snapshot, split, width, self._editor_state(),
                _device(self.device))
        self._blend_queue = [job for job in self._blend_queue if job[0] != "preview"] + [("preview", args)]
        self._next_blend_job()

    def save_blend(self, output: str) -> None:
        """Write the blend of the current sliders to `output` (a .safetensors); blend_saved(path) follows."""
        if not self.blend_ready():
            return
        split, width = self.blend_schedule_values()
        args = (self._blend_holder, self.base_network, self.latest_snapshot, split, width, str(output),
                _device(self.device))
        self._blend_queue.append(("save", args))
        self._next_blend_job()

    def _save_blend_dialog(self) -> None:
        start = str(Path(self.latest_snapshot).with_name("blended.safetensors")) if self.latest_snapshot else ""
        path, _ = QFileDialog.getSaveFileName(self, "Save blended network", start,
                                              "StyleDeck checkpoints (*.safetensors)")
        if path:
            self.save_blend(path if path.endswith(".safetensors") else path + ".safetensors")

    def _next_blend_job(self) -> None:
        if self.blend_runner.running or not self._blend_queue:
            return
        kind, args = self._blend_queue.pop(0)
        self._blend_kind = kind
        job = blend_preview_job if kind == "preview" else blend_save_job
        self.blend_runner.start(job, *args)

    def _blend_done(self, result: Any) -> None:
        kind, self._blend_kind = self._blend_kind, None
        show_error(self.blend_error, "")
        if kind == "preview":
            self.blend_image = result["image"]
            self.blend_label.setPixmap(_fit_pixmap(_qimage(result["image"]), BLEND_PREVIEW_SIZE))
            self.weights_label.setText("tuned share: " + " · ".join(
                f"{name.split('_')[0]} {t:.2f}" for name, t in zip(result["blocks"], result["weights"])))
        else:
            path = str(result.path)
            self.message.emit(f"Saved blended network {Path(path).name}")
            self.blend_saved.emit(path)
        self._next_blend_job()

    def _blend_failed(self, message: str) -> None:
        self._blend_kind = None
        show_error(self.blend_error, message)
        self.message.emit(message)
        self._next_blend_job()
