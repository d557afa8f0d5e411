"""The Mixing panel: how much of each style source enters each layer group, per layer, and the grid.

Each style source (state.sources[1:]) gets one slider per layer group (coarse / middle / fine, as
the engine derived them from the network), 0..1000 standing for an amount 0..1. An expandable
section shows the same weights one slider per ws layer. Every change goes through
`engine.set_group_amount` and `session.apply`; the panel redraws from `session.changed`.
The grid controls parse NVIDIA's range syntax and emit `grid_requested(rows, cols, layers)`.
"""
from __future__ import annotations

from typing import Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QFormLayout, QFrame, QGridLayout, QGroupBox, QLabel, QLineEdit, QPushButton,
                               QScrollArea, QSlider, QVBoxLayout, QWidget)

import engine
from app.session import EditSession
from app.widgets import CollapsibleSection, StateMaker, bind_slider, error_label, row, set_quietly, show_error
from engine import EditState

SLIDER_STEPS = 1000  # slider value v stands for the amount v / 1000


def _amount_to_value(amount: float) -> int:
    return int(round(amount * SLIDER_STEPS))


def _amount_text(amount: float) -> str:
    return f"{amount:.2f}"


def _make_slider() -> QSlider:
    slider = QSlider(Qt.Orientation.Horizontal)
    slider.setRange(0, SLIDER_STEPS)
    slider.setSingleStep(10)     # arrow keys: 0.01
    slider.setPageStep(100)      # page keys / groove clicks: 0.1
    slider.setMinimumWidth(90)
    return slider


