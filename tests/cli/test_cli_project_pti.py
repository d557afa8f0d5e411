"""`python main.py project --pti / --pti-compare / --align` in a subprocess: pivotal tuning writes a compact
low-rank delta that rebuilds the tuned image on the base network and reports its PSNR against the untuned
network, and with --pti-compare against full tuning too; a real photograph
(scikit-image's astronaut) is face-aligned, projected and tuned; without a face or without a
detector the user's crop is used and stderr says so."""
from __future__ import annotations

import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from skimage import data

from engine.loader import load_network
from engine.photo import load_photo, prepare_photo
from engine.pti import apply_delta, load_delta, network_sha256, render_ws
from projection_target import tiny_network_and_target
from run_main import failed, ok, run


@pytest.fixture(scope="module")
def network(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A tiny 16 px StyleGAN2 checkpoint and an image it generates."""
    return tiny_network_and_target(tmp_path_factory.mktemp("pti-net"))


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")                  # tiny convolutions: one thread is far faster
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-torch-home")  # never find (or fetch) VGG16 weights


def _report(stdout: str) -> dict[str, float]:
    """The PSNRs the pivotal-tuning line prints: untuned and compact, and with --pti-compare full tuning."""
    numbers = re.search(r"PSNR untuned ([\d.]+) dB, compact ([\d.]+) dB, full tuning not run;", stdout)
    keys: tuple[str, ...] = ("untuned", "compact")
    if numbers is None:
        numbers = re.search(r"PSNR untuned ([\d.]+) dB, full tuning ([\d.]+) dB, compact ([\d.]+) dB "
                            r"\(([\d.]+) dB to full\)", stdout)
        keys = ("untuned", "full", "compact", "compact_vs_full")
    assert numbers, stdout
    return dict(zip(keys, map(float, numbers.groups())))


def _sizes(stdout: str) -> tuple[float, float]:
    """(delta MiB, network MiB) from the pivotal-tuning line."""
    sizes = re.search(r"([\d.]+) MiB vs ([\d.]+) MiB for the network", stdout)
    assert sizes, stdout
    return float(sizes[1]), float(sizes[2])


@pytest.fixture
def noisy_photo(network, tmp_path) -> Path:
    """The network's image with noise it cannot draw: room for the tuning to gain."""
    _, image = network
    noisy = np.clip(image.astype(int) + np.random.default_rng(0).integers(-40, 40, image.shape), 0, 255)
    photo = tmp_path / "photo.png"
    iio.imwrite(photo, noisy.astype(np.uint8))
    return photo


PTI_ARGS = ("--num-steps", "20", "--save-video", "0", "--pti-steps", "40", "--pti-lr", "1e-2", "--pti-rank", "4",
            "--device", "cpu")


def test_pti_writes_a_compact_delta_that_rebuilds_the_tuned_image(network, noisy_photo, tmp_path):
    net, _ = network
    out_dir = tmp_path / "out"
    stdout = ok(run("project", "--network", net, "--target", noisy_photo, "--pti", *PTI_ARGS, "--outdir", out_dir,
                    cwd=tmp_path))
    assert sorted(p.name for p in out_dir.iterdir()) == ["proj.png", "proj_pti.png", "projected_w.npz",
                                                         "pti_delta.safetensors", "target.png"]
    psnr = _report(stdout)                        # untuned and compact only: full tuning was not run
    assert "rank 4" in stdout and "pixel loss" in stdout and "--pti-compare" in stdout
    # measured: 18.66 dB -> 21.46 dB; the projection is already close and the noise caps what can be gained
    assert psnr["compact"] > psnr["untuned"] + 2, psnr
    # The file on the base network gives proj_pti.png back, at the projected ws.
    G = load_network(net, device="cpu")["G_ema"]
    delta = load_delta(out_dir / "pti_delta.safetensors")
    assert delta.base_sha256 == network_sha256(G) and delta.rank == 4
    ws = torch.from_numpy(np.load(out_dir / "projected_w.npz")["w"])
    assert np.array_equal(render_ws(apply_delta(G, delta), ws), iio.imread(out_dir / "proj_pti.png"))
    assert np.array_equal(render_ws(G, ws), iio.imread(out_dir / "proj.png"))   # NVIDIA's files: the base's
    # small relative to the network, and the sizes printed are the real ones
    delta_bytes = (out_dir / "pti_delta.safetensors").stat().st_size
    network_bytes = sum(t.numel() * t.element_size() for t in G.state_dict().values())
    assert delta_bytes < network_bytes / 4, (delta_bytes, network_bytes)   # measured: 7.7x smaller at 16 px, rank 4
    assert _sizes(stdout) == (round(delta_bytes / 2**20, 2), round(network_bytes / 2**20, 2))


def test_pti_compare_reports_untuned_full_and_compact(network, noisy_photo, tmp_path):
    net, _ = network
    out_dir = tmp_path / "out"
    stdout = ok(run("project", "--network", net, "--target", noisy_photo, "--pti-compare", *PTI_ARGS,
                    "--outdir", out_dir, cwd=tmp_path))       # --pti-compare implies --pti
    psnr = _report(stdout)
    assert psnr.keys() == {"untuned", "full", "compact", "compact_vs_full"} and "not run" not in stdout
    # measured: untuned 18.66 dB, full tuning 21.37 dB, compact 21.46 dB (33.84 dB to full)
    assert psnr["full"] > psnr["untuned"] + 2 and psnr["compact"] > psnr["untuned"] + 2, psnr
    assert psnr["compact"] >= psnr["full"] - 1 and psnr["compact_vs_full"] >= 25, psnr
    # only the compact form is written; full tuning is for the report
    assert sorted(p.name for p in out_dir.iterdir()) == ["proj.png", "proj_pti.png", "projected_w.npz",
                                                         "pti_delta.safetensors", "target.png"]


def test_a_real_photo_is_aligned_projected_and_tuned(network, tmp_path):
    net, _ = network
    photo = tmp_path / "astronaut.png"
    iio.imwrite(photo, data.astronaut())          # a real portrait, 512 px, shipped with scikit-image
    result = run("project", "--network", net, "--target", photo, "--num-steps", "15", "--mode", "w+",
                 "--align", "--pti", "--pti-steps", "10", "--pti-lr", "3e-3", "--save-video", "1",
                 "--device", "cpu", "--outdir", tmp_path / "out", cwd=tmp_path)
    stdout = ok(result)
    assert "aligned face" in stdout and "Face alignment skipped" not in result.stderr
    _report(stdout)
    target = iio.imread(tmp_path / "out" / "target.png")
    assert np.array_equal(target, prepare_photo(photo, 16, align=True).image)
    assert not np.array_equal(target, load_photo(photo, 16))   # the face crop, not the centre crop
    assert np.load(tmp_path / "out" / "projected_w.npz")["w"].shape == (1, 6, 32)
    assert iio.imread(tmp_path / "out" / "proj.mp4").shape == (15, 16, 32, 3)


def test_align_without_a_face_uses_the_crop_and_says_so(network, tmp_path):
    net, image = network
    photo = tmp_path / "flat.png"
    iio.imwrite(photo, np.repeat(np.repeat(image, 4, axis=0), 4, axis=1))   # no face in a 16 px render
    result = run("project", "--network", net, "--target", photo, "--num-steps", "2", "--save-video", "0",
                 "--align", "--device", "cpu", "--outdir", tmp_path / "out", cwd=tmp_path)
    stdout = ok(result)
    assert "Face alignment skipped for flat.png: No face was found" in result.stderr
    assert "centre crop" in result.stderr and "aligned face" not in stdout
    assert np.array_equal(iio.imread(tmp_path / "out" / "target.png"), image)


def test_align_without_dlib_uses_the_crop_and_says_so(network, tmp_path, monkeypatch):
    net, _ = network
    hide = tmp_path / "no-dlib" / "dlib"          # shadows the installed dlib, as on a machine without it
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('No module named dlib')\n")
    monkeypatch.setenv("PYTHONPATH", str(hide.parent))
    photo = tmp_path / "astronaut.png"
    iio.imwrite(photo, data.astronaut())
    result = run("project", "--network", net, "--target", photo, "--num-steps", "2", "--save-video", "0",
                 "--align", "--fit", "pad", "--device", "cpu", "--outdir", tmp_path / "out", cwd=tmp_path)
    ok(result)
    assert "Face alignment skipped" in result.stderr and "pip install dlib-bin" in result.stderr
    assert "padding instead" in result.stderr
    assert np.array_equal(iio.imread(tmp_path / "out" / "target.png"), load_photo(photo, 16, fit="pad"))


def test_bad_pti_settings_are_clear_errors(network, tmp_path):
    net, image = network
    photo = tmp_path / "photo.png"
    iio.imwrite(photo, image)
    stderr = failed(run("project", "--network", net, "--target", photo, "--pti", "--pti-rank", "0",
                        "--device", "cpu", "--outdir", tmp_path / "out", cwd=tmp_path))
    assert "rank must be at least 1" in stderr
    assert not (tmp_path / "out").exists()
