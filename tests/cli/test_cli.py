"""The command line as a user runs it: `python main.py ...` in a subprocess, on tiny networks saved
as StyleDeck checkpoints and as NVIDIA-format pickles; PNGs read back with imageio."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.bundled import bundled_networks, default_network
from engine.errors import StyleDeckError
from engine.images import to_uint8
from engine.latents import layer_groups, seed_to_z
from engine.loader import load_network
from engine.networks import stylegan2, stylegan3
from engine.networks.stylegan3 import input_transform
from reference_data import load_reference, state_of
from run_main import ROOT, failed, ok, run
from tests.nvidia_pickle import write_network_pickle


def _w_avg(G: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():  # a fresh network has w_avg = 0; make truncation visible
        G.mapping.w_avg.copy_(torch.randn(G.w_dim, generator=torch.Generator().manual_seed(3)))
    return G


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict[str, Path]:
    """Tiny networks on disk: StyleGAN2 32 px and StyleGAN3-T 16 px, each as a native checkpoint and as an
    NVIDIA pickle (stylegan2-ada-pytorch and stylegan3 snapshot formats)."""
    folder = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    sg2 = _w_avg(stylegan2.Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                                     channel_base=256, channel_max=32, num_fp16_res=0))
    sg3 = _w_avg(stylegan3.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                                     channel_base=128, channel_max=16, num_fp16_res=0))
    paths = {"sg2": save_checkpoint(folder / "sg2.safetensors", {"G_ema": sg2}),
             "sg3": save_checkpoint(folder / "sg3.safetensors", {"G_ema": sg3})}
    cond = _w_avg(stylegan2.Generator(z_dim=16, c_dim=3, w_dim=16, img_resolution=16, img_channels=3,
                                      channel_base=128, channel_max=16, num_fp16_res=0))
    paths["cond"] = save_checkpoint(folder / "cond.safetensors", {"G_ema": cond})
    paths["sg2_pkl"] = write_network_pickle(folder / "sg2.pkl", {"G_ema": sg2}, repo="ada")
    paths["sg3_pkl"] = write_network_pickle(folder / "sg3.pkl", {"G_ema": sg3}, repo="stylegan3")
    return paths


@torch.no_grad()
def reference_images(path: Path, seeds, psi=1.0, rotate=0.0, translate=(0.0, 0.0)) -> dict[int, np.ndarray]:
    """What NVIDIA's gen_images.py computes, called on G directly in this process."""
    G = load_network(path)["G_ema"]
    if hasattr(G.synthesis, "input"):
        G.synthesis.input.transform.copy_(torch.from_numpy(input_transform(rotate, translate)))
    c = torch.zeros([1, G.c_dim])
    return {seed: to_uint8(G(seed_to_z(seed, G.z_dim), c, truncation_psi=psi, noise_mode="const"))[0]
            for seed in seeds}


def read(path: Path) -> np.ndarray:
    assert path.is_file(), f"{path.name} was not written; the folder has {sorted(p.name for p in path.parent.iterdir())}"
    return iio.imread(path)


# --- help ----------------------------------------------------------------------------------------

def test_help_lists_the_commands(tmp_path):
    out = ok(run("--help", cwd=tmp_path))
    for command in ("info", "generate", "mix", "convert"):
        assert command in out


@pytest.mark.parametrize("command, option", [("info", "--network"), ("generate", "--noise-mode"),
                                             ("mix", "--styles"), ("convert", "--format")])
def test_each_command_has_help(tmp_path, command, option):
    assert option in ok(run(command, "--help", cwd=tmp_path))


# --- generate --------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, extra", [("sg2", ()), ("sg3", ("--rotate", "15", "--translate", "0.1,-0.05")),
                                        ("sg2_pkl", ()), ("sg3_pkl", ())])
def test_generate_writes_nvidia_named_pngs_equal_to_G(tmp_path, nets, key, extra):
    network = nets[key]
    seeds = [0, 1, 2, 7]
    ok(run("generate", "--network", network, "--seeds", "0-2,7", "--trunc", "0.7", "--outdir", "out",
           "--grid", "--device", "cpu", *extra, cwd=tmp_path))
    rotate = 15.0 if extra else 0.0
    expected = reference_images(network, seeds, psi=0.7, rotate=rotate, translate=(0.1, -0.05) if extra else (0, 0))
    res = 32 if key.startswith("sg2") else 16
    images = {seed: read(tmp_path / "out" / f"seed{seed:04d}.png") for seed in seeds}
    for seed, image in images.items():
        assert image.shape == (res, res, 3) and image.std() > 1, "blank image"
        assert np.array_equal(image, expected[seed]), f"seed {seed} differs from G(seed_to_z({seed}))"
    assert not np.array_equal(images[0], images[1])
    grid = read(tmp_path / "out" / "grid.png")
    assert grid.shape == (2 * res, 2 * res, 3)
    assert np.array_equal(grid[res:, res:], images[7])


