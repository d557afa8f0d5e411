"""TruncationPanel and NoisePanel driven through their real widgets against a real EditSession."""
from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

import engine
from app.panels.noise import NoisePanel
from app.panels.truncation import TruncationPanel
from app.session import EditSession

NUM_WS = 10


@pytest.fixture
def session():
    return EditSession(engine.initial_state("tiny.pkl", NUM_WS, seeds=(0, 1)))


@pytest.fixture
def truncation(qtbot, session):
    panel = TruncationPanel(session)
    qtbot.addWidget(panel)
    panel.show()
    return panel


def noise_panel(qtbot, session, family):
    panel = NoisePanel(session)
    panel.set_groups((), NUM_WS, family)
    qtbot.addWidget(panel)
    panel.show()
    return panel


def drag(slider, *positions):
    """What a mouse drag does to a slider or dial: press, move through positions, release."""
    slider.setSliderDown(True)
    for position in positions:
        slider.setSliderPosition(position)
    slider.setSliderDown(False)


def type_into(qtbot, box, text):
    box.lineEdit().selectAll()
    qtbot.keyClicks(box.lineEdit(), text)
    qtbot.keyClick(box.lineEdit(), Qt.Key.Key_Return)


def test_psi_one_shows_off(truncation):
    assert truncation.psi_box.text() == "off"
    assert truncation.psi_slider.value() == 100
    assert not truncation.psi_off_button.isEnabled()


def test_psi_slider_drag_updates_state_and_box_with_one_undo_step(truncation, session):
    drag(truncation.psi_slider, 90, 60, 50)
    assert session.state.psi == 0.5
    assert truncation.psi_box.text() == "0.50"
    session.undo()
    assert session.state.psi == 1.0 and not session.can_undo and session.can_redo
    assert truncation.psi_slider.value() == 100
    assert truncation.psi_box.text() == "off"


def test_psi_box_round_trip(qtbot, truncation, session):
    type_into(qtbot, truncation.psi_box, "-0.35")
    assert session.state.psi == -0.35
    assert truncation.psi_slider.value() == -35
    type_into(qtbot, truncation.psi_box, "off")
    assert session.state.psi == 1.0
    assert truncation.psi_box.text() == "off"
    drag(truncation.psi_slider, 170)
    truncation.psi_off_button.click()
    assert session.state.psi == 1.0


def test_cutoff(truncation, session):
    box = truncation.cutoff_box
    assert (box.minimum(), box.maximum()) == (0, NUM_WS)
    assert box.text() == "off"
    box.setValue(4)
    assert session.state.cutoff == 4
    box.setValue(0)
    assert session.state.cutoff is None
    assert box.text() == "off"
    session.undo()
    assert box.value() == 4


def test_noise_mode(qtbot, session):
    panel = noise_panel(qtbot, session, "stylegan2")
    combo = panel.mode_combo
    assert [combo.itemData(i) for i in range(combo.count())] == list(engine.NOISE_MODES)
    assert combo.currentData() == "const"
    combo.setCurrentIndex(combo.findData("random"))
    assert session.state.noise_mode == "random"
    combo.setCurrentIndex(combo.findData("none"))
    assert session.state.noise_mode == "none"
    session.undo()
    assert combo.currentData() == "random"
    assert session.can_redo                  # redrawing the combo did not apply anything


def test_transform_is_disabled_for_stylegan2(qtbot, session):
    panel = noise_panel(qtbot, session, "stylegan2")
    assert not panel.transform_box.isEnabled()
    assert not panel.rotate_dial.isEnabled()
    assert "StyleGAN2" in panel.transform_box.toolTip()
    drag(panel.rotate_dial, 40)              # even if something moved it, the state stays
    assert session.state.transform == (0.0, 0.0, 0.0)


def test_transform_controls_edit_stylegan3_state(qtbot, session):
    panel = noise_panel(qtbot, session, "stylegan3")
    assert panel.transform_box.isEnabled() and panel.transform_box.toolTip() == ""
    drag(panel.rotate_dial, -10, -20, -30)   # the dial holds -degrees: its knob turns as the image does
    assert session.state.transform == (30.0, 0.0, 0.0)
    assert panel.rotate_dial.value() == -30
    assert panel.rotate_box.value() == 30.0
    type_into(qtbot, panel.translate_boxes[0], "0.25")
    assert session.state.transform == (30.0, 0.25, 0.0)
    assert panel.translate_sliders[0].value() == 25
    drag(panel.translate_sliders[1], -40)
    assert session.state.transform == (30.0, 0.25, -0.4)
    assert panel.translate_boxes[1].value() == -0.4
    session.undo()                           # the y drag was one step
    assert session.state.transform == (30.0, 0.25, 0.0)
    assert panel.translate_sliders[1].value() == 0
    panel.transform_reset.click()
    assert session.state.transform == (0.0, 0.0, 0.0)
    assert panel.rotate_dial.value() == 0


def test_panels_without_a_network(qtbot):
    session = EditSession()                  # the window before its first network loads
    truncation = TruncationPanel(session)
    noise = NoisePanel(session)
    for panel in (truncation, noise):
        qtbot.addWidget(panel)
    assert not truncation.isEnabled()
    assert not noise.mode_combo.isEnabled() and not noise.transform_box.isEnabled()
    session.reset(engine.initial_state("tiny.pkl", NUM_WS))
    assert truncation.isEnabled() and truncation.cutoff_box.maximum() == NUM_WS
    assert noise.mode_combo.isEnabled()
