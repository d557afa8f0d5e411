"""MixingPanel driven through its real sliders against a real EditSession and EditState."""
from __future__ import annotations

import pytest
from PySide6.QtWidgets import QAbstractSlider

import engine
from app.panels.mixing import MixingPanel
from app.session import EditSession
from engine.networks.stylegan2 import Generator


def tiny_groups(resolution: int) -> tuple[tuple, int, str]:
    """(groups, num_ws, family) of a tiny StyleGAN2 generator, as the window passes them."""
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=resolution, img_channels=3,
                  channel_base=64, channel_max=8, num_fp16_res=0)
    return engine.layer_groups(G), G.num_ws, engine.network_family(G)


@pytest.fixture(scope="module")
def groups64():
    return tiny_groups(64)  # coarse 0-3 (4-8 px), middle 4-7 (16-32 px), fine 8-9 (64 px); num_ws 10


@pytest.fixture
def panel(qtbot, groups64):
    groups, num_ws, family = groups64
    session = EditSession(engine.initial_state("tiny.pkl", num_ws, seeds=(0, 1, 2)))
    widget = MixingPanel(session)
    widget.set_groups(groups, num_ws, family)
    qtbot.addWidget(widget)
    widget.resize(420, 700)
    widget.show()
    return widget


def drag(slider: QAbstractSlider, *positions: int) -> None:
    """What a mouse drag does to a slider: press, move through positions, release."""
    slider.setSliderDown(True)        # sliderPressed
    for position in positions:
        slider.setSliderPosition(position)  # sliderMoved + valueChanged (tracking)
    slider.setSliderDown(False)       # sliderReleased


def test_coarse_slider_changes_exactly_the_coarse_weights(panel):
    session = panel._session
    before = session.state
    drag(panel.group_slider(1, "coarse"), 200, 450, 600)
    mix = session.state.mix
    coarse = {0, 1, 2, 3}
    for layer in range(10):
        assert mix[1][layer] == pytest.approx(0.6 if layer in coarse else 0.0, abs=1e-12)
        assert mix[0][layer] == pytest.approx(0.4 if layer in coarse else 1.0, abs=1e-12)
        assert mix[2][layer] == 0.0
    # nothing but the mix moved
    assert (session.state.psi, session.state.cutoff, session.state.sources) == (before.psi, before.cutoff,
                                                                                before.sources)
    # the per-layer view follows the group slider
    assert [panel.layer_slider(1, i).value() for i in range(10)] == [600] * 4 + [0] * 6
    assert panel.group_slider(1, "middle").value() == 0
    assert panel.group_slider(2, "coarse").value() == 0


def test_a_drag_is_one_undo_step_and_undo_redraws(panel):
    session = panel._session
    before = session.state
    slider = panel.group_slider(2, "fine")
    drag(slider, 100, 300, 900, 750)
    assert session.state.mix[2][8:] == (0.75, 0.75)
    assert slider.value() == 750
    session.undo()
    assert session.state == before
    assert not session.can_undo
    assert session.can_redo                          # the redraw below did not feed back into apply
    assert slider.value() == 0                       # redrawn from session.changed
    assert panel.layer_slider(2, 9).value() == 0
    session.redo()
    assert slider.value() == 750


def test_keyboard_steps_record_each_step(panel):
    session = panel._session
    slider = panel.group_slider(1, "middle")
    slider.triggerAction(QAbstractSlider.SliderAction.SliderPageStepAdd)   # +0.1
    slider.triggerAction(QAbstractSlider.SliderAction.SliderPageStepAdd)   # +0.1
    assert session.state.mix[1][4:8] == pytest.approx((0.2,) * 4)
    session.undo()
    assert session.state.mix[1][4:8] == pytest.approx((0.1,) * 4)
    assert slider.value() == 100


def test_per_layer_slider_moves_one_layer_and_the_group_shows_the_mean(panel):
    session = panel._session
    drag(panel.layer_slider(1, 5), 800)
    assert [round(w, 12) for w in session.state.mix[1]] == [0, 0, 0, 0, 0, 0.8, 0, 0, 0, 0]
    assert panel.group_slider(1, "middle").value() == 200      # mean of (0, 0.8, 0, 0)
    assert panel._group_sliders[(1, "middle")][1].text() == "0.20"


