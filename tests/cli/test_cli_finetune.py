"""`python main.py finetune`: NVIDIA train.py's flags, a short run, the torchrun hint, resume, stopping."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from engine.cli import build_parser, finetune_options, main
from engine.images import save_png
from engine.loader import load_network
from engine.training.snapshot import find_snapshots
from run_main import ROOT


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def folder(tmp_path):
    """Six random 20x24 images (cropped to squares and resized to 16 px by the dataset)."""
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    for i in range(6):
        save_png(tmp_path / "data" / f"{i}.png", rng.integers(0, 256, [24, 20, 3], dtype=np.uint8))
    return tmp_path / "data"


TINY = ["--resolution", "16", "--batch", "4", "--cbase", "256", "--cmax", "16", "--map", "1", "--device", "cpu",
        "--no-cache", "--mbstd-group", "2"]


def test_flags_mean_what_they_mean_in_nvidia_train_py():
    args = build_parser().parse_args(["finetune", "--outdir", "o", "--data", "d", "--kimg", "0.25", "--snap", "2",
                                      "--tick", "0.5", "--mirror=1", "--gamma", "1.5", "--aug", "fixed", "--p", "0.3",
                                      "--cfg", "stylegan3-t", "--glr", "0.001", "--map", "4", "--resume", "latest"])
    opts = finetune_options(args)
    assert opts.kimg == 0.25 and opts.tick == 0.5
    assert opts.snap == 1.0            # --snap counts ticks, as NVIDIA's: 2 ticks of 0.5 kimg
    assert opts.mirror is True and opts.gamma == 1.5 and opts.aug == "fixed" and opts.p == 0.3
    assert opts.cfg == "stylegan3-t" and opts.glr == 0.001 and opts.map == 4 and opts.resume == "latest"
    defaults = finetune_options(build_parser().parse_args(["finetune", "--outdir", "o", "--data", "d"]))
    assert defaults.batch == 32 and defaults.snap == 200 and defaults.dlr == 0.002 and defaults.mirror is False


def test_a_short_run_then_resume_latest(tmp_path, folder, capsys):
    outdir = tmp_path / "run"
    argv = ["finetune", "--outdir", str(outdir), "--data", str(folder), "--kimg", "0.008", *TINY]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "network-snapshot-000000008.safetensors" in out
    assert main([*argv[:6], "0.016", *TINY, "--resume", "latest"]) == 0
    assert [s.cur_nimg for s in find_snapshots(outdir)] == [8, 16]
    G = load_network(find_snapshots(outdir)[-1].network)["G_ema"]
    assert G(torch.randn([1, G.z_dim]), None).shape == (1, 3, 16, 16)


def test_eq_rot_trains_a_stylegan3_on_the_rotation_term_and_is_refused_for_stylegan2(tmp_path, folder, capsys):
    argv = ["finetune", "--data", str(folder), "--kimg", "0.008", "--tick", "0.004", *TINY, "--eq-rot", "5",
            "--turn-fakes=1"]
    opts = finetune_options(build_parser().parse_args(["finetune", "--outdir", "o", *argv[1:]]))
    assert opts.eq_rot == 5 and opts.turn_fakes is True
    assert main([*argv, "--outdir", str(tmp_path / "t"), "--cfg", "stylegan3-t"]) == 0
    assert "loss/eq" in capsys.readouterr().out
    assert main([*argv, "--outdir", str(tmp_path / "s"), "--cfg", "stylegan2"]) == 1
    assert "(--eq-rot) need a StyleGAN3 network" in capsys.readouterr().err
    assert not find_snapshots(tmp_path / "s")


def test_several_gpus_without_torchrun_prints_the_command(tmp_path, folder, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    status = main(["finetune", "--outdir", str(tmp_path / "o"), "--data", str(folder), "--gpus", "2",
                   "--kimg", "0.5", "--mirror"])
    assert status == 2
    err = capsys.readouterr().err
    assert "torchrun --standalone --nproc_per_node=2 main.py finetune" in err
    assert "--kimg 0.5" in err and "--mirror 1" in err and "--gpus" not in err.split("finetune", 1)[1]
    assert not (tmp_path / "o").exists()


def test_scratch_without_resolution_is_an_error(tmp_path, folder, capsys):
    assert main(["finetune", "--outdir", str(tmp_path / "o"), "--data", str(folder), "--kimg", "0.004",
                 "--device", "cpu", "--no-cache"]) == 1
    assert "--resolution" in capsys.readouterr().err


def test_a_folder_without_images_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert main(["finetune", "--outdir", str(tmp_path / "o"), "--data", str(tmp_path / "empty"), *TINY]) == 1
    assert "no usable image" in capsys.readouterr().err


def test_minutes_limit_stops_with_a_snapshot_that_resumes(tmp_path, folder, capsys):
    outdir = tmp_path / "run"
    argv = ["finetune", "--outdir", str(outdir), "--data", str(folder), "--kimg", "100", *TINY]
    assert main([*argv, "--minutes", "0.02"]) == 0                    # 1.2 s, then a clean stop
    out = capsys.readouterr().out
    assert "stopped (time limit)" in out and "--resume latest" in out
    first = find_snapshots(outdir)[-1]
    assert 0 < first.cur_nimg < 100_000
    assert main([*argv, "--minutes", "0.02", "--resume", "latest"]) == 0
    assert find_snapshots(outdir)[-1].cur_nimg > first.cur_nimg


def test_sigterm_stops_with_a_snapshot(tmp_path, folder):
    outdir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "finetune", "--outdir", str(outdir),
                             "--data", str(folder), "--kimg", "100", *TINY], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (outdir / "reals.png").exists():
        time.sleep(0.2)                                                 # training has started
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGTERM" in err and "stopped (SIGTERM)" in out
    assert find_snapshots(outdir) and find_snapshots(outdir)[-1].network.is_file()
