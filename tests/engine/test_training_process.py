"""The fine-tuning worker process, with real spawned children: events, throttling, pause, stop, failures, kills.

Most tests run `fake_train`, a small stand-in with train()'s signature that sleeps instead of
training and writes snapshot-named files; the last one runs the real train() on a tiny network.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.errors import StyleDeckError
from engine.jobs import Progress, atomic_write
from engine.training.process import (BACKGROUND_NICE, Failed, FinetuneProcess, Finished, Progressed,
                                     SnapshotWritten, Started, Stopped, start_finetune)


# ---------------------------------------------------------------------------------------------
# A stand-in for train(), run in the child (top level, so that spawn can find it by name)

@dataclass(frozen=True)
class FakeOptions:
    outdir: str
    steps: int = 50
    step_s: float = 0.01
    snap_every: int = 0          # write a snapshot every this many steps; 0: never
    fail: str = ""               # "styledeck", "crash", "exit", "unpicklable": how the run ends badly
    fail_at: int = 3


@dataclass(frozen=True)
class FakeResult:
    steps: int


def _write(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def fake_train(opts: FakeOptions, *, progress=None, cancel=None, pause=None):
    outdir = Path(opts.outdir)
    for step in range(1, opts.steps + 1):
        cancel.raise_if_cancelled()
        while pause is not None and pause.is_set():
            cancel.raise_if_cancelled()
            time.sleep(0.01)
        if step == opts.fail_at and opts.fail == "styledeck":
            raise StyleDeckError("photos has no usable image: 3 files skipped")
        if step == opts.fail_at and opts.fail == "crash":
            raise RuntimeError("boom")
        if step == opts.fail_at and opts.fail == "exit":
            os._exit(3)
        time.sleep(opts.step_s)
        _write(outdir / "steps.txt", str(step))                  # the step is done
        if opts.snap_every and step % opts.snap_every == 0:
            name = f"{step * 1000:09d}"
            _write(outdir / f"fakes{name}.png", "grid")
            _write(outdir / f"network-snapshot-{name}.safetensors", str(step))
        progress(Progress(step, opts.steps, f"step {step}", metrics={"loss/G": 1.0 / step}))
    if opts.fail == "unpicklable":
        return lambda: None
    return FakeResult(opts.steps)


def priority_train(opts: FakeOptions, *, progress=None, cancel=None, pause=None) -> int:
    return os.nice(0)                                       # the child's niceness (POSIX; the test skips elsewhere)


# ---------------------------------------------------------------------------------------------
# Helpers

def collect(proc: FinetuneProcess, timeout: float = 60.0) -> list:
    """Every event until the last one (Finished, Stopped or Failed)."""
    events: list = []
    deadline = time.monotonic() + timeout
    while not proc.ended:
        assert time.monotonic() < deadline, f"no last event within {timeout} s; got {events}"
        events += proc.poll()
        time.sleep(0.02)
    return events


def wait_for(proc: FinetuneProcess, condition, timeout: float = 60.0) -> list:
    """Events until one satisfies `condition` (that one included)."""
    events: list = []
    deadline = time.monotonic() + timeout
    while not any(condition(e) for e in events):
        assert time.monotonic() < deadline, f"condition not met within {timeout} s; got {events}"
        assert not proc.ended, events
        events += proc.poll()
        time.sleep(0.02)
    return events


def steps_done(outdir: Path) -> int:
    return int((outdir / "steps.txt").read_text())


def _stops_writing(outdir: Path, timeout: float = 30.0) -> bool:
    """Whether the step count stops changing (for half a second) within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = steps_done(outdir)
        time.sleep(0.5)
        if steps_done(outdir) == before:
            return True
    return False


def progressed(events: list) -> list[Progress]:
    return [e.progress for e in events if isinstance(e, Progressed)]


@pytest.fixture
def started():
    """start_finetune with a stand-in; every child is closed (stopped, else killed) at the end."""
    procs: list[FinetuneProcess] = []

    def start(opts, target=fake_train) -> FinetuneProcess:
        procs.append(start_finetune(opts, target=target))
        return procs[-1]

    yield start
    for proc in procs:
        proc.close(timeout=10)


# ---------------------------------------------------------------------------------------------
# Tests

