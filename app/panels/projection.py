"""The Projection panel: find the latent of a photo (engine.project) while the editor stays live.

Open or drop a photo, pick the fit (or an FFHQ-style face alignment), steps, mode (w / w+), loss
and, optionally, pivotal tuning, and Start: the projection runs on a JobRunner thread on its own
copy of the editor's network (loaded from the editor's file, so the render thread's generator is
never shared); pivotal tuning follows in the same job. Progress events bring the current
reconstruction (every few steps) beside the target, a point on the loss plot (projection and
tuning as two curves) and the progress bar. When it ends, `projected(source)` carries an
`engine.Source.from_latent(result.ws, label="photo: <name>")` (the window puts it in as the base)
and "Save..." writes NVIDIA's files, plus the tuning's compact delta when it ran.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage, QPixmap
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QLabel, QLineEdit,
                               QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget)

import engine
from app.job_runner import JobRunner
from app.widgets import error_label, row, show_error

log = logging.getLogger(__name__)

PREVIEW_SIZE = 150              # px, the side of the target and reconstruction previews
DEFAULT_PREVIEW_RESOLUTION = 256  # the target preview's size before a network is open


def _qimage(image: np.ndarray) -> QImage:
    """uint8 [H, W, C] (C = 1 or 3) or [H, W] -> a QImage that owns its pixels."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = np.ascontiguousarray(image[:, :, :3])
    h, w = image.shape[:2]
    return QImage(image.data, w, h, 3 * w, QImage.Format_RGB888).copy()


def _pixmap(image: np.ndarray, side: int = PREVIEW_SIZE) -> QPixmap:
    """Scaled to `side`; nearest neighbour when enlarging so tiny networks' pixels stay crisp."""
    qimage = _qimage(image)
    mode = Qt.FastTransformation if max(qimage.width(), qimage.height()) < side else Qt.SmoothTransformation
    return QPixmap.fromImage(qimage).scaled(side, side, Qt.KeepAspectRatio, mode)


def projection_job(holder: dict[str, Any], network: str, photo: str, fit: str, opts: Any, device: str, *,
                   align: bool = False, pti: Any = None, progress: Any = None, cancel: Any = None) -> dict[str, Any]:
    """Job: load the network (kept in `holder` between runs), prepare the photo, run engine.project and,
    given `pti` (engine.PTIOptions), pivotal tuning around the result.

    Progress counts projection and tuning steps together; tuning events carry their loss as
    metrics["pti_loss"]. Returns {"result": ProjectionResult, "target": uint8 [R, R, C],
    "tuned": engine.TunedPhoto or None, "note": why alignment was skipped, or ""}.
    """
    pti_steps = pti.steps if pti is not None else 0
    total = opts.num_steps + pti_steps
    key = (network, device)
    if holder.get("key") != key:
        holder.clear()
        if progress is not None:
            progress(engine.Progress(0, total, f"loading {Path(network).name}"))
        networks = engine.load_network(network, device=device, cancel=cancel)
        G = networks.get("G_ema", networks.get("G"))
        if G is None:
            raise engine.StyleDeckError(f"{Path(network).name} holds no generator.")
        holder["G"], holder["key"] = G, key
    G = holder["G"]
    if align and progress is not None:
        progress(engine.Progress(0, total, "finding the face"))
    photo_ready = engine.prepare_photo(photo, int(G.img_resolution), fit=fit, channels=int(G.img_channels),
                                       align=align)
    target = photo_ready.image

    def projecting(event: Any) -> None:
        progress(engine.Progress(event.step, total, event.message, event.preview, event.metrics))

    result = engine.project(G, target, opts, progress=projecting if progress else None, cancel=cancel)
    tuned = None
    if pti is not None:
        def tuning(event: Any) -> None:
            metrics = {"pti_loss": event.metrics["loss"]} if event.metrics and "loss" in event.metrics else None
            progress(engine.Progress(opts.num_steps + event.step, total, f"pivotal tuning {event.step}/{pti.steps}",
                                     event.preview, metrics))

        # PTI follows the projection's loss: LPIPS (+ MSE) when it ran, MSE otherwise.
        loss_fn = engine.lpips_loss(opts, device) if result.loss_used == "lpips" else None
        pti = replace(pti, loss="lpips" if loss_fn is not None else "pixel")
        tuned = engine.tune_projection(G, result.ws, target, pti, loss_fn=loss_fn,
                                       progress=tuning if progress else None, cancel=cancel)
    return {"result": result, "target": target, "tuned": tuned, "note": photo_ready.note}


