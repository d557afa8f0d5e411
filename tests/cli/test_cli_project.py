"""`python main.py project` as a user runs it, in a subprocess: NVIDIA's output files for one photo, one
subfolder per photo for a folder, the offline LPIPS fallback said on stderr, and broken photos as errors."""
from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from projection_target import tiny_network_and_target
from run_main import failed, ok, run


@pytest.fixture(scope="module")
def network(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A tiny StyleGAN2 checkpoint and an image it generates."""
    return tiny_network_and_target(tmp_path_factory.mktemp("project-net"))


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")     # tiny convolutions: one thread is far faster on a busy CPU
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-torch-home")   # never find (or fetch) VGG16 weights


def test_project_writes_nvidia_files_and_falls_back_offline(network, tmp_path):
    net, image = network
    photo = tmp_path / "photo.png"
    iio.imwrite(photo, np.repeat(np.repeat(image, 4, axis=0), 4, axis=1))   # 64 px: shrunk to 16 on load
    result = run("project", "--network", net, "--target", photo, "--num-steps", "40", "--mode", "w+",
                 "--device", "cpu", "--outdir", tmp_path / "out", cwd=tmp_path)
    out = ok(result)
    assert "vgg16-397923af.pth" in result.stderr and "pixel loss" in result.stderr
    assert "Traceback" not in result.stderr
    assert "pixel loss" in out
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["proj.mp4", "proj.png", "projected_w.npz", "target.png"]
    w = np.load(tmp_path / "out" / "projected_w.npz")["w"]
    assert w.shape == (1, 6, 32) and w.dtype == np.float32
    assert np.array_equal(iio.imread(tmp_path / "out" / "target.png"), image)
    assert iio.imread(tmp_path / "out" / "proj.mp4").shape == (40, 16, 32, 3)


def test_project_a_folder_one_subfolder_per_photo_and_skip_broken(network, tmp_path):
    net, image = network
    photos = tmp_path / "photos"
    photos.mkdir()
    iio.imwrite(photos / "a.png", image)
    iio.imwrite(photos / "b.jpg", image)
    iio.imwrite(photos / "d.tif", image)            # any format the photo loader reads is a photo
    (photos / "c.png").write_bytes(b"")
    (photos / "notes.txt").write_text("not a photo")
    result = run("project", "--network", net, "--target", photos, "--num-steps", "3", "--loss", "pixel",
                 "--save-video", "0", "--fit", "pad", "--outdir", tmp_path / "out", "--device", "cpu", cwd=tmp_path)
    stderr = failed(result, 1)                      # one photo was broken: exit 1, the others done
    assert "c.png is empty" in stderr
    for name in ("a", "b", "d"):
        assert sorted(p.name for p in (tmp_path / "out" / name).iterdir()) == ["proj.png", "projected_w.npz",
                                                                              "target.png"]
    assert not (tmp_path / "out" / "c").exists() and not (tmp_path / "out" / "notes").exists()


def test_project_a_corrupt_photo_is_a_clear_error(network, tmp_path):
    net, _ = network
    photo = tmp_path / "broken.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    stderr = failed(run("project", "--network", net, "--target", photo, "--num-steps", "2", "--device", "cpu",
                        "--outdir", tmp_path / "out", cwd=tmp_path))
    assert "broken.png is not a readable image" in stderr