def test_a_run_reports_start_throttled_progress_snapshots_and_its_result(started, tmp_path):
    opts = FakeOptions(str(tmp_path), steps=300, step_s=0.002, snap_every=100)
    (tmp_path / "network-snapshot-000000007.safetensors").write_text("from an earlier run")
    begin = time.monotonic()
    proc = started(opts)
    events = collect(proc)
    elapsed = time.monotonic() - begin

    assert isinstance(events[0], Started) and events[0].pid == proc.pid and events[0].opts == opts
    assert events[-1] == Finished(FakeResult(300))
    assert sum(isinstance(e, (Finished, Stopped, Failed)) for e in events) == 1
    steps = [p.step for p in progressed(events)]
    assert steps == sorted(steps) and steps[-1] == 300          # the last one is always sent
    assert len(steps) <= 10 * elapsed + 3, (len(steps), elapsed)  # ~10 per second at most
    assert len(steps) < 150
    assert progressed(events)[-1].metrics == {"loss/G": 1.0 / 300}
    snaps = [e for e in events if isinstance(e, SnapshotWritten)]  # the earlier run's is not news
    assert [s.kimg for s in snaps] == [100.0, 200.0, 300.0]
    assert [s.path.name for s in snaps] == [f"network-snapshot-{k * 1000:09d}.safetensors" for k in (100, 200, 300)]
    assert all(s.grid_path is not None and s.grid_path.is_file() for s in snaps)
    assert proc.join(10) and not proc.alive and proc.exitcode == 0
    assert proc.poll() == []


def test_stop_finishes_the_current_step_and_leaves_no_partial_file(started, tmp_path):
    proc = started(FakeOptions(str(tmp_path), steps=100_000, step_s=0.01, snap_every=5))
    wait_for(proc, lambda e: isinstance(e, SnapshotWritten) and e.kimg >= 10)
    proc.stop()
    events = collect(proc)
    last = events[-1]
    assert isinstance(last, Stopped)
    assert proc.join(10) and proc.exitcode == 0
    done = steps_done(tmp_path)
    assert 10 <= done < 100_000
    expected = f"network-snapshot-{done // 5 * 5 * 1000:09d}.safetensors"
    assert last.snapshot == tmp_path / expected                  # the newest snapshot of this run
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary leftovers
    assert (tmp_path / "steps.txt").read_text() == str(done)


def test_pause_holds_training_and_resume_continues(started, tmp_path):
    proc = started(FakeOptions(str(tmp_path), steps=100_000, step_s=0.01))
    wait_for(proc, lambda e: isinstance(e, Progressed) and e.progress.step >= 5)
    proc.pause()
    assert proc.paused
    assert _stops_writing(tmp_path)                              # the step in flight ends, then nothing
    held = steps_done(tmp_path)
    proc.poll()
    time.sleep(0.5)
    assert steps_done(tmp_path) == held
    assert [p.step for p in progressed(proc.poll())] in ([], [held])   # at most the held-back last one
    proc.resume()
    wait_for(proc, lambda e: isinstance(e, Progressed) and e.progress.step > held + 5)
    proc.pause()                                                 # stop works while paused too
    time.sleep(0.1)
    proc.stop()
    assert isinstance(collect(proc)[-1], Stopped)


@pytest.mark.parametrize("fail, message", [
    ("styledeck", "photos has no usable image: 3 files skipped"),
    ("crash", "Fine-tuning failed unexpectedly (RuntimeError: boom)."),
    ("unpicklable", "its Finished event could not be sent"),
])
def test_an_error_in_the_child_becomes_failed_with_its_message(started, tmp_path, fail, message):
    proc = started(FakeOptions(str(tmp_path), steps=5, fail=fail))
    events = collect(proc)
    assert isinstance(events[0], Started)
    last = events[-1]
    assert isinstance(last, Failed) and message in last.message
    if fail == "crash":
        assert "Traceback" in last.details and "boom" in last.details
    assert proc.join(10) and proc.exitcode == 0


def test_a_killed_child_is_noticed(started, tmp_path):
    proc = started(FakeOptions(str(tmp_path), steps=100_000, step_s=0.01))
    wait_for(proc, lambda e: isinstance(e, Progressed))
    os.kill(proc.pid, signal.SIGKILL)
    events = collect(proc, timeout=10)
    assert not proc.alive
    assert isinstance(events[-1], Failed)
    assert events[-1].message.startswith("worker exited with code -9 (killed by SIGKILL)")
    assert proc.poll() == []                                     # reported once


def test_a_child_that_exits_on_its_own_is_noticed(started, tmp_path):
    proc = started(FakeOptions(str(tmp_path), steps=10, fail="exit"))
    events = collect(proc)
    assert isinstance(events[-1], Failed) and events[-1].message.startswith("worker exited with code 3")
    assert proc.exitcode == 3


