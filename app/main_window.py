"""The main window: canvas, source strip, docked panels, menus, status bar; loads networks off the GUI thread."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QGuiApplication, QImage, QKeySequence
from PySide6.QtWidgets import (QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox, QScrollArea,
                               QVBoxLayout, QWidget)

import engine
from app.canvas import ImageCanvas
from app.job_runner import JobRunner
from app.panels.animation import AnimationPanel
from app.panels.finetune import FinetunePanel
from app.panels.mixing import MixingPanel
from app.panels.model import ModelPanel
from app.panels.noise import NoisePanel
from app.panels.projection import ProjectionPanel
from app.panels.truncation import TruncationPanel
from app.rendering import GridRequest, RenderController, make_grid_request
from app.session import EditSession
from app.source_strip import SourceStrip

log = logging.getLogger(__name__)

NETWORK_SUFFIXES = (".pkl", ".safetensors")
SESSION_SUFFIX = ".styledeck.json"
FINETUNE_DOCK_WIDTH = 460


@dataclass
class LoadedNetwork:
    """What loading a network produces on the job thread; the GUI thread takes it over."""
    path: str
    renderer: Any            # engine.Renderer; from here on used by the render thread only
    info: dict[str, Any]


def load_for_app(path: str, device: str = "cpu", *, progress: Any = None, cancel: Any = None) -> LoadedNetwork:
    """Job: read a network file and build its Renderer (runs on a JobRunner thread)."""
    networks = engine.load_network(path, device=_device(device), progress=progress, cancel=cancel)
    if "G_ema" not in networks and "G" not in networks:
        raise engine.StyleDeckError(f"{Path(path).name} holds no generator (found: {', '.join(networks) or 'nothing'}).")
    renderer = engine.Renderer(networks, _device(device))
    info = dict(engine.network_info(renderer.G))
    info["device"] = str(getattr(renderer, "device", _device(device)))
    info["precision"] = renderer.path_status   # e.g. "fast: float16 + float32, ..., CUDA graph"
    info["path"] = str(path)
    info["provenance"] = engine.provenance_lines(engine.provenance(path))
    return LoadedNetwork(str(path), renderer, info)


def _device(name: str) -> str:
    """'auto' -> CUDA when present, else the CPU (the engine decides; the app never imports torch)."""
    return str(engine.resolve_device(name))


class MainWindow(QMainWindow):
    """StyleDeck's editing window. Attributes tests use: session, render_controller, canvas, source_strip,
    mixing_panel, truncation_panel, noise_panel, model_panel, finetune_panel, projection_panel, animation_panel,
    docks, error_box, last_error."""

    def __init__(self, model_path: str | None = None, device: str = "cpu"):
        super().__init__()
        self.setWindowTitle("StyleDeck")
        self.setAcceptDrops(True)
        self.resize(1400, 900)
        self.device = device
        self.network_path: str | None = None
        self.network_info: dict[str, Any] = {}
        self.groups: tuple[Any, ...] = ()
        self.last_error: str | None = None
        self.error_box: QMessageBox | None = None
        self._grid_params: tuple[list[int], list[int], list[int]] | None = None
        self._pending_state: Any = None
        self.initial_seeds: tuple[int, ...] = (0,)  # base, then style sources, for the first network

        self.session = EditSession(parent=self)
        self.canvas = ImageCanvas()
        self.render_controller = RenderController(show=self.canvas.set_image, parent=self)
        self.render_controller.attach(self.session)
        self.loader = JobRunner(parent=self)
        self.loader.finished.connect(self._network_loaded)
        self.loader.failed.connect(self._network_failed)
        self.loader.cancelled.connect(lambda: self.statusBar().showMessage("Loading stopped.", 5000))
        self.loader.progressed.connect(lambda p: self.statusBar().showMessage(p.message))

        self.source_strip = SourceStrip(self.session)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.source_strip)
        self.setCentralWidget(central)

        self.mixing_panel = MixingPanel(self.session)
        self.truncation_panel = TruncationPanel(self.session)
        self.noise_panel = NoisePanel(self.session)
        self.model_panel = ModelPanel(self)
        self.finetune_panel = FinetunePanel(device=device, editor_network=lambda: self.network_path,
                                            editor_state=lambda: self.session.state)
        self.projection_panel = ProjectionPanel(device=device, editor_network=lambda: self.network_path)
        self.animation_panel = AnimationPanel(device=device, editor_network=lambda: self.network_path,
                                              editor_state=lambda: self.session.state)
        self.panels = (self.mixing_panel, self.truncation_panel, self.noise_panel)
        self.docks: dict[str, QDockWidget] = {}
        self._add_dock("model", "Model", self.model_panel, Qt.LeftDockWidgetArea)
        self._add_dock("mixing", "Mixing", self.mixing_panel, Qt.RightDockWidgetArea)
        self._add_dock("truncation", "Truncation", self.truncation_panel, Qt.RightDockWidgetArea)
        self._add_dock("noise", "Noise && transform", self.noise_panel, Qt.RightDockWidgetArea)
        # a tall panel: a tab beside Model in the full-height left column; View > Fine-tune shows it
        self._add_dock("finetune", "Fine-tune", self.finetune_panel, Qt.LeftDockWidgetArea)
        self.tabifyDockWidget(self.docks["model"], self.docks["finetune"])
        self.docks["finetune"].hide()
        self.docks["finetune"].visibilityChanged.connect(self._finetune_shown)
        self.docks["finetune"].toggleViewAction().triggered.connect(
            lambda checked: checked and self.show_panel("finetune"))  # shown from the menu: its tab comes up
        self._add_dock("projection", "Projection", self.projection_panel, Qt.RightDockWidgetArea)
        self.tabifyDockWidget(self.docks["noise"], self.docks["projection"])
        self.docks["projection"].hide()  # View > Projection shows it, a tab beside the right-hand docks
        self.docks["projection"].toggleViewAction().triggered.connect(
            lambda checked: checked and self.show_panel("projection"))
        self._add_dock("animation", "Animation", self.animation_panel, Qt.RightDockWidgetArea)
        self.tabifyDockWidget(self.docks["noise"], self.docks["animation"])
        self.docks["animation"].hide()  # View > Animation shows it, a tab beside the right-hand docks
        self.docks["animation"].toggleViewAction().triggered.connect(
            lambda checked: checked and self.show_panel("animation"))
        self.resizeDocks([self.docks["model"]], [320], Qt.Horizontal)
        self.resizeDocks([self.docks["mixing"]], [380], Qt.Horizontal)
        self.model_panel.open_requested.connect(self.open_network)
        self.mixing_panel.grid_requested.connect(self._grid_requested)
        self.finetune_panel.load_requested.connect(self.open_network)
        self.finetune_panel.message.connect(lambda text: self.statusBar().showMessage(text, 10000))
        self.projection_panel.projected.connect(self._photo_projected)
        self.projection_panel.message.connect(lambda text: self.statusBar().showMessage(text, 10000))
        self.animation_panel.message.connect(lambda text: self.statusBar().showMessage(text, 10000))
        self.session.changed.connect(self.animation_panel.schedule_preview)
        self.docks["animation"].visibilityChanged.connect(lambda visible: visible and self.animation_panel.schedule_preview())

        self._build_menus()
        self.render_label = QLabel("no image yet")
        self.statusBar().addPermanentWidget(self.render_label)
        self.render_controller.stats_changed.connect(self._show_stats)
        self.render_controller.failed.connect(self._render_failed)
        self.session.undo_changed.connect(self._update_undo)
        self._update_undo(False, False)

        if model_path:
            self.open_network(model_path)

    # --- layout --------------------------------------------------------------------------------
    def _add_dock(self, key: str, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(f"dock_{key}")  # saveState() needs names
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(widget)
        dock.setWidget(scroll)
        self.addDockWidget(area, dock)
        self.docks[key] = dock
        return dock

    def show_panel(self, key: str) -> None:
        """Make dock `key` (one of app.PANELS) visible and raised."""
        dock = self.docks[key]
        dock.show()
        dock.raise_()

    def _finetune_shown(self, visible: bool) -> None:
        if visible and self.docks["finetune"].width() < FINETUNE_DOCK_WIDTH:  # its plots need the room
            self.resizeDocks([self.docks["finetune"]], [FINETUNE_DOCK_WIDTH], Qt.Horizontal)

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        self.open_action = self._action(file_menu, "&Open network...", self._open_network_dialog, QKeySequence.Open)
        self.recent_menu = file_menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        file_menu.addSeparator()
        self.save_image_action = self._action(file_menu, "&Save image...", self._save_image_dialog, QKeySequence.Save)
        self.copy_action = self._action(file_menu, "&Copy image", self.copy_image, QKeySequence.Copy)
        file_menu.addSeparator()
        self._action(file_menu, "Open s&ession...", self._open_session_dialog, QKeySequence("Ctrl+Shift+O"))
        self._action(file_menu, "Save sess&ion...", self._save_session_dialog, QKeySequence("Ctrl+Shift+S"))
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, QKeySequence.Quit)

        edit_menu = bar.addMenu("&Edit")
        self.undo_action = self._action(edit_menu, "&Undo", self.session.undo, QKeySequence.Undo)
        self.redo_action = self._action(edit_menu, "&Redo", self.session.redo, QKeySequence.Redo)

        view_menu = bar.addMenu("&View")
        for dock in self.docks.values():
            view_menu.addAction(dock.toggleViewAction())
        view_menu.addSeparator()
        self.grid_action = self._action(view_menu, "&Grid mode", None, QKeySequence("Ctrl+G"))
        self.grid_action.setCheckable(True)
        self.grid_action.toggled.connect(self.set_grid_mode)
        view_menu.addSeparator()
        view_menu.addAction(self.canvas.fit_action)
        view_menu.addAction(self.canvas.actual_size_action)

    def _action(self, menu: Any, text: str, slot: Any, shortcut: Any = None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        if slot is not None:
            action.triggered.connect(lambda _checked=False: slot())
        menu.addAction(action)
        return action

    # --- networks ------------------------------------------------------------------------------
    def open_network(self, path: str | Path, state: Any = None) -> None:
        """Load `path` on a worker thread; on success it replaces the model, on failure the old one stays.

        `state` (from a session file) becomes the editing state once the network is in.
        """
        if self.loader.running:
            self.loader.cancel()  # the newest request wins; the old load's outcome is ignored
        self._pending_state = state
        self.statusBar().showMessage(f"Opening {Path(path).name}...")
        self.loader.start(load_for_app, str(path), self.device)

    def _network_loaded(self, loaded: LoadedNetwork) -> None:
        renderer, pending = loaded.renderer, self._pending_state
        self._pending_state = None
        num_ws = int(renderer.num_ws)
        if pending is not None and len(pending.mix[0]) != num_ws:
            self._network_failed(f"The session was saved for a network with {len(pending.mix[0])} layers, but "
                                 f"{Path(loaded.path).name} has {num_ws}; the session was not opened.")
            return
        old = self.session.state
        if pending is not None:
            state = pending if pending.network == loaded.path else _replace(pending, network=loaded.path)
        else:
            # a new network keeps the seeds on show (their weights start over: the layers differ)
            seeds = tuple(s.seed for s in old.sources if s.seed is not None) if old is not None else ()
            state = engine.initial_state(loaded.path, num_ws, seeds=seeds or self.initial_seeds)
        self.network_path, self.network_info = loaded.path, loaded.info
        self.groups = tuple(renderer.groups)
        self.render_controller.set_renderer(lambda r=renderer: r)
        for panel in self.panels:
            panel.set_groups(self.groups, num_ws, renderer.family)
        self.model_panel.set_info(loaded.info)
        self.model_panel.add_recent(loaded.path)
        self.finetune_panel.set_editor_network(loaded.path)
        self.projection_panel.set_resolution(int(loaded.info.get("resolution", 0)) or None)
        self.animation_panel.set_family(renderer.family)
        self.setWindowTitle(f"StyleDeck — {Path(loaded.path).name}")
        self.statusBar().showMessage(f"Opened {Path(loaded.path).name}", 5000)
        self.session.reset(state)  # -> changed -> the controller renders it

    def _network_failed(self, message: str) -> None:
        self._pending_state = None
        self.show_error(message)
        if self.render_controller.last_result is None and self.session.state is not None:
            self.render_controller.refresh()

    def _photo_projected(self, source: Any) -> None:
        """A projected photo becomes the base (the canvas shows it); its latent mixes like a seed."""
        state = self.session.state
        if state is None:
            return
        if source.latent_shape[0] not in (1, state.num_ws):  # the network changed during the run
            self.show_error(f"The projected photo has {source.latent_shape[0]} layers but the open network has "
                            f"{state.num_ws}; it was not added.")
            return
        self.session.apply(engine.with_base(state, source))

    def show_error(self, message: str) -> None:
        """A readable error: the status bar, the Model panel and a non-modal message box."""
        self.last_error = message
        log.warning("%s", message)
        self.statusBar().showMessage(message, 15000)
        self.model_panel.show_error(message)
        if self.error_box is not None:
            self.error_box.close()
        box = QMessageBox(QMessageBox.Warning, "StyleDeck", message, QMessageBox.Ok, self)
        box.setWindowModality(Qt.NonModal)  # never blocks the window (or a test)
        box.setAttribute(Qt.WA_DeleteOnClose)
        box.finished.connect(lambda _r, b=box: self._forget_box(b))
        self.error_box = box
        box.show()

    def _forget_box(self, box: QMessageBox) -> None:
        if self.error_box is box:
            self.error_box = None

    # --- rendering -----------------------------------------------------------------------------
    def _show_stats(self, render_ms: float, fps: float) -> None:
        result = self.render_controller.last_result
        h, w = result.image.shape[:2]
        kind = " · preview" if getattr(result, "preview", False) else ""
        rate = f"{fps:.1f} fps" if fps > 0 else "– fps"
        self.render_label.setText(f"{w}×{h} · render {render_ms:.1f} ms · {rate}{kind}")
        self.render_label.setToolTip(f"Render path: {result.path}" if getattr(result, "path", "") else "")

    def _render_failed(self, message: str) -> None:
        self.last_error = message
        self.statusBar().showMessage(message, 15000)

    def set_grid_mode(self, on: bool) -> None:
        """View > Grid mode: the canvas shows the style-mixing grid of the Mixing panel's seeds."""
        if self.grid_action.isChecked() != on:
            self.grid_action.setChecked(on)  # re-enters through toggled
            return
        self.render_controller.set_grid(self._make_grid if on else None)

    def _grid_requested(self, rows: list[int], cols: list[int], layers: list[int]) -> None:
        self._grid_params = (list(rows), list(cols), list(layers))
        if self.grid_action.isChecked():
            self.render_controller.refresh()
        else:
            self.set_grid_mode(True)

    def _make_grid(self, state: Any) -> GridRequest:
        if self._grid_params is None:
            panel = self.mixing_panel
            try:
                rows = engine.parse_range_list(panel.grid_rows_edit.text())
                cols = engine.parse_range_list(panel.grid_cols_edit.text())
            except engine.StyleDeckError:
                rows, cols = [s.seed for s in state.sources if s.seed is not None][:3] or [0], [1, 2, 3]
            self._grid_params = (rows, cols, panel.grid_layers())
        rows, cols, layers = self._grid_params
        return make_grid_request(state, rows, cols, layers)

    # --- files ---------------------------------------------------------------------------------
    def save_image(self, path: str | Path) -> Path:
        """Save the image on screen as PNG with its recipe (engine.save_image)."""
        result = self.render_controller.last_result
        if result is None or self.session.state is None:
            raise engine.StyleDeckError("There is no image to save yet.")
        saved = engine.save_image(path, result, self.session.state)
        self.statusBar().showMessage(f"Saved {Path(saved).name}", 5000)
        return Path(saved)

    def copy_image(self) -> None:
        image = self.canvas.image()
        if image is None:
            return
        QGuiApplication.clipboard().setImage(numpy_to_qimage(image))
        self.statusBar().showMessage("Image copied to the clipboard", 3000)

    def save_session(self, path: str | Path) -> Path:
        if self.session.state is None:
            raise engine.StyleDeckError("Open a network first: there is no session to save.")
        saved = engine.save_session(path, self.session.state)
        self.statusBar().showMessage(f"Saved session {Path(saved).name}", 5000)
        return Path(saved)

    def open_session(self, path: str | Path) -> None:
        """Load a session file; its network is opened first when it is not the one loaded."""
        try:
            state = engine.load_session(path)
        except engine.StyleDeckError as exc:
            self.show_error(str(exc))
            return
        if state.network and state.network != self.network_path:
            self.open_network(state.network, state=state)
        elif self.session.state is not None and len(state.mix[0]) != len(self.session.state.mix[0]):
            self.show_error(f"{Path(path).name} was saved for a network with {len(state.mix[0])} layers; "
                            f"this one has {len(self.session.state.mix[0])}.")
        else:
            self.session.apply(state if self.network_path is None else _replace(state, network=self.network_path))

    def _open_network_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open network", "", "Networks (*.pkl *.safetensors);;All files (*)")
        if path:
            self.open_network(path)

    def _save_image_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save image", "styledeck.png", "PNG images (*.png)")
        if path:
            self._guarded(self.save_image, path)

    def _open_session_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open session", "", "Sessions (*.json);;All files (*)")
        if path:
            self.open_session(path)

    def _save_session_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save session", f"session{SESSION_SUFFIX}", "Sessions (*.json)")
        if path:
            self._guarded(self.save_session, path)

    def _guarded(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except engine.StyleDeckError as exc:
            self.show_error(str(exc))
        except OSError as exc:
            self.show_error(f"Could not write {exc.filename}: {exc.strerror}.")
        return None

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = self.model_panel.recent_files()
        for path in recent:
            action = self.recent_menu.addAction(path)
            action.triggered.connect(lambda _checked=False, p=path: self.open_network(p))
        if not recent:
            self.recent_menu.addAction("(none yet)").setEnabled(False)

    def _update_undo(self, can_undo: bool, can_redo: bool) -> None:
        self.undo_action.setEnabled(can_undo)
        self.redo_action.setEnabled(can_redo)

    # --- drag and drop -------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 (Qt's name)
        if self._dropped_path(event) is not None:
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        path = self._dropped_path(event)
        if path is None:
            event.ignore()
            return
        event.acceptProposedAction()
        if path.lower().endswith(".json"):
            self.open_session(path)
        else:
            self.open_network(path)

    @staticmethod
    def _dropped_path(event: Any) -> str | None:
        mime = event.mimeData()
        if not mime.hasUrls():
            return None
        for url in mime.urls():
            path = url.toLocalFile()
            if path.lower().endswith(NETWORK_SUFFIXES + (".json",)):
                return path
        return None

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        if self.finetune_panel.shutdown():
            self.statusBar().showMessage("Fine-tuning was stopped because the window closed; its snapshots "
                                         "are kept.")
        self.projection_panel.shutdown()
        self.animation_panel.shutdown()
        if self.loader.running:
            self.loader.cancel()
            self.loader.wait()
        self.render_controller.close()
        if self.error_box is not None:
            self.error_box.close()
        super().closeEvent(event)


def _replace(state: Any, **changes: Any) -> Any:
    return dataclasses.replace(state, **changes)


def numpy_to_qimage(image: np.ndarray) -> QImage:
    """uint8 [H, W, 3] -> a QImage that owns its pixels."""
    image = np.ascontiguousarray(image)
    h, w = image.shape[:2]
    return QImage(image.data, w, h, 3 * w, QImage.Format_RGB888).copy()