def test_generate_psi_zero_gives_one_face(tmp_path, nets):
    ok(run("generate", "--network", nets["sg2"], "--seeds", "3,4", "--trunc", "0", "--outdir", ".",
           "--noise-mode", "none", cwd=tmp_path))
    assert np.array_equal(read(tmp_path / "seed0003.png"), read(tmp_path / "seed0004.png"))


@torch.no_grad()
def test_generate_conditional_needs_and_uses_the_class(tmp_path, nets):
    err = failed(run("generate", "--network", nets["cond"], "--seeds", "1", cwd=tmp_path))
    assert "conditional" in err and "--class" in err
    ok(run("generate", "--network", nets["cond"], "--seeds", "1", "--class", "2", "--outdir", ".", cwd=tmp_path))
    G = load_network(nets["cond"])["G_ema"]
    c = torch.tensor([[0.0, 0.0, 1.0]])
    expected = to_uint8(G(seed_to_z(1, G.z_dim), c, noise_mode="const"))[0]
    assert np.array_equal(read(tmp_path / "seed0001.png"), expected)


def _ctrl_c_as_in_a_terminal() -> None:
    # A shell starts background jobs (`cmd &`) with SIGINT ignored, children inherit that, and a program
    # rightly keeps ignoring it; the command under test must see Ctrl+C as it would in a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupt_stops_with_130_and_no_traceback(tmp_path, nets):
    env = {**os.environ, "STYLEDECK_MODELS": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "generate", "--network", str(nets["sg2"]),
                             "--seeds", "0-100000", "--outdir", "many"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_as_in_a_terminal)
    deadline = time.monotonic() + 120
    while not (tmp_path / "many" / "seed0002.png").exists():   # well into the loop
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped" in err and "Traceback" not in err
    assert not list((tmp_path / "many").glob(".*")), "a half-written temporary file was left behind"


def test_ctrl_c_swallowed_by_a_finalizer_still_stops_at_the_next_step(monkeypatch):
    """Ctrl+C that lands in a library object's __del__ is only reported by Python ("Exception ignored");
    the command must stop anyway (seen in CI: `generate` ran on for a minute after SIGINT)."""
    from engine import cli
    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: swallowed.append(u.exc_type))
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal (see above)

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)                          # the handler runs here, inside the finalizer

    with cli._sigint_flag():
        with cli.progress_bar(10, "steps") as advance:
            advance()
            Finalized()                              # collected at once: KeyboardInterrupt raised and ignored
            assert swallowed == [KeyboardInterrupt]
            with pytest.raises(KeyboardInterrupt):
                advance()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # the previous handler is back
    signal.signal(signal.SIGINT, outer)


def test_an_ignored_ctrl_c_stays_ignored():
    """Started in the background (`styledeck ... &`), a command is not Ctrl+C's to stop."""
    from engine import cli
    outer = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with cli._sigint_flag():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, outer)


@pytest.fixture(scope="module")
def reference_pickles(tmp_path_factory) -> dict[str, Path]:
    """NVIDIA's reference networks (shared/reference), written as NVIDIA snapshot pickles."""
    folder = tmp_path_factory.mktemp("reference")
    paths = {}
    for name, module in (("sg2_uncond", stylegan2), ("sg3t", stylegan3)):
        config, weights, _ = load_reference(name)
        G = module.Generator(**config["G_ema"]["init_kwargs"])
        G.load_state_dict(state_of(weights, "G_ema"), strict=True)
        paths[name] = write_network_pickle(folder / f"{name}.pkl", {"G_ema": G.eval()})
    return paths


@pytest.mark.parametrize("name, psi, extra, key", [
    ("sg2_uncond", "0.7", (), "img_psi0.7"),
    ("sg3t", "1", (), "img_psi1.0"),
    ("sg3t", "0.5", ("--rotate", "15", "--translate", "0.1,-0.05"), "img_transform")])
