"""The Animation panel: a latent loop, StyleGAN3 rotation / translation or both, previewed and exported.

Choose the kind and its settings; a low-resolution preview (a few frames spread over the whole
animation, rendered by a job) plays in a loop on a QTimer. Export writes mp4, gif, webp or a folder
of PNG frames on a JobRunner thread, with a progress bar, the time left, and Cancel (which leaves no
file). Jobs run on the panel's own copy of the editor's network (loaded from its file, so the render
thread's generator is never shared); a lock keeps the preview and the export off it at the same time.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox, QLabel,
                               QLineEdit, QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget)

import engine
from app.job_runner import JobRunner
from app.widgets import error_label, row, show_error

log = logging.getLogger(__name__)

KINDS = (("loop", "Latent loop (seeds)"), ("rotate", "Rotate"), ("translate", "Translate"),
         ("both", "Rotate + translate"))
FORMAT_SUFFIX = {"mp4": ".mp4", "gif": ".gif", "webp": ".webp", "png": "_frames"}
PREVIEW_FRAMES = 24
PREVIEW_SIDE = 128           # px: the preview's longer side
PREVIEW_DELAY_MS = 400       # settings settle this long before a new preview renders
MIN_FRAME_MS = 30            # the preview plays at most ~33 frames per second


def _pixmap(image: np.ndarray, side: int = 2 * PREVIEW_SIDE) -> QPixmap:
    image = np.ascontiguousarray(image[:, :, :3])
    h, w = image.shape[:2]
    qimage = QImage(image.data, w, h, 3 * w, QImage.Format_RGB888).copy()
    mode = Qt.FastTransformation if max(w, h) < side else Qt.SmoothTransformation
    return QPixmap.fromImage(qimage).scaled(side, side, Qt.KeepAspectRatio, mode)


def _renderer(holder: dict[str, Any], network: str, device: str, cancel: Any) -> Any:
    """The panel's renderer of `network` (loaded once, kept in `holder`); call with holder['lock'] held."""
    key = (network, device)
    if holder.get("key") != key:
        holder.pop("renderer", None)
        holder["key"] = None
        networks = engine.load_network(network, device=device, cancel=cancel)
        holder["renderer"], holder["key"] = engine.Renderer(networks, device), key
    return holder["renderer"]


def _spec(renderer: Any, state: Any, settings: dict[str, Any]) -> Any:
    """engine.AnimationSpec from the editor's state and the panel's settings (on the job thread)."""
    kind = settings["kind"]
    keyframes = [engine.current_keyframe(renderer, state)] if kind != "loop" or settings["from_current"] else []
    if kind == "loop":
        class_idx = state.base.class_idx
        keyframes += [engine.Source.from_seed(s, class_idx) for s in settings["seeds"]]
    if not keyframes:
        raise engine.StyleDeckError("A latent loop needs keyframes: give seeds or start from the current image.")
    rotate = settings["turns"] * 360.0 if kind in ("rotate", "both") else 0.0
    path = settings["path"] if kind in ("translate", "both") else "none"
    origin = tuple(state.transform) if renderer.family == "stylegan3" else (0.0, 0.0, 0.0)
    motion = engine.Motion(origin=origin, rotate=rotate, path=path, shift=(settings["radius"], 0.0),
                           radius=settings["radius"], cycles=settings["cycles"])
    return engine.AnimationSpec(keyframes=(tuple(keyframes),), num_frames=settings["num_frames"],
                                interpolation=settings["interpolation"], easing=settings["easing"],
                                loop=settings["loop"], motion=motion, psi=state.psi, cutoff=state.cutoff,
                                noise_mode=state.noise_mode)


def preview_job(holder: dict[str, Any], network: str, state: Any, settings: dict[str, Any], device: str, *,
                progress: Any = None, cancel: Any = None) -> list[np.ndarray]:
    """Job: a few small frames spread over the animation."""
    with holder["lock"]:
        renderer = _renderer(holder, network, device, cancel)
        spec = _spec(renderer, state, settings)
        return engine.preview_animation(renderer, spec, frames=PREVIEW_FRAMES, max_side=PREVIEW_SIDE,
                                        progress=progress, cancel=cancel)