_PARENT_SCRIPT = """
import os, sys, time
sys.path[:0] = [{tests!r}, {root!r}]
from test_training_process import FakeOptions, fake_train
from engine.training.process import Progressed, start_finetune

if __name__ == "__main__":
    proc = start_finetune(FakeOptions({outdir!r}, steps=100_000, step_s=0.01), target=fake_train)
    while not any(isinstance(e, Progressed) for e in proc.poll()):
        time.sleep(0.02)
    print(proc.pid, flush=True)
    if {crash!r}:
        os._exit(0)          # the app dies without a word to its worker
    # else: the app quits normally without closing the worker
"""


@pytest.mark.parametrize("crash", [False, True], ids=["quits", "dies"])
def test_the_worker_stops_when_its_parent_goes(tmp_path, crash):
    import subprocess
    import sys

    script = tmp_path / "app.py"
    script.write_text(_PARENT_SCRIPT.format(tests=str(Path(__file__).parent), root=str(Path(__file__).parents[2]),
                                            outdir=str(tmp_path), crash=crash))
    begin = time.monotonic()
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - begin < 60                         # quitting did not wait for the whole run
    assert steps_done(tmp_path) < 100_000
    assert _stops_writing(tmp_path)

# ---------------------------------------------------------------------------------------------
# The real train() in the worker, on a tiny network and a tiny folder

def _tiny_run(tmp_path: Path, kimg: float):
    import imageio.v3 as iio
    import numpy as np

    from engine.training.loop import TrainOptions

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        iio.imwrite(folder / f"{i}.png", np.full((20, 20, 3), rng.integers(0, 256, 3), np.uint8))
    (folder / "broken.png").write_bytes(b"not a png")
    return TrainOptions(outdir=str(tmp_path / "run"), data=str(folder), cfg="stylegan2", kimg=kimg, batch=4,
                        resolution=16, z_dim=16, w_dim=16, cbase=256, cmax=16, snap=0.008, tick=0.004,
                        device="cpu", cache=False, grid_size=(2, 2), num_fp16_res=0)


def test_the_real_train_finishes_in_the_worker(tmp_path):
    from engine.loader import load_network
    from engine.training.snapshot import find_snapshots

    opts = _tiny_run(tmp_path, kimg=0.016)                       # 4 steps of 4 images, 2 snapshots
    proc = start_finetune(opts)
    try:
        events = collect(proc, timeout=300)
    finally:
        proc.close(timeout=10)
    assert isinstance(events[0], Started) and events[0].opts == opts
    last = events[-1]
    assert isinstance(last, Finished), last
    result = last.result
    assert result.cur_nimg == 16 and result.snapshot is not None
    assert result.dataset_report.used == 8
    assert [Path(path).name for path, _ in result.dataset_report.skipped] == ["broken.png"]
    snaps = [e for e in events if isinstance(e, SnapshotWritten)]
    assert [s.kimg for s in snaps] == [0.008, 0.016]
    assert snaps[-1].path == result.snapshot and snaps[-1].grid_path.is_file()
    assert [s.network for s in find_snapshots(opts.outdir)] == [s.path for s in snaps]
    assert load_network(result.snapshot)["G_ema"].img_resolution == 16
    assert any(p.preview is not None for p in progressed(events))   # the sample grid reached the parent
    assert progressed(events)[-1].step == 16


def test_the_real_train_stops_with_an_intact_snapshot(tmp_path):
    from engine.loader import load_network
    from engine.training.snapshot import latest_snapshot

    opts = _tiny_run(tmp_path, kimg=1000)
    proc = start_finetune(opts)
    try:
        wait_for(proc, lambda e: isinstance(e, SnapshotWritten), timeout=300)
        proc.stop()
        events = collect(proc, timeout=120)
    finally:
        proc.close(timeout=10)
    last = events[-1]
    assert isinstance(last, Stopped) and last.snapshot is not None, last
    assert latest_snapshot(opts.outdir).network == last.snapshot   # complete: network and state agree
    assert load_network(last.snapshot)["D"] is not None
    assert not [p.name for p in Path(opts.outdir).iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(not hasattr(os, "nice"), reason="CPU priority through nice is POSIX only")
def test_the_worker_trains_at_a_lower_cpu_priority_than_the_app(started, tmp_path):
    events = collect(started(FakeOptions(str(tmp_path)), target=priority_train))
    assert isinstance(events[-1], Finished)
    assert events[-1].result == min(19, os.nice(0) + BACKGROUND_NICE)   # the window's renders come first
