"""`python main.py --screenshot FILE.png`: start-up in a subprocess, on the default network."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_main(args: list[str], models: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", STYLEDECK_MODELS=str(models),
               XDG_CONFIG_HOME=str(cwd / "config"))  # recent files of this run stay in tmp
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.fixture
def models(tmp_path, sg2_path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(sg2_path, folder / "tiny.safetensors")
    return folder


def test_screenshot_of_the_default_network(tmp_path, models):
    out = tmp_path / "window.png"
    proc = run_main(["--screenshot", str(out), "--screenshot-panel", "mixing", "--seeds", "0,7"], models, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "tiny.safetensors" in proc.stdout and "Mixing" in proc.stdout
    image = iio.imread(out)
    assert image.ndim == 3 and image.shape[0] >= 600 and image.shape[1] >= 800
    assert len(np.unique(image.reshape(-1, image.shape[2]), axis=0)) > 50  # a rendered face, not a blank window


def test_screenshot_without_a_network_fails_clearly(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_main(["--screenshot", str(tmp_path / "x.png")], empty, tmp_path)
    assert proc.returncode == 1
    assert "No network is bundled" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_commands_still_go_to_the_cli(tmp_path, models):
    proc = run_main(["info"], models, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "stylegan2" in proc.stdout.lower()