def export_job(holder: dict[str, Any], network: str, state: Any, settings: dict[str, Any], output: str,
               opts: Any, device: str, *, progress: Any = None, cancel: Any = None) -> Any:
    """Job: render and write the whole animation; returns engine.ExportResult."""
    with holder["lock"]:
        renderer = _renderer(holder, network, device, cancel)
        spec = _spec(renderer, state, settings)
        return engine.export_animation(renderer, spec, output, opts, progress=progress, cancel=cancel)


class AnimationPanel(QWidget):
    """Animation settings, a playing preview, and export with progress, ETA and cancel.

    `editor_network()` and `editor_state()` give the editor's network path and EditState (None: none
    yet). Signals: exported(path), message(text) for the status bar, run_ended("finished" | "cancelled"
    | "failed"), preview_ready(frame count). Attributes tests use: kind_combo, seeds_edit,
    from_current_check, interpolation_combo, easing_combo, loop_check, turns_spin, path_combo,
    radius_spin, cycles_spin, format_combo, fps_spin, duration_spin, size_spin, output_edit,
    export_button, cancel_button, progress_bar, eta_label, status_label, error_label, preview_label,
    preview_frames, play_timer, export_runner, preview_runner, last_result.
    """

    exported = Signal(str)
    message = Signal(str)
    run_ended = Signal(str)
    preview_ready = Signal(int)

    def __init__(self, parent: QWidget | None = None, *, device: str = "cpu",
                 editor_network: Callable[[], str | None] | None = None,
                 editor_state: Callable[[], Any] | None = None):
        super().__init__(parent)
        self.device = device
        self._editor_network = editor_network or (lambda: None)
        self._editor_state = editor_state or (lambda: None)
        self._family: str | None = None
        self._holder: dict[str, Any] = {"lock": threading.Lock()}
        self.preview_frames: list[np.ndarray] = []
        self._preview_index = 0
        self._export_started = 0.0
        self.last_result: Any = None

        self.preview_runner = JobRunner(parent=self)
        self.preview_runner.finished.connect(self._preview_finished)
        self.preview_runner.failed.connect(self._preview_failed)
        self.export_runner = JobRunner(parent=self)
        self.export_runner.progressed.connect(self._export_progressed)
        self.export_runner.finished.connect(self._export_finished)
        self.export_runner.failed.connect(self._export_failed)
        self.export_runner.cancelled.connect(self._export_cancelled)
        self.play_timer = QTimer(self)
        self.play_timer.timeout.connect(self._next_preview_frame)
        self._preview_delay = QTimer(self)
        self._preview_delay.setSingleShot(True)
        self._preview_delay.setInterval(PREVIEW_DELAY_MS)
        self._preview_delay.timeout.connect(self.refresh_preview)

        layout = QVBoxLayout(self)
        layout.addWidget(self._preview_group())                 # on top: what the settings below make
        layout.addWidget(self._kind_group())
        layout.addWidget(self._export_group())
        layout.addStretch(1)
        self._kind_changed()
        self._set_running(False)

    # --- building --------------------------------------------------------------------------------
    def _kind_group(self) -> QGroupBox:
        box = QGroupBox("Animation")
        form = QFormLayout(box)
        self.kind_combo = QComboBox()
        for key, text in KINDS:
            self.kind_combo.addItem(text, key)
        form.addRow("Kind", self.kind_combo)
        self.seeds_edit = QLineEdit("1-3")
        self.seeds_edit.setToolTip("Keyframe seeds, e.g. 1-3,7; the loop visits them in order")
        form.addRow("Seeds", self.seeds_edit)
        self.from_current_check = QCheckBox("Start from the current image")
        self.from_current_check.setChecked(True)
        form.addRow("", self.from_current_check)
        self.interpolation_combo = QComboBox()
        for key in ("linear", "spherical", "cubic"):
            self.interpolation_combo.addItem(key, key)
        form.addRow("Interpolation", self.interpolation_combo)
        self.easing_combo = QComboBox()
        self.easing_combo.addItem("linear", "linear")
        self.easing_combo.addItem("smooth (ease in and out)", "smooth")
        form.addRow("Easing", self.easing_combo)
        self.loop_check = QCheckBox("Closed loop (ends where it starts)")
        self.loop_check.setChecked(True)
        form.addRow("", self.loop_check)
        self.turns_spin = QDoubleSpinBox()
        self.turns_spin.setRange(-10.0, 10.0)
        self.turns_spin.setSingleStep(0.25)
        self.turns_spin.setValue(1.0)
        self.turns_spin.setSuffix(" turns")
        form.addRow("Rotation", self.turns_spin)
        self.path_combo = QComboBox()
        for key, text in (("circle", "circle"), ("figure8", "figure-eight"), ("line", "line (x)")):
            self.path_combo.addItem(text, key)
        form.addRow("Path", self.path_combo)
        self.radius_spin = QDoubleSpinBox()
        self.radius_spin.setRange(0.0, 1.0)
        self.radius_spin.setSingleStep(0.05)
        self.radius_spin.setValue(0.1)
        self.radius_spin.setToolTip("Size of the path in image widths")
        form.addRow("Radius", self.radius_spin)
        self.cycles_spin = QSpinBox()
        self.cycles_spin.setRange(1, 20)
        form.addRow("Times round", self.cycles_spin)
        self.kind_combo.currentIndexChanged.connect(lambda _i: self._kind_changed())
        for combo in (self.interpolation_combo, self.easing_combo, self.path_combo):
            combo.currentIndexChanged.connect(lambda _i: self.schedule_preview())
        for spin in (self.turns_spin, self.radius_spin, self.cycles_spin):
            spin.valueChanged.connect(lambda _v: self.schedule_preview())
        for check in (self.from_current_check, self.loop_check):
            check.toggled.connect(lambda _on: self.schedule_preview())
        self.seeds_edit.editingFinished.connect(self.schedule_preview)
        return box

    def _preview_group(self) -> QGroupBox:
        box = QGroupBox("Preview")
        layout = QVBoxLayout(box)
        self.preview_label = QLabel("(preview)")
        self.preview_label.setAlignment(Qt.AlignCenter)
        self.preview_label.setMinimumSize(2 * PREVIEW_SIDE, 2 * PREVIEW_SIDE)
        self.preview_label.setStyleSheet("border: 1px solid #bbb; color: #888;")
        layout.addWidget(self.preview_label)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh_preview)
        self.play_button = QPushButton("Pause")
        self.play_button.clicked.connect(self._toggle_play)
        layout.addWidget(row(self.refresh_button, self.play_button))
        return box

    def _export_group(self) -> QGroupBox:
        box = QGroupBox("Export")
        form = QFormLayout(box)
        self.format_combo = QComboBox()
        for key, text in (("mp4", "mp4 (H.264)"), ("gif", "gif"), ("webp", "webp"), ("png", "PNG frames (folder)")):
            self.format_combo.addItem(text, key)
        self.format_combo.currentIndexChanged.connect(lambda _i: self._format_changed())
        form.addRow("Format", self.format_combo)
        self.fps_spin = QDoubleSpinBox()
        self.fps_spin.setRange(1.0, 120.0)
        self.fps_spin.setValue(30.0)
        form.addRow("Frames per second", self.fps_spin)
        self.duration_spin = QDoubleSpinBox()
        self.duration_spin.setRange(0.1, 600.0)
        self.duration_spin.setValue(4.0)
        self.duration_spin.setSuffix(" s")
        self.duration_spin.valueChanged.connect(lambda _v: self.schedule_preview())
        form.addRow("Duration", self.duration_spin)
        self.size_spin = QSpinBox()
        self.size_spin.setRange(0, 8192)
        self.size_spin.setSpecialValueText("as rendered")
        self.size_spin.setSuffix(" px")
        form.addRow("Size", self.size_spin)
        self.output_edit = QLineEdit(str(Path.home() / "styledeck.mp4"))
        browse = QPushButton("...")
        browse.clicked.connect(self._choose_output)
        form.addRow("Output", row(self.output_edit, browse, stretch_index=0))
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(self.export)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        form.addRow(row(self.export_button, self.cancel_button))
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        form.addRow(self.progress_bar)
        self.eta_label = QLabel("")
        form.addRow(self.eta_label)
        self.status_label = QLabel("Open a network, then Export.")
        self.status_label.setWordWrap(True)
        form.addRow(self.status_label)
        self.error_label = error_label()
        form.addRow(self.error_label)
        return box

    # --- settings --------------------------------------------------------------------------------
    def set_family(self, family: str | None) -> None:
        """The editor's network family (the window calls this on each load): StyleGAN2 has no motion kinds."""
        self._family = family
        model = self.kind_combo.model()
        for i, (key, _text) in enumerate(KINDS):
            item = model.item(i)
            item.setEnabled(key == "loop" or family == "stylegan3")
            item.setToolTip("" if item.isEnabled() else "Rotation and translation need a StyleGAN3 network")
        if family != "stylegan3" and self.kind() != "loop":
            self.kind_combo.setCurrentIndex(0)
        self.schedule_preview()

    def kind(self) -> str:
        return str(self.kind_combo.currentData())

    def _kind_changed(self) -> None:
        kind = self.kind()
        for widget in (self.seeds_edit, self.interpolation_combo, self.easing_combo):
            widget.setEnabled(kind == "loop")
        self.from_current_check.setEnabled(kind == "loop")
        self.turns_spin.setEnabled(kind in ("rotate", "both"))
        for widget in (self.path_combo, self.radius_spin, self.cycles_spin):
            widget.setEnabled(kind in ("translate", "both"))
        self.schedule_preview()

    def _format_changed(self) -> None:
        fmt = str(self.format_combo.currentData())
        text = self.output_edit.text().strip()
        if text:
            path = Path(text)
            stem = path.name[:-len("_frames")] if path.name.endswith("_frames") else path.stem
            self.output_edit.setText(str(path.with_name(stem + FORMAT_SUFFIX[fmt])))

    def _choose_output(self) -> None:
        fmt = str(self.format_combo.currentData())
        if fmt == "png":
            path = QFileDialog.getExistingDirectory(self, "Folder for the PNG frames")
        else:
            path, _ = QFileDialog.getSaveFileName(self, "Export animation", self.output_edit.text(),
                                                  f"{fmt} (*.{fmt})")
        if path:
            self.output_edit.setText(path)

    def settings(self) -> dict[str, Any]:
        """What the widgets describe; a StyleDeckError when the seeds cannot be read."""
        kind = self.kind()
        text = self.seeds_edit.text().strip()
        seeds = engine.parse_range_list(text) if kind == "loop" and text else []
        num_frames = max(1, round(self.duration_spin.value() * self.fps_spin.value()))
        return {"kind": kind, "seeds": seeds, "from_current": self.from_current_check.isChecked(),
                "interpolation": str(self.interpolation_combo.currentData()),
                "easing": str(self.easing_combo.currentData()), "loop": self.loop_check.isChecked(),
                "turns": float(self.turns_spin.value()), "path": str(self.path_combo.currentData()),
                "radius": float(self.radius_spin.value()), "cycles": int(self.cycles_spin.value()),
                "num_frames": num_frames}

    def encode_options(self) -> Any:
        side = int(self.size_spin.value())
        return engine.EncodeOptions(fps=float(self.fps_spin.value()), format=str(self.format_combo.currentData()),
                                    size=(side, side) if side else None)

    # --- preview ---------------------------------------------------------------------------------
    def schedule_preview(self, *_args: Any) -> None:
        """Settings or the editor changed: render a new preview once they settle (only while shown)."""
        self._preview_delay.start()

    def refresh_preview(self) -> None:
        network, state = self._editor_network(), self._editor_state()
        if network is None or state is None or not self.isVisible():
            return
        try:
            settings = self.settings()
        except engine.StyleDeckError as exc:
            show_error(self.error_label, str(exc))
            return
        if self.preview_runner.running:
            self.preview_runner.cancel()     # the newest settings win; the old preview is dropped
        self.preview_runner.start(preview_job, self._holder, str(network), state, settings,
                                  str(engine.resolve_device(self.device)))

    def _preview_finished(self, frames: list[np.ndarray]) -> None:
        self.preview_frames = list(frames)
        self._preview_index = 0
        show_error(self.error_label, "")
        if self.preview_frames:
            duration_ms = 1000.0 * self.duration_spin.value()
            self.play_timer.setInterval(max(MIN_FRAME_MS, int(duration_ms / len(self.preview_frames))))
            self._next_preview_frame()
            if self.play_button.text() == "Pause":
                self.play_timer.start()
        self.preview_ready.emit(len(self.preview_frames))

    def _preview_failed(self, message: str) -> None:
        show_error(self.error_label, message)

    def _next_preview_frame(self) -> None:
        if not self.preview_frames:
            return
        frame = self.preview_frames[self._preview_index % len(self.preview_frames)]
        self.preview_label.setPixmap(_pixmap(frame))
        self._preview_index = (self._preview_index + 1) % len(self.preview_frames)

    def _toggle_play(self) -> None:
        if self.play_timer.isActive():
            self.play_timer.stop()
            self.play_button.setText("Play")
        else:
            self.play_button.setText("Pause")
            if self.preview_frames:
                self.play_timer.start()

    # --- export ----------------------------------------------------------------------------------
    def export(self, output: str | Path | None = None) -> None:
        """Render and write the animation to `output` (default: the Output box) on a worker thread."""
        network, state = self._editor_network(), self._editor_state()
        if network is None or state is None:
            show_error(self.error_label, "Open a network first.")
            return
        if self.export_runner.running:
            return
        if output:
            self.output_edit.setText(str(output))
        target = self.output_edit.text().strip()
        if not target:
            show_error(self.error_label, "Choose where to write the animation.")
            return
        try:
            settings, opts = self.settings(), self.encode_options()
        except engine.StyleDeckError as exc:
            show_error(self.error_label, str(exc))
            return
        show_error(self.error_label, "")
        if self.preview_runner.running:
            self.preview_runner.cancel()     # the export needs the network; the preview can wait
        self.progress_bar.setRange(0, settings["num_frames"])
        self.progress_bar.setValue(0)
        self.eta_label.setText("")
        self.status_label.setText("Starting...")
        self._export_started = time.monotonic()
        self.export_runner.start(export_job, self._holder, str(network), state, settings, target, opts,
                                 str(engine.resolve_device(self.device)))
        self._set_running(True)

    def cancel(self) -> None:
        """Stop the export at its next frame; nothing is written."""
        if self.export_runner.running:
            self.status_label.setText("Cancelling...")
            self.export_runner.cancel()

    def shutdown(self) -> bool:
        """The window is closing: stop both jobs and wait for them; True when an export was running."""
        exporting = self.export_runner.running
        for runner in (self.preview_runner, self.export_runner):
            if runner.running:
                runner.cancel()
                runner.wait()
        self.play_timer.stop()
        self._preview_delay.stop()
        return exporting

    def _set_running(self, running: bool) -> None:
        self.export_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        for widget in (self.format_combo, self.fps_spin, self.duration_spin, self.size_spin, self.output_edit):
            widget.setEnabled(not running)

    def _export_progressed(self, event: Any) -> None:
        if event.total:
            self.progress_bar.setMaximum(int(event.total))
            self.progress_bar.setValue(int(event.step))
        self.status_label.setText(event.message)
        if event.step > 0 and event.total:
            elapsed = time.monotonic() - self._export_started
            left = elapsed * (event.total - event.step) / event.step
            self.eta_label.setText(f"{elapsed:.0f} s elapsed, about {left:.0f} s left")

    def _export_finished(self, result: Any) -> None:
        self.last_result = result
        self.progress_bar.setValue(self.progress_bar.maximum())
        elapsed = time.monotonic() - self._export_started
        self.eta_label.setText(f"done in {elapsed:.1f} s")
        self.status_label.setText(f"Wrote {result.num_frames} frames ({result.size[0]}x{result.size[1]}) to "
                                  f"{result.path}.")
        self._set_running(False)
        self.exported.emit(str(result.path))
        self.message.emit(f"Exported {Path(result.path).name}")
        self.run_ended.emit("finished")

    def _export_failed(self, message: str) -> None:
        show_error(self.error_label, message)
        self.status_label.setText("The export failed; nothing was written.")
        self.eta_label.setText("")
        self._set_running(False)
        self.run_ended.emit("failed")

    def _export_cancelled(self) -> None:
        self.status_label.setText("Cancelled; nothing was written.")
        self.eta_label.setText("")
        self._set_running(False)
        self.run_ended.emit("cancelled")