class MixingPanel(QWidget):
    """Group and per-layer mixing sliders for every style source, plus the mixing-grid controls."""

    grid_requested = Signal(list, list, list)  # row seeds, column seeds, ws layers taken from the columns

    def __init__(self, session: EditSession, parent: QWidget | None = None):
        super().__init__(parent)
        self._session = session
        self._groups: tuple[engine.LayerGroup, ...] = ()
        self._num_ws = 0
        self._family: str | None = None
        self._structure: tuple | None = None      # what the slider rows were built for
        # (source_index, group name) -> (slider, value label); (source_index, layer) -> same
        self._group_sliders: dict[tuple[int, str], tuple[QSlider, QLabel]] = {}
        self._layer_sliders: dict[tuple[int, int], tuple[QSlider, QLabel]] = {}
        self._labels: tuple[str, ...] = ()        # source labels the titles and tooltips show
        self._titles: dict[int, tuple[QGroupBox, QLabel]] = {}  # source index -> box, per-layer header

        self._hint = QLabel("Add a style source (+ Style source, below the image) to mix its styles into the base.")
        self._hint.setWordWrap(True)
        self._sources_box = QWidget()
        self._sources_layout = QVBoxLayout(self._sources_box)
        self._sources_layout.setContentsMargins(0, 0, 0, 0)

        self._layers_body = QWidget()
        self._layers_grid = QGridLayout(self._layers_body)
        self._layers_grid.setContentsMargins(4, 0, 0, 0)
        self._layers_grid.setVerticalSpacing(2)
        layers_scroll = QScrollArea()
        layers_scroll.setWidgetResizable(True)
        layers_scroll.setWidget(self._layers_body)
        layers_scroll.setMinimumHeight(160)
        layers_scroll.setMaximumHeight(260)
        self.per_layer_section = CollapsibleSection("Per-layer weights", layers_scroll, expanded=False)

        # Several sources with the per-layer view open outgrow a dock: the whole panel scrolls, and
        # the per-layer table scrolls on its own past ~12 rows (1024 px StyleGAN2 has 18 layers).
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(self._hint)
        layout.addWidget(self._sources_box)
        layout.addWidget(self.per_layer_section)
        layout.addWidget(self._build_grid_box())
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

        session.changed.connect(self._on_changed)
        self._on_changed(session.state)

    # ------------------------------------------------------------------ public API
    def set_groups(self, groups: Sequence[engine.LayerGroup], num_ws: int, family: str | None = None) -> None:
        """The network's layer groups (engine LayerGroup: name, layers, label) and its num_ws."""
        self._groups, self._num_ws, self._family = tuple(groups), int(num_ws), family
        blocked = self.grid_group_combo.blockSignals(True)
        previous = self.grid_group_combo.currentData()
        self.grid_group_combo.clear()
        for group in self._groups:
            self.grid_group_combo.addItem(f"{group.name} ({group.label})", group.name)
        self.grid_group_combo.addItem(f"all layers (0-{self._num_ws - 1})" if self._num_ws else "all layers", "all")
        index = self.grid_group_combo.findData(previous)
        self.grid_group_combo.setCurrentIndex(max(index, 0))
        self.grid_group_combo.blockSignals(blocked)
        self._structure = None  # rebuild the slider rows for the new groups
        self._on_changed(self._session.state)

    def group_slider(self, source_index: int, group_name: str) -> QSlider:
        """The slider setting how much of style source `source_index` (>= 1) enters `group_name`."""
        return self._group_sliders[(source_index, group_name)][0]

    def layer_slider(self, source_index: int, layer: int) -> QSlider:
        """The per-layer slider of style source `source_index` for ws index `layer`."""
        return self._layer_sliders[(source_index, layer)][0]

    def grid_layers(self) -> list[int]:
        """The ws layers the grid takes from its column seeds (the chosen group, or all)."""
        name = self.grid_group_combo.currentData()
        for group in self._groups:
            if group.name == name:
                return list(group.layers)
        return list(range(self._num_ws))

    # ------------------------------------------------------------------ building
    def _build_grid_box(self) -> QGroupBox:
        box = QGroupBox("Mixing grid")
        form = QFormLayout(box)
        self.grid_rows_edit = QLineEdit("85,100,75")
        self.grid_rows_edit.setToolTip("Seeds of the rows (the base faces): numbers and ranges, e.g. 0-3,7")
        self.grid_cols_edit = QLineEdit("55,821,1789")
        self.grid_cols_edit.setToolTip("Seeds of the columns (the style faces): numbers and ranges, e.g. 10-12")
        self.grid_group_combo = QComboBox()
        self.grid_group_combo.setToolTip("Which layers each cell takes from its column's seed")
        self.grid_button = QPushButton("Show grid")
        self.grid_error = error_label()
        form.addRow("Rows", self.grid_rows_edit)
        form.addRow("Columns", self.grid_cols_edit)
        form.addRow("Styles from", self.grid_group_combo)
        form.addRow(self.grid_error)
        form.addRow(self.grid_button)
        self.grid_button.clicked.connect(self._request_grid)
        for edit in (self.grid_rows_edit, self.grid_cols_edit):
            edit.returnPressed.connect(self._request_grid)
            edit.textEdited.connect(lambda _text: show_error(self.grid_error, ""))
        return box

    def _rebuild(self, state: EditState | None, usable: bool) -> None:
        """Fresh slider rows for the current sources and groups (old ones are deleted).

        Not `usable` (no groups yet, or the state belongs to a network with another num_ws while
        the window swaps models): no rows, only the hint.
        """
        for key_map in (self._group_sliders, self._layer_sliders, self._titles):
            key_map.clear()
        self._labels = ()
        while (item := self._sources_layout.takeAt(0)) is not None:
            if item.widget() is not None:
                item.widget().deleteLater()
        while (item := self._layers_grid.takeAt(0)) is not None:
            if item.widget() is not None:
                item.widget().deleteLater()

        style_sources = list(enumerate(state.sources))[1:] if usable else []
        box_of: dict[int, QGroupBox] = {}
        for index, source in style_sources:
            box = QGroupBox()
            form = QFormLayout(box)
            for group in self._groups:
                slider = _make_slider()
                value = QLabel()
                value.setMinimumWidth(32)
                bind_slider(slider, self._session, self._group_maker(index, group.layers))
                self._group_sliders[(index, group.name)] = (slider, value)
                form.addRow(f"{group.name.capitalize()} ({group.label})", row(slider, value, stretch_index=0))
            self._sources_layout.addWidget(box)
            box_of[index] = box

        # per-layer view: one row per ws index, one column pair (slider, value) per style source
        group_of = {layer: group.name for group in self._groups for layer in group.layers}
        for col, (index, source) in enumerate(style_sources):
            header = QLabel()
            self._layers_grid.addWidget(header, 0, 1 + 2 * col, 1, 2)
            self._titles[index] = (box_of[index], header)
        for layer in range(self._num_ws if style_sources else 0):
            name = group_of.get(layer, "")
            self._layers_grid.addWidget(QLabel(f"{layer}" + (f" <i>{name}</i>" if name else "")), 1 + layer, 0)
            for col, (index, source) in enumerate(style_sources):
                slider = _make_slider()
                value = QLabel()
                value.setMinimumWidth(32)
                bind_slider(slider, self._session, self._group_maker(index, (layer,)))
                self._layer_sliders[(index, layer)] = (slider, value)
                self._layers_grid.addWidget(slider, 1 + layer, 1 + 2 * col)
                self._layers_grid.addWidget(value, 1 + layer, 2 + 2 * col)

        self._hint.setVisible(not style_sources)
        self.per_layer_section.setVisible(bool(style_sources))

    def _group_maker(self, source_index: int, layers: Sequence[int]) -> StateMaker:
        """The state-maker a slider binding calls: amount v / 1000 of that source in those layers."""
        layers = tuple(layers)

        def make(value: int) -> EditState | None:
            state = self._session.state
            if state is None or source_index >= len(state.sources):
                return None  # the source went away while a signal was queued
            return engine.set_group_amount(state, source_index, layers, value / SLIDER_STEPS)
        return make

    # ------------------------------------------------------------------ redraw
    def _on_changed(self, state: EditState | None) -> None:
        num_ws = len(state.mix[0]) if state is not None and state.mix else 0
        usable = bool(self._groups) and num_ws == self._num_ws
        labels = tuple(s.label for s in state.sources) if state is not None else ()
        structure = (len(labels), self._groups, self._num_ws, usable)
        if structure != self._structure:
            self._structure = structure
            self._rebuild(state, usable)
        if not usable:
            return
        if labels != self._labels:  # e.g. a seed stepped in the source strip: same rows, new names
            self._relabel(labels)
        for (index, name), (slider, label) in self._group_sliders.items():
            layers = next(g.layers for g in self._groups if g.name == name)
            self._show(slider, label, engine.group_amount(state, index, layers))
        for (index, layer), (slider, label) in self._layer_sliders.items():
            self._show(slider, label, state.mix[index][layer])

    def _relabel(self, labels: tuple[str, ...]) -> None:
        """Titles and tooltips name each style source by its current label."""
        self._labels = labels
        for index, (box, header) in self._titles.items():
            box.setTitle(f"Source {index}: {labels[index]}")
            header.setText(f"<b>{index}: {labels[index]}</b>")
        groups = {g.name: g for g in self._groups}
        for (index, name), (slider, _) in self._group_sliders.items():
            slider.setToolTip(f"How much of {labels[index]} enters the {name} layers ({groups[name].label}); "
                              "0 keeps the base, 1 takes them all")
        for (index, layer), (slider, _) in self._layer_sliders.items():
            slider.setToolTip(f"How much of {labels[index]} enters ws layer {layer}")

    @staticmethod
    def _show(slider: QSlider, label: QLabel, amount: float) -> None:
        label.setText(_amount_text(amount))
        if not slider.isSliderDown():  # never yank the handle out from under the mouse
            set_quietly(slider, _amount_to_value(amount))

    # ------------------------------------------------------------------ grid
    def _request_grid(self) -> None:
        try:
            rows = engine.parse_range_list(self.grid_rows_edit.text())
            cols = engine.parse_range_list(self.grid_cols_edit.text())
        except engine.StyleDeckError as exc:
            show_error(self.grid_error, str(exc))
            return
        if not rows or not cols:
            show_error(self.grid_error, "Give at least one row seed and one column seed.")
            return
        layers = self.grid_layers()
        if not layers:
            show_error(self.grid_error, "Load a network first: the grid needs its layers.")
            return
        show_error(self.grid_error, "")
        self.grid_requested.emit(rows, cols, layers)
