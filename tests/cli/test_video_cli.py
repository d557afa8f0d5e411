"""`python main.py video` as a user runs it: NVIDIA gen_video.py's options, StyleGAN3 motion, formats, errors."""
from __future__ import annotations

from pathlib import Path

import imageio
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from engine.checkpoint import save_checkpoint
from engine.networks import stylegan2, stylegan3
from run_main import failed, ok, run


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict[str, Path]:
    """Tiny 16 px StyleGAN2 and StyleGAN3-T checkpoints."""
    folder = tmp_path_factory.mktemp("video-nets")
    torch.manual_seed(0)
    G2 = stylegan2.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, channel_base=128,
                             channel_max=16, num_fp16_res=0)
    G3 = stylegan3.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, channel_base=256,
                             channel_max=16, num_layers=4, num_critical=1, magnitude_ema_beta=0.999)
    return {"sg2": save_checkpoint(folder / "sg2.safetensors", {"G_ema": G2}),
            "sg3": save_checkpoint(folder / "sg3.safetensors", {"G_ema": G3})}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")     # tiny convolutions: one thread is far faster on a busy CPU


def _mp4(path: Path) -> tuple[int, tuple[int, int], float]:
    reader = imageio.get_reader(path)
    try:
        return reader.count_frames(), tuple(reader.get_meta_data()["size"]), reader.get_meta_data()["fps"]
    finally:
        reader.close()


def test_gen_video_options_mean_what_they_mean_there(nets, tmp_path):
    # 4 seeds in a 2x1 grid: 2 keyframes per cell, 3 frames between keyframes -> a 6-frame loop, 32x16
    out = ok(run("video", "--network", nets["sg3"], "--seeds", "0-3", "--grid", "2x1", "--w-frames", "3",
                 "--trunc", "0.7", "--output", tmp_path / "lerp.mp4", "--fps", "12", "--device", "cpu", cwd=tmp_path))
    assert "wrote 6 frames (32x16, 12 fps, mp4)" in out
    assert _mp4(tmp_path / "lerp.mp4") == (6, (32, 16), 12.0)
    # --num-keyframes repeats the seeds; --shuffle-seed shuffles them (a different video, same length)
    ok(run("video", "--network", nets["sg3"], "--seeds", "0-2", "--num-keyframes", "4", "--w-frames", "2",
           "--shuffle-seed", "5", "--output", tmp_path / "frames", "--device", "cpu", cwd=tmp_path))
    assert len(list((tmp_path / "frames").iterdir())) == 8


def test_frame0_is_the_first_seed_as_generate_renders_it(nets, tmp_path):
    ok(run("video", "--network", nets["sg2"], "--seeds", "7,8", "--w-frames", "2", "--trunc", "0.5",
           "--output", tmp_path / "frames", "--device", "cpu", cwd=tmp_path))
    ok(run("generate", "--network", nets["sg2"], "--seeds", "7", "--trunc", "0.5", "--outdir", tmp_path / "gen",
           "--device", "cpu", cwd=tmp_path))
    np.testing.assert_array_equal(iio.imread(tmp_path / "frames" / "frame00000.png"),
                                  iio.imread(tmp_path / "gen" / "seed0007.png"))


def test_rotation_and_translation_to_gif(nets, tmp_path):
    out = ok(run("video", "--network", nets["sg3"], "--seeds", "3", "--turns", "1", "--path", "circle",
                 "--radius", "0.1", "--frames", "5", "--fps", "10", "--size", "32", "--output", tmp_path / "spin.gif",
                 "--device", "cpu", cwd=tmp_path))
    assert "wrote 5 frames (32x32, 10 fps, gif)" in out
    frames = list(iio.imiter(tmp_path / "spin.gif"))
    assert len(frames) == 5 and frames[0].shape[:2] == (32, 32)
    assert iio.immeta(tmp_path / "spin.gif")["duration"] == 100


def test_duration_sets_the_frame_count(nets, tmp_path):
    ok(run("video", "--network", nets["sg2"], "--seeds", "1-2", "--duration", "0.5", "--fps", "8",
           "--output", tmp_path / "short.webp", "--device", "cpu", cwd=tmp_path))
    assert sum(1 for _ in iio.imiter(tmp_path / "short.webp")) == 4


def test_stylegan2_rotation_is_a_clear_error_and_writes_nothing(nets, tmp_path):
    err = failed(run("video", "--network", nets["sg2"], "--seeds", "1", "--turns", "1",
                     "--output", tmp_path / "x.mp4", "--device", "cpu", cwd=tmp_path))
    assert "StyleGAN3" in err and "StyleGAN2" in err
    assert not (tmp_path / "x.mp4").exists() and not list(tmp_path.glob(".x*"))


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0-2", "--grid", "2x2"], "multiple of 4"),
    (["--seeds", "0", "--angles", "0,90", "--turns", "1"], "--angles"),
    (["--seeds", "0", "--output", "clip.avi"], "format"),
])
def test_bad_requests_are_clear_errors(nets, tmp_path, args, message):
    if "--output" not in args:
        args = [*args, "--output", "v.mp4"]
    err = failed(run("video", "--network", nets["sg3"], *args, "--device", "cpu", cwd=tmp_path))
    assert message in err


def test_bad_grid_is_a_usage_error(nets, tmp_path):
    err = failed(run("video", "--network", nets["sg3"], "--seeds", "0", "--grid", "2by2", "--output", "v.mp4",
                     cwd=tmp_path), code=2)
    assert "--grid" in err
