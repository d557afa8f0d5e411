"""The Model panel: open a network (dialog, recent files, NVIDIA's published pickles) and describe it.

The panel never loads anything itself: every way of choosing a file ends in `open_requested(path)`,
and the window loads it on its job runner, then calls `set_info` and `add_recent` on success or
`show_error` on failure. The Published networks dialog downloads through the engine's
`download_network` on a `JobRunner`, with a progress bar and Cancel, and says plainly when it
cannot reach the server (the engine's message says how to fetch the file by hand).
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

from PySide6.QtCore import QCoreApplication, QSettings, Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout,
                               QHeaderView, QLabel, QListWidget, QListWidgetItem, QProgressBar, QPushButton,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

import engine
from app.job_runner import JobRunner

SETTINGS_SCOPE = ("StyleDeck", "StyleDeck")   # QSettings(organisation, application)
RECENT_KEY = "recent_networks"
MAX_RECENT = 10
QUIT_WAIT_MS = 5000             # how long quitting waits for a download to notice Cancel
FILE_FILTER = "Networks (*.pkl *.safetensors);;NVIDIA pickles (*.pkl);;StyleDeck checkpoints (*.safetensors)"

# model info rows: (key in the info view, label)
INFO_ROWS = (("file", "File"), ("kind", "Kind"), ("resolution", "Resolution"), ("num_ws", "W+ layers (num_ws)"),
             ("layers", "Synthesis layers"), ("parameters", "Parameters"), ("device", "Device"),
             ("precision", "Precision / render path"), ("conditional", "Conditional"), ("provenance", "Made from"))
_FAMILY_NAMES = {"stylegan2": "StyleGAN2", "stylegan3": "StyleGAN3", "discriminator": "Discriminator"}


def _count(n: int) -> str:
    """A parameter count people can read: 30.4 M, 812 k."""
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} M"
    if n >= 1_000:
        return f"{n / 1e3:.0f} k"
    return str(n)


def describe(info: dict[str, Any]) -> dict[str, str]:
    """The text of each info row for `info` (engine.network_info plus device, precision and path)."""
    family = str(info.get("family", ""))
    kind = _FAMILY_NAMES.get(family, family or "unknown")
    if info.get("config"):
        kind += f"-{info['config']}"
    res = info.get("resolution")
    rows = {"kind": kind, "resolution": f"{res} x {res} px" if res else "unknown"}
    path = info.get("path")
    rows["file"] = os.path.basename(str(path)) if path else "(none)"
    rows["num_ws"] = str(info["num_ws"]) if "num_ws" in info else "-"
    if "num_layers" in info:                       # StyleGAN3 records it
        rows["layers"] = str(info["num_layers"])
    elif family == "stylegan2" and res:
        blocks = int(math.log2(int(res))) - 1      # one synthesis block per resolution 4, 8, ..., res
        rows["layers"] = f"{2 * blocks - 1} convolutions in {blocks} blocks (4 to {res} px)"
    else:
        rows["layers"] = "-"
    rows["parameters"] = _count(int(info["num_params"])) if "num_params" in info else "-"
    rows["device"] = str(info.get("device", "-"))
    if "precision" in info:
        rows["precision"] = str(info["precision"])
    else:                                          # what the network was trained in
        n16 = int(info.get("num_fp16_res", 0) or 0)
        rows["precision"] = "float32" if n16 == 0 else f"float32, float16 in the top {n16} resolutions"
    c_dim = int(info.get("c_dim", 0) or 0)
    rows["conditional"] = f"yes, {c_dim} classes" if c_dim else "no"
    facts = info.get("provenance") or []   # engine.provenance_lines: (label, text) rows
    rows["provenance"] = "\n".join(f"{label}: {text}" for label, text in facts) or "-"
    return rows


def _size_text(entry: engine.KnownNetwork) -> str:
    return f"~{entry.size_mb:.0f} MB" if entry.size_mb is not None else "\u2014"   # an em dash: not listed


class KnownNetworksDialog(QDialog):
    """NVIDIA's published networks: a table, and a download with progress and Cancel that ends in
    `open_requested(path)` of the cached file.

    `runner` may be given (tests, or a window that shares one); otherwise the dialog makes its own.
    """

    open_requested = Signal(str)

    COLUMNS = ("Name", "Kind", "Resolution", "Size", "Cached", "URL")

    def __init__(self, parent: QWidget | None = None, entries: Sequence[engine.KnownNetwork] | None = None,
                 runner: JobRunner | None = None,
                 download: Callable[..., Any] = engine.download_network):
        super().__init__(parent)
        self.setWindowTitle("Published networks")
        self.resize(900, 480)
        self.entries = tuple(engine.KNOWN_NETWORKS if entries is None else entries)
        self._download = download
        self.runner = runner if runner is not None else JobRunner(parent=self)
        self.runner.progressed.connect(self._progressed)
        self.runner.finished.connect(self._finished)
        self.runner.failed.connect(self._failed)
        self.runner.cancelled.connect(self._cancelled)
        self._active: engine.KnownNetwork | None = None
        if (app := QCoreApplication.instance()) is not None:
            app.aboutToQuit.connect(self._stop_for_quit)

        self.table = QTableWidget(len(self.entries), len(self.COLUMNS), self)
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)   # URLs differ at the end
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(len(self.COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)  # URL: elided
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.download_selected())

        self.message_label = QLabel(
            "Networks by NVIDIA (NVIDIA Source Code License, non-commercial use). Downloads are cached in "
            f"{engine.cache_dir()}.", self)
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.progress_bar = QProgressBar(self)
        self.progress_bar.setVisible(False)

        self.download_button = QPushButton("Download and open", self)
        self.download_button.clicked.connect(self.download_selected)
        self.copy_button = QPushButton("Copy URL", self)
        self.copy_button.setToolTip("Copy the URL, to download the file elsewhere and open it by hand")
        self.copy_button.clicked.connect(self._copy_url)
        self.cancel_button = QPushButton("Cancel download", self)
        self.cancel_button.clicked.connect(self.cancel_download)
        self.close_button = QPushButton("Close", self)
        self.close_button.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        for b in (self.download_button, self.copy_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.close_button)

        layout = QVBoxLayout(self)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.message_label)
        layout.addWidget(self.progress_bar)
        layout.addLayout(buttons)
        self.refresh()

    # table ---------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Fill the table, with the Cached column read from the cache folder now."""
        for row, entry in enumerate(self.entries):
            cached = engine.cached_path(entry)
            kind = _FAMILY_NAMES.get(entry.family, entry.family) + (f"-{entry.config}" if entry.config else "")
            cells = (entry.name, kind, f"{entry.resolution} px", _size_text(entry), "yes" if cached else "",
                     entry.url)
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                tip = {3: "Size as listed; the progress bar shows the real size once the server answers",
                       4: str(cached) if cached else "not downloaded yet", 5: entry.url}
                item.setToolTip(tip.get(col, text))
                self.table.setItem(row, col, item)
        self.table.resizeRowsToContents()
        self._update_buttons()

    def is_cached(self, row: int) -> bool:
        return self.table.item(row, 4).text() == "yes"

    def select(self, row: int) -> None:
        self.table.selectRow(row)

    def selected_entry(self) -> engine.KnownNetwork | None:
        rows = self.table.selectionModel().selectedRows()
        return self.entries[rows[0].row()] if rows else None

    def _update_buttons(self) -> None:
        busy = self._active is not None
        entry = self.selected_entry()
        self.download_button.setEnabled(entry is not None and not busy)
        self.copy_button.setEnabled(entry is not None)
        self.cancel_button.setEnabled(busy)
        cached = entry is not None and engine.cached_path(entry) is not None
        self.download_button.setText("Open" if cached else "Download and open")

    def _copy_url(self) -> None:
        if (entry := self.selected_entry()) is not None:
            QGuiApplication.clipboard().setText(entry.url)
            self.message_label.setText(f"Copied {entry.url}")

    # download ------------------------------------------------------------------------------------

    def download_selected(self) -> None:
        """Open the selected network, downloading it first if the cache does not have it."""
        entry = self.selected_entry()
        if entry is None or self._active is not None:
            return
        if (hit := engine.cached_path(entry)) is not None:
            self._opened(str(hit))
            return
        # the last job's thread may still be unwinding after its final signal (or a shared runner is busy)
        if self.runner.running and not self.runner.wait(1000):
            self.message_label.setText("Another job is still running; try again when it has finished.")
            return
        self._active = entry
        size = f" ({_size_text(entry)})" if entry.size_mb is not None else ""
        self.message_label.setText(f"Downloading {entry.name}{size} from {entry.url} ...")
        self.progress_bar.setRange(0, 0)          # busy until the server says how big it is
        self.progress_bar.setVisible(True)
        self._update_buttons()
        self.runner.start(self._download, entry)

    def cancel_download(self) -> None:
        if self._active is not None:
            self.message_label.setText(f"Cancelling the download of {self._active.name} ...")
            self.runner.cancel()

    def _progressed(self, event: engine.Progress) -> None:
        if self._active is None:                   # a shared runner's other jobs are not ours
            return
        mb = 1024 * 1024
        if event.total > 0:
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(round(event.fraction * 1000))
            self.progress_bar.setFormat(f"{event.step / mb:.1f} of {event.total / mb:.1f} MB (%p%)")
        else:
            self.progress_bar.setRange(0, 0)
            self.progress_bar.setFormat(f"{event.step / mb:.1f} MB")

    def _end(self, message: str) -> None:
        self._active = None
        self.progress_bar.setVisible(False)
        self.message_label.setText(message)
        self.refresh()

    def _finished(self, path: object) -> None:
        if self._active is None:
            return
        self._end(f"Downloaded {self._active.name} to {path}.")
        self._opened(str(path))

    def _failed(self, message: str) -> None:
        if self._active is not None:
            self._end(message)

    def _cancelled(self) -> None:
        if self._active is not None:
            self._end(f"Cancelled the download of {self._active.name}; nothing was saved.")

    def _opened(self, path: str) -> None:
        self.open_requested.emit(path)
        self.accept()

    def _stop_for_quit(self) -> None:
        # a QThread destroyed while running aborts the process: stop the download and give it a
        # moment (it checks Cancel after each chunk; a stalled read ends at the engine's timeout)
        if self.runner.running:
            self.runner.cancel()
            self.runner.wait(QUIT_WAIT_MS)

    def reject(self) -> None:
        # closing while downloading stops the download (between chunks); the thread ends on its own
        self.cancel_download()
        super().reject()