def test_sources_asking_for_more_than_everything_are_scaled(panel):
    session = panel._session
    drag(panel.group_slider(2, "coarse"), 800)
    drag(panel.group_slider(1, "coarse"), 500)
    # source 1 keeps what was asked; source 2 gives way so the styles sum to 1 and the base gets 0
    assert session.state.mix[1][0] == pytest.approx(0.5)
    assert session.state.mix[2][0] == pytest.approx(0.5)
    assert session.state.mix[0][0] == pytest.approx(0.0, abs=1e-12)
    assert panel.group_slider(2, "coarse").value() == 500       # the other row redrew


def test_rows_follow_the_sources_and_the_groups(qtbot, panel):
    session = panel._session
    session.apply(engine.with_source(session.state, engine.Source.from_seed(42)))
    slider = panel.group_slider(3, "fine")
    assert "seed 42" in slider.toolTip()
    # a new seed for source 3 renames its row in place; the slider stays the same widget
    session.apply(engine.with_source(session.state, engine.Source.from_seed(43), 3))
    assert panel.group_slider(3, "fine") is slider
    assert "seed 43" in slider.toolTip()
    assert "seed 43" in panel._titles[3][0].title()
    session.apply(engine.without_source(session.state, 1))
    with pytest.raises(KeyError):
        panel.group_slider(3, "fine")
    # a 16 px network has only coarse and middle groups
    groups, num_ws, family = tiny_groups(16)
    session.reset(engine.initial_state("small.pkl", num_ws, seeds=(3, 4)))
    panel.set_groups(groups, num_ws, family)
    assert panel.group_slider(1, "middle") is not None
    with pytest.raises(KeyError):
        panel.group_slider(1, "fine")
    assert panel.grid_group_combo.count() == 3                  # coarse, middle, all layers


def test_no_style_sources_shows_a_hint(qtbot, groups64):
    groups, num_ws, family = groups64
    session = EditSession(engine.initial_state("tiny.pkl", num_ws, seeds=(0,)))
    widget = MixingPanel(session)
    qtbot.addWidget(widget)
    widget.set_groups(groups, num_ws, family)
    widget.show()
    assert widget._hint.isVisible()
    assert not widget._group_sliders


def test_grid_controls_emit_the_parsed_lists(qtbot, panel):
    panel.grid_rows_edit.setText("1-3, 7")
    panel.grid_cols_edit.setText("10,12-13")
    panel.grid_group_combo.setCurrentIndex(panel.grid_group_combo.findData("middle"))
    with qtbot.waitSignal(panel.grid_requested, timeout=1000) as blocker:
        panel.grid_button.click()
    assert blocker.args == [[1, 2, 3, 7], [10, 12, 13], [4, 5, 6, 7]]
    panel.grid_group_combo.setCurrentIndex(panel.grid_group_combo.findData("all"))
    with qtbot.waitSignal(panel.grid_requested, timeout=1000) as blocker:
        panel.grid_button.click()
    assert blocker.args[2] == list(range(10))


@pytest.mark.parametrize("rows, message", [("1-x", "Cannot read"), ("5-2", "backwards"), ("", "Cannot read")])
def test_bad_grid_text_shows_an_inline_error(qtbot, panel, rows, message):
    panel.grid_rows_edit.setText(rows)
    with qtbot.assertNotEmitted(panel.grid_requested):
        panel.grid_button.click()
    assert panel.grid_error.isVisible()
    assert message in panel.grid_error.text()
    panel.grid_rows_edit.setText("4")
    with qtbot.waitSignal(panel.grid_requested, timeout=1000):
        panel.grid_button.click()
    assert not panel.grid_error.isVisible()


def test_a_panel_without_a_network_is_empty_and_quiet(qtbot, groups64):
    session = EditSession()                          # the window before its first network loads
    widget = MixingPanel(session)
    qtbot.addWidget(widget)
    widget.set_groups(*groups64)
    assert not widget._group_sliders and not widget._layer_sliders
    groups, num_ws, _family = groups64
    session.reset(engine.initial_state("tiny.pkl", num_ws, seeds=(0, 5)))
    assert widget.group_slider(1, "coarse").value() == 0
