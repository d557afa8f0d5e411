"""Small widget helpers the editing panels share: slider <-> session wiring and quiet updates.

Panels do no maths: a binding asks the panel for the next `EditState` (built with the engine's
helpers) and hands it to the session. A mouse drag records one undo step when it starts
(`begin_drag`) and applies every move with `record=False`; keyboard steps, clicks on the groove and
value-box edits record normally.
"""
from __future__ import annotations

from typing import Any, Callable

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (QAbstractSlider, QAbstractSpinBox, QComboBox, QHBoxLayout, QLabel, QSizePolicy,
                               QToolButton, QVBoxLayout, QWidget)

from app.session import EditSession
from engine import EditState

# (slider value) -> the next state, or None when the value asks for nothing
StateMaker = Callable[[int], EditState | None]


def set_quietly(widget: QAbstractSlider | QAbstractSpinBox | QComboBox, value: Any) -> None:
    """Show `value` without emitting: redraws from `session.changed` must not feed back."""
    blocked = widget.blockSignals(True)
    try:
        if isinstance(widget, QComboBox):
            widget.setCurrentIndex(int(value))
        else:
            widget.setValue(value)
    finally:
        widget.blockSignals(blocked)


class SliderBinding(QObject):
    """Drives `session` from one QAbstractSlider (QSlider or QDial).

    press -> session.begin_drag(); value changes while the slider is down -> apply(record=False);
    release -> session.end_drag() (when the session has it: the controller then renders the full
    image); value changes with the slider up (keyboard, wheel, page clicks) -> apply(record=True).
    """

    def __init__(self, slider: QAbstractSlider, session: EditSession, make_state: StateMaker):
        super().__init__(slider)
        self._slider, self._session, self._make_state = slider, session, make_state
        self._dragging = False
        slider.sliderPressed.connect(self._pressed)
        slider.valueChanged.connect(self._value_changed)
        slider.sliderReleased.connect(self._released)

    def _pressed(self) -> None:
        self._dragging = True
        self._session.begin_drag()

    def _value_changed(self, value: int) -> None:
        new = self._make_state(value)
        if new is not None:
            self._session.apply(new, record=not self._dragging)

    def _released(self) -> None:
        if not self._dragging:
            return
        self._dragging = False
        # QSlider with tracking off reports the final value only here
        if not self._slider.hasTracking():
            self._value_changed(self._slider.value())
        end_drag = getattr(self._session, "end_drag", None)
        if end_drag is not None:
            end_drag()


def bind_slider(slider: QAbstractSlider, session: EditSession, make_state: StateMaker) -> SliderBinding:
    """Wire `slider` to `session` (see SliderBinding); the binding lives as long as the slider."""
    return SliderBinding(slider, session, make_state)


class CollapsibleSection(QWidget):
    """A header button with an arrow that shows or hides one body widget."""

    toggled = Signal(bool)

    def __init__(self, title: str, body: QWidget, expanded: bool = False, parent: QWidget | None = None):
        super().__init__(parent)
        self.button = QToolButton(self)
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setAutoRaise(True)
        self.button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.body = body
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.button)
        layout.addWidget(body)
        self.button.toggled.connect(self.set_expanded)
        self.set_expanded(expanded)

    def is_expanded(self) -> bool:
        return self.button.isChecked()

    def set_expanded(self, expanded: bool) -> None:
        blocked = self.button.blockSignals(True)
        self.button.setChecked(expanded)
        self.button.blockSignals(blocked)
        self.button.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.body.setVisible(expanded)
        self.toggled.emit(expanded)


def row(*widgets: QWidget, stretch_index: int | None = None) -> QWidget:
    """Widgets side by side in one plain container (no margins); one may take the spare width."""
    container = QWidget()
    layout = QHBoxLayout(container)
    layout.setContentsMargins(0, 0, 0, 0)
    for i, widget in enumerate(widgets):
        layout.addWidget(widget, 1 if i == stretch_index else 0)
    return container


def error_label() -> QLabel:
    """An inline error line: red, word-wrapped, hidden until it has text."""
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet("color: #c62828;")
    label.setVisible(False)
    return label


def show_error(label: QLabel, message: str) -> None:
    """Show `message` in an error_label(), or hide it when the message is empty."""
    label.setText(message)
    label.setVisible(bool(message))