class ModelPanel(QWidget):
    """Open networks and show what is loaded: info view, recent files, published networks.

    `settings` defaults to QSettings("StyleDeck", "StyleDeck"); tests pass their own.
    """

    open_requested = Signal(str)
    recent_changed = Signal(list)   # the recent paths, newest first (the window's File > Recent menu)

    def __init__(self, parent: QWidget | None = None, *, settings: QSettings | None = None,
                 runner: JobRunner | None = None):
        super().__init__(parent)
        self._settings = settings if settings is not None else QSettings(*SETTINGS_SCOPE)
        self._dialog_runner = runner
        self._dialog: KnownNetworksDialog | None = None

        self.open_button = QPushButton("Open network...", self)
        self.open_button.setToolTip("Open an NVIDIA network pickle (.pkl) or a StyleDeck checkpoint (.safetensors)")
        self.open_button.clicked.connect(self.choose_file)
        self.published_button = QPushButton("Published networks...", self)
        self.published_button.setToolTip("NVIDIA's StyleGAN2 / StyleGAN3 networks, downloaded once and cached")
        self.published_button.clicked.connect(self.show_known_networks)

        self.error_label = QLabel(self)
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #c0392b;")
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.setVisible(False)

        info_box = QGroupBox("Model", self)
        form = QFormLayout(info_box)
        self.info_labels: dict[str, QLabel] = {}
        for key, label in INFO_ROWS:
            value = QLabel("-", info_box)
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            value.setWordWrap(True)
            self.info_labels[key] = value
            form.addRow(label, value)

        recent_box = QGroupBox("Recent networks", self)
        self.recent_list = QListWidget(recent_box)
        self.recent_list.itemActivated.connect(self._recent_activated)   # double-click or Enter
        clear = QPushButton("Clear", recent_box)
        clear.clicked.connect(self.clear_recent)
        recent_layout = QVBoxLayout(recent_box)
        recent_layout.addWidget(self.recent_list)
        recent_layout.addWidget(clear, 0, Qt.AlignmentFlag.AlignRight)

        buttons = QHBoxLayout()
        buttons.addWidget(self.open_button)
        buttons.addWidget(self.published_button)
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(self.error_label)
        layout.addWidget(info_box)
        layout.addWidget(recent_box, 1)
        self._show_recent()

    # info ----------------------------------------------------------------------------------------

    def set_info(self, info: dict[str, Any]) -> None:
        """Show a loaded network: engine.network_info(G) plus 'device', 'precision' and 'path'."""
        for key, text in describe(info).items():
            self.info_labels[key].setText(text)
        if info.get("path"):
            self.info_labels["file"].setToolTip(str(info["path"]))
        self.error_label.setVisible(False)

    def show_error(self, message: str) -> None:
        """Show why the last open failed; the model shown before stays."""
        self.error_label.setText(message)
        self.error_label.setVisible(True)

    # opening ---------------------------------------------------------------------------------------

    def choose_file(self) -> None:
        """Ask for a network file and request it."""
        recent = self.recent_files()
        start = os.path.dirname(recent[0]) if recent else ""
        path, _ = QFileDialog.getOpenFileName(self, "Open network", start, FILE_FILTER)
        if path:
            self.open_requested.emit(path)

    def show_known_networks(self) -> KnownNetworksDialog:
        """Show the Published networks dialog (window-modal, not blocking) and return it."""
        if self._dialog is None:
            self._dialog = KnownNetworksDialog(self, runner=self._dialog_runner)
            self._dialog.open_requested.connect(self.open_requested)
        else:
            self._dialog.refresh()
        self._dialog.open()
        return self._dialog

    # recent files --------------------------------------------------------------------------------

    def recent_files(self) -> list[str]:
        """Recent network paths, newest first (at most MAX_RECENT)."""
        value = self._settings.value(RECENT_KEY, [])
        if value is None:
            return []
        if isinstance(value, str):                 # INI backends give one entry back as a plain string
            value = [value] if value else []
        return [str(v) for v in value][:MAX_RECENT]

    def add_recent(self, path: str | os.PathLike) -> None:
        """Put `path` first in the recent list (once); the window calls this after a successful open."""
        path = os.path.abspath(os.fspath(path))
        paths = [path] + [p for p in self.recent_files() if p != path]
        self._store(paths[:MAX_RECENT])

    def clear_recent(self) -> None:
        self._store([])

    def _store(self, paths: list[str]) -> None:
        self._settings.setValue(RECENT_KEY, paths)
        self._settings.sync()
        self._show_recent()
        self.recent_changed.emit(list(paths))

    def _show_recent(self) -> None:
        self.recent_list.clear()
        for path in self.recent_files():
            item = QListWidgetItem(os.path.basename(path), self.recent_list)
            item.setData(Qt.ItemDataRole.UserRole, path)
            if os.path.isfile(path):
                item.setToolTip(path)
            else:                                  # moved or deleted: still listed, but say so
                item.setToolTip(f"{path} (not found)")
                item.setForeground(Qt.GlobalColor.gray)

    def _recent_activated(self, item: QListWidgetItem) -> None:
        self.open_requested.emit(str(item.data(Qt.ItemDataRole.UserRole)))