def test_seed_gives_nvidias_image(tmp_path, reference_pickles, name, psi, extra, key):
    # The reference z are RandomState(123).randn(4, z_dim), so z[0] is what gen_images.py draws for seed 123.
    _, _, expected = load_reference(name)
    assert np.array_equal(seed_to_z(123, expected["z"].shape[1]).numpy(), expected["z"][:1])
    ok(run("generate", "--network", reference_pickles[name], "--seeds", "123", "--trunc", psi, *extra,
           "--outdir", ".", "--device", "cpu", cwd=tmp_path))
    image = read(tmp_path / "seed0123.png").astype(int)
    nvidia = to_uint8(torch.from_numpy(expected[key][:1]))[0].astype(int)
    # float32 rounding (~1e-6) can tip a pixel across a uint8 boundary, nothing more
    assert image.shape == nvidia.shape and np.abs(image - nvidia).max() <= 1
    assert (image == nvidia).mean() > 0.99


# --- mix ---------------------------------------------------------------------------------------------

@torch.no_grad()
def test_mix_writes_the_grid_and_pairs(tmp_path, nets):
    ok(run("mix", "--network", nets["sg2"], "--rows", "0-1", "--cols", "5,6", "--styles", "coarse",
           "--trunc", "0.8", "--outdir", "mix", "--device", "cpu", cwd=tmp_path))
    out = tmp_path / "mix"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["0-0.png", "1-1.png", "5-5.png", "6-6.png", "0-5.png", "0-6.png", "1-5.png", "1-6.png", "grid.png"])
    G = load_network(nets["sg2"])["G_ema"]
    coarse = list(layer_groups(G)[0].layers)
    ws = {s: G.mapping(seed_to_z(s, G.z_dim), None, truncation_psi=0.8) for s in (0, 1, 5, 6)}
    mixed = ws[1].clone()
    mixed[:, coarse] = ws[6][:, coarse]                      # row 1 with column 6's coarse styles
    assert np.array_equal(read(out / "1-6.png"), to_uint8(G.synthesis(mixed, noise_mode="const"))[0])
    assert np.array_equal(read(out / "5-5.png"), to_uint8(G.synthesis(ws[5], noise_mode="const"))[0])
    grid, r = read(out / "grid.png"), 32
    assert grid.shape == (3 * r, 3 * r, 3)
    assert grid[:r, :r].max() == 0                           # the empty corner
    assert np.array_equal(grid[:r, 2 * r:], read(out / "6-6.png"))   # column seeds across the top
    assert np.array_equal(grid[2 * r:, :r], read(out / "1-1.png"))   # row seeds down the left
    assert np.array_equal(grid[2 * r:, 2 * r:], read(out / "1-6.png"))
    assert not np.array_equal(read(out / "1-6.png"), read(out / "1-1.png"))


def test_mix_styles_beyond_the_network_is_a_clear_error(tmp_path, nets):
    err = failed(run("mix", "--network", nets["sg2"], "--rows", "0", "--cols", "1", "--outdir", "m",
                     "--styles", "0-12", cwd=tmp_path))
    assert "layers 0-7" in err


# --- info and convert ------------------------------------------------------------------------------

def test_info_prints_family_and_groups(tmp_path, nets):
    out = ok(run("info", "--network", nets["sg2"], cwd=tmp_path))
    assert "StyleGAN2" in out and "32 px" in out and "num_ws         8" in out
    assert "coarse  ws 0-3" in out and "(4-8 px)" in out and "middle  ws 4-7" in out
    assert "conditional    no" in out
    out = ok(run("info", "--network", nets["sg3"], cwd=tmp_path))
    assert "StyleGAN3-T" in out and "fine    ws 11-15" in out


