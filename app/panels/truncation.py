"""The Truncation panel: psi (-1..2, 1 = off) as a slider and a value box, and the layer cutoff.

psi pulls each w towards the average w: w_avg + psi (w - w_avg). 1 leaves the latents as they are,
0 gives the average face, negative values the "anti-face". The cutoff truncates only ws layers
below it (NVIDIA's truncation_cutoff), so coarse layers can be tamed while fine detail stays.
The panel only builds states (`dataclasses.replace`) and hands them to the session.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from PySide6.QtCore import Qt
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import QDoubleSpinBox, QFormLayout, QLabel, QPushButton, QSlider, QSpinBox, QWidget

import engine
from app.session import EditSession
from app.widgets import bind_slider, row, set_quietly
from engine import EditState

PSI_MIN, PSI_MAX, PSI_STEPS = -1.0, 2.0, 100  # slider value v stands for psi v / 100
OFF_TEXT = "off"


class PsiSpinBox(QDoubleSpinBox):
    """A psi value box that shows 1 as 'off' and accepts 'off' typed in."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setRange(PSI_MIN, PSI_MAX)
        self.setDecimals(2)
        self.setSingleStep(0.01)
        self.setKeyboardTracking(False)  # one edit per Enter / focus change, not per keystroke

    def textFromValue(self, value: float) -> str:  # noqa: N802 (Qt's name)
        return OFF_TEXT if round(value, 2) == 1.0 else f"{value:.2f}"

    def valueFromText(self, text: str) -> float:  # noqa: N802
        if text.strip().lower() == OFF_TEXT:
            return 1.0
        return super().valueFromText(text)

    def validate(self, text: str, pos: int) -> object:
        stripped = text.strip().lower()
        if stripped == OFF_TEXT:
            return QValidator.State.Acceptable, text, pos
        if stripped and OFF_TEXT.startswith(stripped):
            return QValidator.State.Intermediate, text, pos
        return super().validate(text, pos)


class TruncationPanel(QWidget):
    """psi slider + box and the cutoff spin box ('off' = truncate every layer)."""

    def __init__(self, session: EditSession, parent: QWidget | None = None):
        super().__init__(parent)
        self._session = session

        self.psi_slider = QSlider(Qt.Orientation.Horizontal)
        self.psi_slider.setRange(round(PSI_MIN * PSI_STEPS), round(PSI_MAX * PSI_STEPS))
        self.psi_slider.setSingleStep(1)
        self.psi_slider.setPageStep(10)
        self.psi_slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.psi_slider.setTickInterval(PSI_STEPS)  # ticks at -1, 0, 1, 2
        self.psi_slider.setToolTip("Truncation psi: 1 is off, 0 the average face, below 0 the opposite")
        self.psi_box = PsiSpinBox()
        self.psi_box.setToolTip(self.psi_slider.toolTip())
        self.psi_off_button = QPushButton("Off")
        self.psi_off_button.setToolTip("psi = 1: no truncation")

        self.cutoff_box = QSpinBox()
        self.cutoff_box.setSpecialValueText(OFF_TEXT)  # shown at the minimum, 0 = no cutoff
        self.cutoff_box.setRange(0, 0)
        self.cutoff_box.setKeyboardTracking(False)
        self.cutoff_box.setToolTip("Truncate only ws layers below this index; off truncates all layers")

        form = QFormLayout(self)
        form.addRow("psi", row(self.psi_slider, self.psi_box, self.psi_off_button, stretch_index=0))
        form.addRow("Cutoff", row(self.cutoff_box, QLabel("truncate layers below this"), stretch_index=1))

        bind_slider(self.psi_slider, session, lambda v: self._with(psi=v / PSI_STEPS))
        self.psi_box.valueChanged.connect(lambda v: self._apply(psi=round(v, 2)))
        self.psi_off_button.clicked.connect(lambda: self._apply(psi=1.0))
        self.cutoff_box.valueChanged.connect(lambda v: self._apply(cutoff=v or None))
        session.changed.connect(self._on_changed)
        self._on_changed(session.state)

    # ------------------------------------------------------------------ public API
    def set_groups(self, groups: Sequence[engine.LayerGroup], num_ws: int, family: str | None = None) -> None:
        """Same call as MixingPanel.set_groups; only num_ws matters here (the cutoff's range)."""
        self.set_num_ws(num_ws)

    def set_num_ws(self, num_ws: int) -> None:
        """Cutoff choices: off, 1..num_ws."""
        set_quietly_range(self.cutoff_box, max(int(num_ws), 0))
        self._on_changed(self._session.state)

    # ------------------------------------------------------------------ edits
    def _with(self, **changes: Any) -> EditState | None:
        state = self._session.state
        return None if state is None else dataclasses.replace(state, **changes)

    def _apply(self, **changes: Any) -> None:
        new = self._with(**changes)
        if new is not None:
            self._session.apply(new)

    # ------------------------------------------------------------------ redraw
    def _on_changed(self, state: EditState | None) -> None:
        self.setEnabled(state is not None)
        if state is None:
            return
        num_ws = len(state.mix[0]) if state.mix else 0
        if num_ws and self.cutoff_box.maximum() != num_ws:
            set_quietly_range(self.cutoff_box, num_ws)
        if not self.psi_slider.isSliderDown():
            set_quietly(self.psi_slider, round(state.psi * PSI_STEPS))
        set_quietly(self.psi_box, state.psi)
        set_quietly(self.cutoff_box, state.cutoff or 0)
        self.psi_off_button.setEnabled(state.psi != 1.0)


def set_quietly_range(box: QSpinBox, num_ws: int) -> None:
    """The cutoff's range follows the state's num_ws (a state from a new network)."""
    blocked = box.blockSignals(True)
    box.setRange(0, num_ws)
    box.blockSignals(blocked)
