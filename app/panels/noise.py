"""The Noise & transform panel: noise mode, and StyleGAN3's input rotation and translation.

Noise: 'const' uses the network's stored noise (the same state gives the same image), 'random'
draws new noise each render, 'none' turns it off. StyleGAN3 can turn and shift its input
(rotate in degrees, translate in image widths, as NVIDIA's gen_images.py --rotate/--translate);
StyleGAN2 has no such input, so those controls are disabled with a tooltip saying why.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QComboBox, QDial, QDoubleSpinBox, QFormLayout, QGroupBox, QPushButton, QSlider,
                               QVBoxLayout, QWidget)

import engine
from app.session import EditSession
from app.widgets import bind_slider, row, set_quietly
from engine import EditState

NOISE_TIPS = {
    "const": "The network's stored noise: the same settings always give the same image",
    "random": "New random noise every render: fine detail (hair, pores) changes each time",
    "none": "No noise: smoother, flatter detail",
}
TRANSLATE_STEPS = 100  # slider value v stands for v / 100 image widths
NOT_SG3_TIP = "Rotate and translate act on StyleGAN3's input layer; this network is StyleGAN2, which has none."
NO_NETWORK_TIP = "Load a StyleGAN3 network to rotate and translate its input."


def _spin(minimum: float, maximum: float, step: float, decimals: int, suffix: str = "") -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(minimum, maximum)
    box.setSingleStep(step)
    box.setDecimals(decimals)
    box.setSuffix(suffix)
    box.setKeyboardTracking(False)  # one edit per Enter / focus change, not per keystroke
    return box


class NoisePanel(QWidget):
    """Noise mode combo; rotate dial + box and translate x / y sliders + boxes (StyleGAN3 only)."""

    def __init__(self, session: EditSession, parent: QWidget | None = None):
        super().__init__(parent)
        self._session = session
        self._family: str | None = None

        self.mode_combo = QComboBox()
        for mode in engine.NOISE_MODES:
            self.mode_combo.addItem(mode, mode)
            self.mode_combo.setItemData(self.mode_combo.count() - 1, NOISE_TIPS.get(mode, ""),
                                        Qt.ItemDataRole.ToolTipRole)
        self.mode_combo.setToolTip("Per-pixel noise inputs of the synthesis network")

        # rotate: a wrapping dial (up = 0 degrees) and a box; translate: slider + box per axis
        self.rotate_dial = QDial()
        self.rotate_dial.setRange(-180, 180)
        self.rotate_dial.setWrapping(True)
        self.rotate_dial.setNotchesVisible(True)
        self.rotate_dial.setNotchTarget(15.0)
        self.rotate_dial.setFixedSize(64, 64)
        # QDial grows clockwise from the top, but positive angles turn the image counter-clockwise:
        # the dial holds -degrees so that the knob turns the way the image does
        self.rotate_box = _spin(-180.0, 180.0, 1.0, 1, " °")
        self.translate_sliders: list[QSlider] = []
        self.translate_boxes: list[QDoubleSpinBox] = []
        for _axis in range(2):
            slider = QSlider(Qt.Orientation.Horizontal)
            slider.setRange(-TRANSLATE_STEPS, TRANSLATE_STEPS)
            slider.setPageStep(10)
            self.translate_sliders.append(slider)
            self.translate_boxes.append(_spin(-1.0, 1.0, 0.01, 2))
        self.transform_reset = QPushButton("Reset")

        self.transform_box = QGroupBox("Input transform (StyleGAN3)")
        form = QFormLayout(self.transform_box)
        form.addRow("Rotate", row(self.rotate_dial, self.rotate_box, QWidget(), stretch_index=2))
        form.addRow("Translate x", row(self.translate_sliders[0], self.translate_boxes[0], stretch_index=0))
        form.addRow("Translate y", row(self.translate_sliders[1], self.translate_boxes[1], stretch_index=0))
        form.addRow(self.transform_reset)

        layout = QVBoxLayout(self)
        top = QFormLayout()
        top.addRow("Noise", self.mode_combo)
        layout.addLayout(top)
        layout.addWidget(self.transform_box)
        layout.addStretch(1)

        self.mode_combo.currentIndexChanged.connect(self._mode_chosen)
        bind_slider(self.rotate_dial, session, lambda v: self._with_transform(0, float(-v)))
        self.rotate_box.valueChanged.connect(lambda v: self._apply(self._with_transform(0, round(v, 1))))
        for axis in range(2):
            bind_slider(self.translate_sliders[axis], session,
                        lambda v, a=axis: self._with_transform(1 + a, v / TRANSLATE_STEPS))
            self.translate_boxes[axis].valueChanged.connect(
                lambda v, a=axis: self._apply(self._with_transform(1 + a, round(v, 2))))
        self.transform_reset.clicked.connect(lambda: self._apply(self._replace(transform=(0.0, 0.0, 0.0))))

        session.changed.connect(self._on_changed)
        self.set_family(None)

    # ------------------------------------------------------------------ public API
    def set_groups(self, groups: Sequence[engine.LayerGroup], num_ws: int, family: str | None = None) -> None:
        """Same call as MixingPanel.set_groups; only the family matters here."""
        self.set_family(family)

    def set_family(self, family: str | None) -> None:
        """'stylegan3' enables the transform controls; 'stylegan2' or None disables them."""
        self._family = family
        enabled = family == "stylegan3"
        self.transform_box.setEnabled(enabled)
        tip = "" if enabled else (NOT_SG3_TIP if family == "stylegan2" else NO_NETWORK_TIP)
        self.transform_box.setToolTip(tip)
        self._on_changed(self._session.state)

    # ------------------------------------------------------------------ edits
    def _replace(self, **changes: Any) -> EditState | None:
        state = self._session.state
        return None if state is None else dataclasses.replace(state, **changes)

    def _with_transform(self, index: int, value: float) -> EditState | None:
        state = self._session.state
        if state is None or self._family != "stylegan3":
            return None  # StyleGAN2 has no input transform to change
        transform = list(state.transform)
        transform[index] = float(value)
        return dataclasses.replace(state, transform=tuple(transform))

    def _apply(self, new: EditState | None) -> None:
        if new is not None:
            self._session.apply(new)

    def _mode_chosen(self, index: int) -> None:
        mode = self.mode_combo.itemData(index)
        if mode is not None:
            self._apply(self._replace(noise_mode=mode))

    # ------------------------------------------------------------------ redraw
    def _on_changed(self, state: EditState | None) -> None:
        self.mode_combo.setEnabled(state is not None)
        if state is None:
            return
        set_quietly(self.mode_combo, max(self.mode_combo.findData(state.noise_mode), 0))
        rotate, tx, ty = state.transform
        if not self.rotate_dial.isSliderDown():
            set_quietly(self.rotate_dial, -round(rotate))
        set_quietly(self.rotate_box, rotate)
        for axis, value in enumerate((tx, ty)):
            if not self.translate_sliders[axis].isSliderDown():
                set_quietly(self.translate_sliders[axis], round(value * TRANSLATE_STEPS))
            set_quietly(self.translate_boxes[axis], value)
        self.transform_reset.setEnabled(tuple(state.transform) != (0.0, 0.0, 0.0))
