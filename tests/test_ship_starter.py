"""models/training/ship_starter.py's reading of finetune logs: the ticks, and the kimg and time they add up to."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ship_starter", ROOT / "models" / "training" / "ship_starter.py")
ship_starter = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ship_starter)

# What `finetune` prints: tqdm redraws separated by carriage returns, a tick line now and then.
LOG = ("training:   0%|          | 0.00/100k [00:00<?, ?img/s]\rtraining:   1%| kimg 0.504\r"
       "                    kimg 1.000  100.0 s/kimg  loss/G 1.2  loss/D 1.0  aug_p 0.000\n"
       "training:   2%| kimg 1.500\rkimg 2.000  110.0 s/kimg  loss/G 1.3  loss/D 0.9  aug_p 0.000\n"
       "stopped (SIGTERM); last snapshot: run/network-snapshot-000002000.safetensors\n"
       "kimg 2.000  120.0 s/kimg  loss/G 1.4  loss/D 0.8  aug_p 0.000\n"      # resumed at 1.6 kimg
       "kimg 3.000  130.0 s/kimg  loss/G 1.5  loss/D 0.7  aug_p 0.000\n")


def test_tick_lines_keep_only_the_ticks():
    ticks = ship_starter.tick_lines(LOG)
    assert [t.split()[1] for t in ticks] == ["1.000", "2.000", "2.000", "3.000"]
    assert all("loss/G" in t and "training:" not in t for t in ticks)


def test_a_resumed_segment_counts_its_kimg_once():
    steps = ship_starter.tick_steps(ship_starter.tick_lines(LOG))
    assert [k for k, _ in steps] == [1.0, 1.0, 0.0, 1.0]      # the repeated 2.000 adds nothing
    assert ship_starter.training_seconds(steps) == pytest.approx(100 + 110 + 130)


def test_runs_that_each_start_from_zero_add_up():
    first, second = ship_starter.tick_lines(LOG), ship_starter.tick_lines(LOG)
    steps = ship_starter.tick_steps(first) + ship_starter.tick_steps(second)
    assert sum(k for k, _ in steps) == 6.0                     # what main() sums for --log A --log B
    joined = ship_starter.tick_steps(first + second)           # read as one log, B's first kimg looks resumed
    assert sum(k for k, _ in joined) == 5.0