@pytest.mark.parametrize("key", ["sg3_pkl", "sg2_pkl", "sg3"])
def test_convert_round_trips(tmp_path, nets, key):
    src = nets[key]
    ok(run("convert", "--network", src, "--output", "converted.safetensors", cwd=tmp_path))
    before, after = load_network(src)["G_ema"], load_network(tmp_path / "converted.safetensors")["G_ema"]
    assert type(before) is type(after) and before.init_kwargs == after.init_kwargs
    a, b = before.state_dict(), after.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_convert_keeps_named_networks_in_half_precision_with_run_facts(tmp_path, nets):
    (tmp_path / "run.json").write_text(json.dumps({"dataset": "toyfaces", "machine": "2-core CPU"}))
    ok(run("convert", "--network", nets["sg2_pkl"], "--output", "small.safetensors", "--keep", "G_ema",
           "--half", "--training-info", "run.json", cwd=tmp_path))
    nets_after, meta = load_checkpoint(tmp_path / "small.safetensors")
    assert list(nets_after) == ["G_ema"] and meta["storage"] == "float16"
    assert meta["training"]["dataset"] == "toyfaces" and meta["training"]["machine"] == "2-core CPU"
    before = load_network(nets["sg2_pkl"])["G_ema"].state_dict()
    after = nets_after["G_ema"].state_dict()
    assert all(torch.allclose(before[k], after[k], rtol=1e-3, atol=1e-4) for k in before)
    err = failed(run("convert", "--network", nets["sg2_pkl"], "--output", "x.safetensors", "--keep", "G_ema",
                     "--training-info", "missing.json", cwd=tmp_path))
    assert "missing.json" in err and not (tmp_path / "x.safetensors").exists()


def test_convert_to_rosinality(tmp_path, nets):
    ok(run("convert", "--network", nets["sg2_pkl"], "--format", "rosinality", cwd=tmp_path))
    out = nets["sg2_pkl"].with_suffix(".pt")                      # default name: beside the input
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    G = load_network(nets["sg2"])["G_ema"]
    assert torch.equal(ckpt["latent_avg"], G.mapping.w_avg)
    assert torch.equal(ckpt["g_ema"]["style.1.weight"], G.mapping.fc0.weight)
    err = failed(run("convert", "--network", nets["sg3"], "--format", "rosinality", "--output", "x.pt",
                     cwd=tmp_path))
    assert "StyleGAN3" in err and not (tmp_path / "x.pt").exists()


# --- errors ------------------------------------------------------------------------------------------

def test_missing_network_is_a_clear_error(tmp_path):
    err = failed(run("generate", "--network", "nowhere.pkl", "--seeds", "0", cwd=tmp_path))
    assert "nowhere.pkl" in err and "does not exist" in err


def test_corrupt_network_is_a_clear_error(tmp_path):
    (tmp_path / "broken.pkl").write_bytes(b"\x80\x04this is not a network" * 10)
    err = failed(run("info", "--network", "broken.pkl", cwd=tmp_path))
    assert "broken.pkl" in err and err.startswith("error:")


def test_no_network_and_none_bundled(tmp_path):
    err = failed(run("info", cwd=tmp_path))
    assert "--network" in err and "No network is bundled" in err


def test_default_network_comes_from_models(tmp_path, nets, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("STYLEDECK_MODELS", str(models))
    with pytest.raises(StyleDeckError, match="No network is bundled"):
        default_network()
    for name in ("b.safetensors", "a.pkl"):
        (models / name).write_bytes(nets["sg3"].read_bytes())
    assert default_network() == models / "a.pkl"                 # first by name
    (models / "registry.json").write_text(json.dumps({"default": "b.safetensors"}))
    assert default_network() == models / "b.safetensors"
    registry = {"default": "b.safetensors", "models": [{"file": "gone.pkl"}, {"file": "a.pkl"}, {"file": "b.safetensors"}]}
    (models / "registry.json").write_text(json.dumps(registry))
    assert bundled_networks() == [models / "b.safetensors", models / "a.pkl"]   # default first, no missing file twice
    env = {**os.environ, "STYLEDECK_MODELS": str(models)}
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "info"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert "b.safetensors" in ok(result) and "StyleGAN3-T" in result.stdout


def test_bad_seeds_are_a_usage_error(tmp_path):
    err = failed(run("generate", "--seeds", "3-1", cwd=tmp_path), code=2)
    assert "backwards" in err


def test_an_interrupt_inside_a_constructor_leaves_no_finalizer_report(monkeypatch, capsys):
    """Ctrl+C inside a library's __init__ (seen in imageio's PNG writer) must not print a traceback."""
    import engine.cli as cli

    class HalfBuilt:
        def __init__(self):
            raise KeyboardInterrupt            # interrupted before the attribute below exists
            self.pending = []                  # never reached, as in the real case

        def __del__(self):
            len(self.pending)                  # AttributeError when finalised

    def interrupted_command(args):
        HalfBuilt()

    reports = []
    monkeypatch.setattr(sys, "unraisablehook", reports.append)
    monkeypatch.setattr(cli, "cmd_info", interrupted_command)
    assert cli.main(["info"]) == 130
    assert reports == [] and sys.unraisablehook == reports.append      # silenced, then restored
    assert capsys.readouterr().err == "stopped\n"
