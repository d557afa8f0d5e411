"""`python main.py blend` as a user runs it, in a subprocess: the checkpoint it writes renders with
`generate`, the end-point schedules reproduce each network's PNGs, and its origin records the blend."""
from __future__ import annotations

import copy
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from engine.checkpoint import read_checkpoint_metadata, save_checkpoint
from engine.images import to_uint8
from engine.latents import seed_to_z
from engine.loader import file_sha256, load_network
from engine.networks import stylegan2, stylegan3
from reference_data import perturbed
from run_main import ok, run
from tests.nvidia_pickle import write_network_pickle


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict[str, Path]:
    """A tiny StyleGAN2 base (as an NVIDIA pickle) and a nudged copy as its 'fine-tune' (native checkpoint),
    plus a StyleGAN3 network that does not fit them."""
    folder = tmp_path_factory.mktemp("blend-nets")
    torch.manual_seed(0)
    base = perturbed(stylegan2.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=32, img_channels=3,
                                         channel_base=512, channel_max=16, num_fp16_res=0), seed=1).eval()
    tuned = perturbed(copy.deepcopy(base), seed=2)
    G3 = stylegan3.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, channel_base=256,
                             channel_max=16, num_layers=4, num_critical=1, margin_size=2, num_fp16_res=0)
    paths = {"base": folder / "base.pkl", "tuned": folder / "tuned.safetensors", "sg3": folder / "sg3.safetensors"}
    write_network_pickle(paths["base"], {"G_ema": base}, repo="ada")
    save_checkpoint(paths["tuned"], {"G_ema": tuned})
    save_checkpoint(paths["sg3"], {"G_ema": G3})
    return paths


def _generate(network: Path, outdir: Path, cwd: Path) -> np.ndarray:
    ok(run("generate", "--network", network, "--seeds", "0-2", "--outdir", outdir, "--device", "cpu", cwd=cwd))
    return np.stack([iio.imread(outdir / f"seed{seed:04d}.png") for seed in range(3)])


@torch.no_grad()
def _expected(network: Path) -> np.ndarray:
    """What `generate --seeds 0-2` writes for `network`, computed here: its seeds, noise const, uint8."""
    G = load_network(network)["G_ema"]
    return np.stack([to_uint8(G(seed_to_z(seed, G.z_dim), None, noise_mode="const"))[0] for seed in range(3)])


def test_blend_end_points_reproduce_each_network_and_a_mix_differs(nets, tmp_path):
    images = {role: _expected(nets[role]) for role in ("base", "tuned")}
    assert not np.array_equal(images["base"], images["tuned"])
    for name, split, width, same_as in (("all-base", 1.0, 0.0, "base"), ("all-tuned", 0.0, 0.0, "tuned"),
                                        ("mixed", 0.5, 0.3, None)):
        output = tmp_path / f"{name}.safetensors"
        out = ok(run("blend", "--base", nets["base"], "--tuned", nets["tuned"], "--split", split,
                     "--width", width, "--output", output, cwd=tmp_path))
        assert f"wrote {output}" in out and "b4" in out and "b32" in out
        rendered = _generate(output, tmp_path / f"{name}-png", tmp_path)
        if same_as is not None:
            assert np.array_equal(rendered, images[same_as]), name
        else:
            for role in ("base", "tuned"):
                assert np.abs(rendered.astype(int) - images[role].astype(int)).mean() > 0.5, role


def test_blend_records_its_sources_and_schedule(nets, tmp_path):
    output = tmp_path / "sub" / "blended.safetensors"
    ok(run("blend", "--base", nets["base"], "--tuned", nets["tuned"], "--split", "0.5", "--width", "0.1",
           "--output", output, cwd=tmp_path))
    meta = read_checkpoint_metadata(output)
    blend = meta["origin"]["blend"]
    assert blend["base"] == {"source": "base.pkl", "sha256": file_sha256(nets["base"])}
    assert blend["tuned"] == {"source": "tuned.safetensors", "sha256": file_sha256(nets["tuned"])}
    assert blend["split"] == 0.5 and blend["width"] == 0.1
    assert blend["blocks"] == ["b4", "b8", "b16", "b32"]
    assert blend["weights"] == pytest.approx([0.0, 0.0, 1.0, 1.0])
    assert list(meta["networks"]) == ["G_ema"]
    # coarse blocks are the base's weights, read back with what a user would use
    G = load_network(output)["G_ema"]
    base = load_network(nets["base"])["G_ema"]
    assert torch.equal(G.synthesis.b8.conv1.weight, base.synthesis.b8.conv1.weight)


def test_blend_refuses_networks_of_different_architectures(nets, tmp_path):
    output = tmp_path / "never.safetensors"
    result = run("blend", "--base", nets["base"], "--tuned", nets["sg3"], "--output", output, cwd=tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "stylegan2 base with a stylegan3" in result.stderr
    assert not output.exists()
    result = run("blend", "--base", nets["base"], "--tuned", nets["tuned"], "--split", "2",
                 "--output", output, cwd=tmp_path)
    assert result.returncode == 1 and "split must be between 0" in result.stderr, result.stderr
    assert not output.exists()