def target_job(photo: str, side: int, fit: str, *, progress: Any = None, cancel: Any = None) -> Any:
    """Job: the FFHQ-aligned target preview (engine.PreparedPhoto); the landmark model loads on first use."""
    return engine.prepare_photo(photo, side, fit=fit, align=True)


class ProjectionPanel(QWidget):
    """Project a photo into W / W+ of the editor's network; live previews, loss plot and progress.

    `editor_network()` gives the path of the network open in the editor (None: none yet). Signals:
    `projected(source)` (an engine.Source; the window makes it the base), `message(text)` (the
    status bar). Attributes tests use: photo_edit, fit_combo, align_check, steps_spin, mode_combo,
    loss_combo, pti_check, pti_steps_spin, start_button, cancel_button, save_button, progress_bar,
    status_label, target_label, reconstruction_label, loss_curve, pti_curve, target_image,
    reconstruction_image, result, tuned, runner, target_runner, previews_seen; `target_ready` fires when
    the target preview is up to date (with face alignment that is a moment later, off the GUI thread).
    """

    projected = Signal(object)
    message = Signal(str)
    run_ended = Signal(str)          # "finished", "cancelled" or "failed"
    target_ready = Signal()          # the target preview is up to date (or failed: see error_label)

    def __init__(self, parent: QWidget | None = None, *, device: str = "cpu",
                 editor_network: Callable[[], str | None] | None = None):
        super().__init__(parent)
        self.device = device
        self._editor_network = editor_network or (lambda: None)
        self.setAcceptDrops(True)
        self.photo_path: str | None = None
        self.target_image: np.ndarray | None = None          # uint8 [R, R, C], what the run aims at
        self.reconstruction_image: np.ndarray | None = None
        self.result: Any = None                               # the last finished ProjectionResult
        self.tuned: Any = None                                # its engine.TunedPhoto when PTI ran
        self.previews_seen = 0
        self._editor_resolution: int | None = None          # the editor network's side, for the target preview
        self._run_photo = ""
        self._steps: list[float] = []
        self._losses: list[float] = []
        self._pti_steps: list[float] = []
        self._pti_losses: list[float] = []
        self._holder: dict[str, Any] = {}
        self.runner = JobRunner(parent=self)
        self.runner.progressed.connect(self._progressed)
        self.runner.finished.connect(self._finished)
        self.runner.failed.connect(self._failed)
        self.runner.cancelled.connect(self._cancelled)
        self.target_runner = JobRunner(parent=self)       # the aligned target preview
        self.target_runner.finished.connect(self._show_aligned_target)
        self.target_runner.failed.connect(self._target_failed)

        layout = QVBoxLayout(self)
        layout.addWidget(self._settings_group())
        layout.addWidget(self._run_group())
        layout.addWidget(self._images_group())
        layout.addWidget(self._plot_group())
        layout.addStretch(1)
        self._set_running(False)

    # --- building --------------------------------------------------------------------------------
    def _settings_group(self) -> QGroupBox:
        box = QGroupBox("Photo")
        form = QFormLayout(box)
        self.photo_edit = QLineEdit()
        self.photo_edit.setPlaceholderText("open or drop a photo here")
        self.photo_edit.editingFinished.connect(lambda: self.set_photo(self.photo_edit.text().strip() or None))
        browse = QPushButton("Open...")
        browse.clicked.connect(self._choose_photo)
        form.addRow("Photo", row(self.photo_edit, browse, stretch_index=0))
        self.fit_combo = QComboBox()
        self.fit_combo.addItem("centre crop", "crop")
        self.fit_combo.addItem("pad", "pad")
        self.fit_combo.currentIndexChanged.connect(lambda _i: self._refresh_target())
        form.addRow("Make square", self.fit_combo)
        self.align_check = QCheckBox("Align face (FFHQ crop)")
        self.align_check.setToolTip("Crop the face as the FFHQ dataset does, from the eyes and mouth among dlib's 68 "
                                    "landmarks; without a detector or a face, the square above is used and the "
                                    "status says so")
        self.align_check.toggled.connect(lambda _on: self._refresh_target())
        form.addRow("", self.align_check)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 100_000)
        self.steps_spin.setValue(engine.ProjectionOptions().num_steps)
        form.addRow("Steps", self.steps_spin)
        self.mode_combo = QComboBox()
        self.mode_combo.addItem("W (one w for all layers)", "w")
        self.mode_combo.addItem("W+ (one w per layer)", "w+")
        form.addRow("Mode", self.mode_combo)
        self.loss_combo = QComboBox()
        self.loss_combo.addItem("LPIPS (VGG16)", "lpips")
        self.loss_combo.addItem("pixel (MSE + MS-SSIM)", "pixel")
        self.loss_combo.setToolTip("LPIPS needs torchvision's VGG16 weights; without them the pixel loss is used")
        form.addRow("Loss", self.loss_combo)
        self.pti_check = QCheckBox("Pivotal tuning")
        self.pti_check.setToolTip("After the projection, fine-tune the network around the latent for a near-exact "
                                  "reconstruction; the change is kept as a compact low-rank delta (Save... writes it)")
        self.pti_steps_spin = QSpinBox()
        self.pti_steps_spin.setRange(1, 100_000)
        self.pti_steps_spin.setValue(engine.PTIOptions().steps)
        self.pti_steps_spin.setSuffix(" steps")
        self.pti_check.toggled.connect(lambda on: self.pti_steps_spin.setEnabled(on and not self.runner.running))
        self.pti_steps_spin.setEnabled(False)
        form.addRow("PTI", row(self.pti_check, self.pti_steps_spin, stretch_index=0))
        return box

    def _run_group(self) -> QGroupBox:
        box = QGroupBox("Run")
        layout = QVBoxLayout(box)
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button = QPushButton("Save...")
        self.save_button.setToolTip("Save projection: proj.png, target.png and projected_w.npz, as NVIDIA's projector "
                                    "writes them")
        self.save_button.clicked.connect(self._choose_save_folder)
        layout.addWidget(row(self.start_button, self.cancel_button, self.save_button))
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        layout.addWidget(self.progress_bar)
        self.status_label = QLabel("Open a photo, then Start.")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.error_label = error_label()
        layout.addWidget(self.error_label)
        return box

    def _images_group(self) -> QGroupBox:
        box = QGroupBox("Target and reconstruction")
        layout = QVBoxLayout(box)
        self.target_label = self._image_label("target")
        self.reconstruction_label = self._image_label("reconstruction")
        layout.addWidget(row(self._captioned(self.target_label, "Target"),
                             self._captioned(self.reconstruction_label, "Reconstruction")))
        return box

    def _plot_group(self) -> QGroupBox:
        box = QGroupBox("Loss")
        layout = QVBoxLayout(box)
        self.plot = pg.PlotWidget()
        self.plot.setBackground("w")
        self.plot.setMinimumHeight(160)
        self.plot.setLabel("bottom", "step")
        self.plot.setLabel("left", "loss")
        self.plot.showGrid(x=True, y=True, alpha=0.3)
        self.plot.addLegend(offset=(-10, 10))
        self.loss_curve = self.plot.plot([], [], pen=pg.mkPen((31, 119, 180), width=2), name="projection")
        self.pti_curve = self.plot.plot([], [], pen=pg.mkPen((214, 39, 40), width=2), name="pivotal tuning")
        layout.addWidget(self.plot)
        return box

    @staticmethod
    def _image_label(text: str) -> QLabel:
        label = QLabel(f"({text})")
        label.setAlignment(Qt.AlignCenter)
        label.setFixedSize(PREVIEW_SIZE, PREVIEW_SIZE)
        label.setStyleSheet("border: 1px solid #bbb; color: #888;")
        return label

    @staticmethod
    def _captioned(widget: QWidget, caption: str) -> QWidget:
        container = QWidget()
        layout = QVBoxLayout(container)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(widget)
        title = QLabel(caption)
        title.setAlignment(Qt.AlignCenter)
        layout.addWidget(title)
        return container

    # --- the photo -------------------------------------------------------------------------------
    def _choose_photo(self) -> None:
        patterns = " ".join(f"*{s}" for s in engine.PHOTO_SUFFIXES)
        path, _ = QFileDialog.getOpenFileName(self, "Open photo", "", f"Images ({patterns});;All files (*)")
        if path:
            self.set_photo(path)

    def set_photo(self, path: str | Path | None) -> None:
        """Use `path` as the target; the preview shows it as the network will see it."""
        self.photo_path = None if path is None else str(path)
        if self.photo_edit.text() != (self.photo_path or ""):
            self.photo_edit.setText(self.photo_path or "")
        self._refresh_target()
        self._set_running(self.runner.running)

    def set_resolution(self, resolution: int | None) -> None:
        """The editor's network resolution (the window calls this on each load): the target preview's size."""
        self._editor_resolution = resolution
        self._refresh_target()

    def _refresh_target(self) -> None:
        """Show the target as the run will see it; face alignment (landmark model, ~1 s) runs off the GUI thread."""
        show_error(self.error_label, "")
        if self.target_runner.running:
            self.target_runner.cancel()       # an older photo or setting: its result is dropped
        if self.photo_path is None:
            self.target_image = None
            self.target_label.setText("(target)")
            return
        side = self._editor_resolution or DEFAULT_PREVIEW_RESOLUTION
        if self.align_check.isChecked():
            self.target_label.setText("(finding the face...)")
            self.status_label.setText("Finding the face...")
            self.target_runner.start(target_job, self.photo_path, side, self._fit())
            return
        try:
            self._show_target(engine.prepare_photo(self.photo_path, side, fit=self._fit()))
        except engine.StyleDeckError as exc:
            self._target_failed(str(exc))

    def _show_target(self, prepared: Any) -> None:
        self.target_image = prepared.image
        if prepared.note:
            self.status_label.setText(prepared.note)
        self.target_label.setPixmap(_pixmap(self.target_image))
        self.target_ready.emit()

    def _show_aligned_target(self, prepared: Any) -> None:
        self.status_label.setText(prepared.note or "Face aligned.")   # replaces "Finding the face..."
        self._show_target(prepared)

    def _target_failed(self, message: str) -> None:
        self.target_image = None
        self.target_label.setText("(target)")
        show_error(self.error_label, message)
        self.target_ready.emit()

    def _fit(self) -> str:
        return str(self.fit_combo.currentData())

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 (Qt's name)
        if self._dropped_image(event) is not None:
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        path = self._dropped_image(event)
        if path is None:
            event.ignore()
            return
        event.acceptProposedAction()
        self.set_photo(path)

    @staticmethod
    def _dropped_image(event: Any) -> str | None:
        mime = event.mimeData()
        if not mime.hasUrls():
            return None
        for url in mime.urls():
            path = url.toLocalFile()
            if path.lower().endswith(engine.PHOTO_SUFFIXES):
                return path
        return None

    # --- running ---------------------------------------------------------------------------------
    def options(self) -> Any:
        """The engine.ProjectionOptions the widgets describe (NVIDIA's schedule otherwise)."""
        steps = int(self.steps_spin.value())
        return engine.ProjectionOptions(num_steps=steps, mode=self.mode_combo.currentData(),
                                        loss=self.loss_combo.currentData(),
                                        preview_every=max(1, min(10, steps // 10)))

    def pti_options(self) -> Any:
        """The engine.PTIOptions the widgets describe, or None when pivotal tuning is off."""
        if not self.pti_check.isChecked():
            return None
        steps = int(self.pti_steps_spin.value())
        return engine.PTIOptions(steps=steps, preview_every=max(1, min(10, steps // 10)))

    def start(self) -> None:
        """Start projecting the photo into the editor's network (the editor keeps working)."""
        network = self._editor_network()
        if network is None:
            show_error(self.error_label, "Open a network first: the photo is projected into it.")
            return
        if self.photo_path is None:
            show_error(self.error_label, "Open a photo first.")
            return
        if self.runner.running:
            return
        show_error(self.error_label, "")
        opts, pti = self.options(), self.pti_options()
        self._steps, self._losses, self._pti_steps, self._pti_losses = [], [], [], []
        self.loss_curve.setData([], [])
        self.pti_curve.setData([], [])
        self.previews_seen = 0
        self.reconstruction_image = None
        self.reconstruction_label.setText("(reconstruction)")
        self.progress_bar.setRange(0, opts.num_steps + (pti.steps if pti is not None else 0))
        self.progress_bar.setValue(0)
        self.status_label.setText("Starting...")
        self._run_photo = self.photo_path
        self.runner.start(projection_job, self._holder, str(network), self.photo_path, self._fit(), opts,
                          str(engine.resolve_device(self.device)), align=self.align_check.isChecked(), pti=pti)
        self._set_running(True)

    def cancel(self) -> None:
        """Stop the run at its next step; nothing is added to the editor."""
        if self.runner.running:
            self.status_label.setText("Cancelling...")
            self.runner.cancel()

    def shutdown(self) -> bool:
        """The window is closing: stop a run and wait for its thread; True when one was running."""
        if self.target_runner.running:
            self.target_runner.cancel()
            self.target_runner.wait()
        if not self.runner.running:
            return False
        self.runner.cancel()
        self.runner.wait()
        return True

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running and self.photo_path is not None)
        self.cancel_button.setEnabled(running)
        self.save_button.setEnabled(not running and self.result is not None)
        for widget in (self.photo_edit, self.fit_combo, self.align_check, self.steps_spin, self.mode_combo,
                       self.loss_combo, self.pti_check):
            widget.setEnabled(not running)
        self.pti_steps_spin.setEnabled(not running and self.pti_check.isChecked())

    def _progressed(self, event: Any) -> None:
        if event.total:
            self.progress_bar.setMaximum(int(event.total))
            self.progress_bar.setValue(int(event.step))
        self.status_label.setText(event.message)
        metrics = event.metrics or {}
        if "loss" in metrics and event.step > 0:
            self._steps.append(float(event.step))
            self._losses.append(float(metrics["loss"]))
            self.loss_curve.setData(self._steps, self._losses)
        if "pti_loss" in metrics:
            self._pti_steps.append(float(event.step))
            self._pti_losses.append(float(metrics["pti_loss"]))
            self.pti_curve.setData(self._pti_steps, self._pti_losses)
        if event.preview is not None:
            self.reconstruction_image = np.asarray(event.preview)
            self.reconstruction_label.setPixmap(_pixmap(self.reconstruction_image))
            self.previews_seen += 1

    def _finished(self, outcome: dict[str, Any]) -> None:
        result, target, tuned = outcome["result"], outcome["target"], outcome.get("tuned")
        self.result, self.target_image, self.tuned = result, target, tuned
        self.target_label.setPixmap(_pixmap(target))
        self.reconstruction_image = result.image if tuned is None else tuned.image
        self.reconstruction_label.setPixmap(_pixmap(self.reconstruction_image))
        self.progress_bar.setValue(self.progress_bar.maximum())
        name = Path(self._run_photo).stem
        used = "" if result.loss_used == self.loss_combo.currentData() else f" (the {result.loss_used} loss was used)"
        final = f"{result.losses[-1]:.4f}" if result.losses else "–"
        lines = [outcome["note"]] if outcome.get("note") else []
        lines.append(f"Done: {result.steps_done} steps, final loss {final}{used}.")
        if tuned is not None:
            lines.append(f"Pivotal tuning, {tuned.report.summary()}. The editor renders the untuned network; "
                         "Save... writes the tuning as pti_delta.safetensors.")
        self.status_label.setText("\n".join(lines))
        self._set_running(False)
        self.projected.emit(engine.Source.from_latent(result.ws, label=f"photo: {name}"))
        self.message.emit(f"Projected {Path(self._run_photo).name}: it is the base now.")
        self.run_ended.emit("finished")

    def _failed(self, message: str) -> None:
        show_error(self.error_label, message)
        self.status_label.setText("The projection failed.")
        self._set_running(False)
        self.run_ended.emit("failed")

    def _cancelled(self) -> None:
        self.status_label.setText("Cancelled; nothing was added.")
        self._set_running(False)
        self.run_ended.emit("cancelled")

    # --- saving ----------------------------------------------------------------------------------
    def _choose_save_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save projection into folder")
        if folder:
            self.save_projection(folder)

    def save_projection(self, outdir: str | Path) -> dict[str, Path] | None:
        """Write proj.png, target.png and projected_w.npz of the last result (engine.save_projection), and
        after pivotal tuning its compact delta pti_delta.safetensors and image proj_pti.png."""
        if self.result is None or self.target_image is None:
            show_error(self.error_label, "Nothing to save yet: run a projection first.")
            return None
        try:
            paths = engine.save_projection(outdir, self.result, self.target_image)
            if self.tuned is not None:
                paths["pti_delta"] = engine.save_delta(Path(outdir) / "pti_delta.safetensors", self.tuned.delta)
                paths["pti_image"] = engine.save_png(Path(outdir) / "proj_pti.png", self.tuned.image)
        except (engine.StyleDeckError, OSError) as exc:
            show_error(self.error_label, f"Could not save the projection: {exc}")
            return None
        self.message.emit(f"Saved the projection in {outdir}")
        return paths
