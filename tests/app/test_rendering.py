"""Latest-wins rendering and the job runner: the mailbox, the worker thread, the controller."""
from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest

import engine
from app.job_runner import JobRunner
from app.rendering import Mailbox
from app_helpers import SHOW_TIMEOUT_MS, direct_renderer

T = SHOW_TIMEOUT_MS


class SlowRenderer(engine.Renderer):
    """A real Renderer whose first render waits until the test opens `gate`."""

    def __init__(self, networks, gate: threading.Event, started: threading.Event):
        super().__init__(networks, "cpu")
        self.gate, self.started, self.calls = gate, started, 0

    def render(self, state, preview=False):
        self.calls += 1
        if self.calls == 1:
            self.started.set()
            assert self.gate.wait(30), "the test never opened the gate"
        return super().render(state, preview)


def test_mailbox_keeps_only_the_newest():
    box = Mailbox()
    assert box.take() is None
    assert box.put(1) is True      # empty: the worker must be woken
    assert box.put(2) is False     # replaced: the worker is already on its way
    assert box.put(3) is False
    assert box.take() == 3 and box.take() is None


def test_fifty_moves_during_a_slow_render_cost_at_most_two_more(qtbot, main_window):
    w = main_window
    controller = w.render_controller
    w.source_strip.add_style_source(seed=11)
    qtbot.waitUntil(lambda: controller.idle, timeout=T)
    gate, started = threading.Event(), threading.Event()
    slow: list[SlowRenderer] = []

    def make():
        slow.append(SlowRenderer(engine.load_network(w.network_path), gate, started))
        return slow[0]

    controller.set_renderer(make)
    slider = w.mixing_panel.group_slider(1, "coarse")
    renders_before = controller.render_count
    slider.setValue(10)                       # starts the slow render
    qtbot.waitUntil(started.is_set, timeout=T)
    for step in range(50):                    # 50 moves while it blocks: each replaces the last request
        slider.setValue(20 + step * 19)
    last_value = slider.value()
    assert controller.requests >= 51
    gate.set()
    qtbot.waitUntil(lambda: controller.idle, timeout=T)
    renders = controller.render_count - renders_before
    assert 1 + 1 <= renders <= 1 + 2, renders  # the slow one, then at most 2 further
    assert slow[0].calls == renders
    # the screen shows the last slider value, as a direct render of that state draws it
    coarse = next(g for g in w.groups if g.name == "coarse").layers
    assert engine.group_amount(w.session.state, 1, coarse) == pytest.approx(last_value / 1000)
    expected = direct_renderer(w.network_path).render(w.session.state)
    assert np.array_equal(w.canvas.image(), expected.image)
    assert np.array_equal(controller.last_ws, expected.ws)


def test_drag_renders_previews_and_the_full_image_at_release(qtbot, main_window):
    w = main_window
    controller = w.render_controller
    slider = w.truncation_panel.psi_slider
    with qtbot.waitSignal(controller.shown, timeout=T) as first:
        slider.setSliderDown(True)            # press: begin_drag
        slider.setValue(50)                   # a move while down: apply(record=False), preview
    assert w.session.dragging and first.args[0].preview
    assert first.args[0].image.shape == (32, 32, 3)
    with qtbot.waitSignal(controller.shown, timeout=T) as last:
        slider.setSliderDown(False)           # release: end_drag -> the exact image
    assert not w.session.dragging and not last.args[0].preview
    assert np.array_equal(w.canvas.image(), direct_renderer(w.network_path).render(w.session.state).image)
    assert w.session.can_undo                 # the drag is one undo step
    with qtbot.waitSignal(controller.shown, timeout=T):
        w.session.undo()
    assert w.session.state.psi == 1.0 and not w.session.can_undo


def test_rendering_does_not_block_the_gui_thread(qtbot, main_window):
    w = main_window
    controller = w.render_controller
    gate, started = threading.Event(), threading.Event()
    controller.set_renderer(lambda: SlowRenderer(engine.load_network(w.network_path), gate, started))
    w.source_strip.set_seed(0, 99)            # returns at once although the render waits
    qtbot.waitUntil(started.is_set, timeout=T)
    assert not controller.idle
    qtbot.wait(10)                            # the event loop keeps turning meanwhile
    w.source_strip.set_seed(0, 98)
    gate.set()
    qtbot.waitUntil(lambda: controller.idle, timeout=T)
    assert w.session.state.sources[0].seed == 98


def test_results_of_an_old_model_are_dropped(qtbot, main_window, sg3_path):
    w = main_window
    controller = w.render_controller
    gate, started = threading.Event(), threading.Event()
    controller.set_renderer(lambda: SlowRenderer(engine.load_network(w.network_path), gate, started))
    w.source_strip.set_seed(0, 42)
    qtbot.waitUntil(started.is_set, timeout=T)
    controller.set_renderer(lambda: direct_renderer(sg3_path))  # a new model while the old one renders
    shown = []
    controller.shown.connect(shown.append)
    received = controller.render_count
    gate.set()
    qtbot.waitUntil(lambda: controller.render_count > received, timeout=T)  # the old result arrived...
    assert shown == [] and controller.idle    # ...and was dropped: it never reached the screen
    with qtbot.waitSignal(controller.shown, timeout=T):
        controller.request(engine.initial_state(str(sg3_path), 6, seeds=(42,)))  # the new model draws
    assert w.canvas.image().shape == (16, 16, 3)


def _counting_job(n: int, *, progress=None, cancel=None) -> int:
    for i in range(n):
        cancel.raise_if_cancelled()
        progress(engine.Progress(i + 1, n, f"step {i + 1}"))
    return n * 2


def test_job_runner_finishes_with_the_result_and_last_progress(qtbot):
    runner = JobRunner()
    events = []
    runner.progressed.connect(events.append)
    with qtbot.waitSignal(runner.finished, timeout=T) as blocker:
        runner.start(_counting_job, 1000)
    assert blocker.args == [2000]
    qtbot.waitUntil(lambda: bool(events) and events[-1].step == 1000, timeout=T)
    assert len(events) < 1000                 # throttled to ~20 Hz, the last step always arrives


def test_job_runner_reports_errors_and_cancel(qtbot, tmp_path):
    runner = JobRunner(engine.load_network, tmp_path / "missing.pkl")
    with qtbot.waitSignal(runner.failed, timeout=T) as blocker:
        runner.start()
    assert "missing.pkl" in blocker.args[0]
    started, release = threading.Event(), threading.Event()

    def waits(*, progress=None, cancel=None):
        started.set()
        release.wait(10)
        cancel.raise_if_cancelled()

    with qtbot.waitSignal(runner.cancelled, timeout=T):
        runner.start(waits)
        started.wait(10)
        runner.cancel()
        release.set()


def test_job_runner_lets_go_of_ended_jobs_and_their_arguments(qtbot):
    class Payload:                            # stands in for a network or an image a job was given
        pass

    runner = JobRunner()
    payloads = [Payload() for _ in range(3)]
    gone = [weakref.ref(p) for p in payloads]
    for payload in payloads:
        with qtbot.waitSignal(runner.finished, timeout=T):
            runner.start(lambda payload, *, progress=None, cancel=None: id(payload), payload)
    del payloads, payload

    def all_freed() -> bool:                  # each thread is let go once it has fully ended
        gc.collect()
        return all(ref() is None for ref in gone)

    qtbot.waitUntil(all_freed, timeout=T)
    with qtbot.waitSignal(runner.finished, timeout=T) as blocker:
        runner.start(_counting_job, 3)        # and the runner still works after
    assert blocker.args == [6]
