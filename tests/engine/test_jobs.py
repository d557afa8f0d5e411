"""Jobs: progress events, cancel tokens over thread and process events, atomic writes."""
from __future__ import annotations

import dataclasses
import multiprocessing
import threading

import pytest

from engine.errors import Cancelled, StyleDeckError
from engine.jobs import CancelToken, Progress, atomic_write


def test_progress_is_frozen_with_optional_extras():
    p = Progress(3, 12, "optimising", metrics={"loss": 0.5})
    assert p.preview is None and p.metrics == {"loss": 0.5} and p.fraction == 0.25
    assert Progress(1, 0, "loading").fraction == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.step = 4


@pytest.mark.parametrize("make_event", [threading.Event, multiprocessing.get_context("spawn").Event])
def test_cancel_token_raises_once_cancelled(make_event):
    token = CancelToken(make_event())
    token.raise_if_cancelled()                       # not cancelled: nothing happens
    assert not token.cancelled
    token.cancel()
    assert token.cancelled
    with pytest.raises(Cancelled) as info:
        token.raise_if_cancelled()
    assert isinstance(info.value, StyleDeckError)


def test_cancel_from_another_thread_stops_a_job():
    token = CancelToken()
    started, steps = threading.Event(), []

    def job():
        try:
            for i in range(10_000):
                token.raise_if_cancelled()
                steps.append(i)
                started.set()
                threading.Event().wait(0.001)
        except Cancelled:
            steps.append("cancelled")

    thread = threading.Thread(target=job)
    thread.start()
    assert started.wait(5)
    token.cancel()
    thread.join(5)
    assert steps[-1] == "cancelled" and len(steps) < 10_000


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    target.chmod(0o640)
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"         # nothing visible until the block ends
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    assert target.stat().st_mode & 0o777 == 0o640    # the replaced file's mode is kept
    with atomic_write(tmp_path / "fresh.txt") as tmp:
        tmp.write_text("x")
    assert (tmp_path / "fresh.txt").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


@pytest.mark.parametrize("error", [RuntimeError("disk full"), Cancelled("stop"), KeyboardInterrupt()])
def test_atomic_write_leaves_the_old_file_on_failure(tmp_path, error):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(type(error)):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise error
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_write_new_file_not_created_on_failure(tmp_path):
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "new.bin") as tmp:
            tmp.write_bytes(b"x")
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_translate_oom_says_what_failed_and_what_to_try():
    import torch

    from engine.errors import DeviceOutOfMemoryError
    from engine.jobs import translate_oom
    with pytest.raises(DeviceOutOfMemoryError, match="while training. Try a smaller batch") as info:
        with translate_oom("training", "Try a smaller batch."):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)
    with translate_oom("rendering", "unused"):  # anything else passes through untouched
        pass
    with pytest.raises(ValueError):
        with translate_oom("rendering", "unused"):
            raise ValueError("not memory")
