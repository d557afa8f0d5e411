"""The training loop on tiny networks and tiny folders: snapshots, exact resume (also after kill -9),
a two-process gloo run under torchrun, pause/stop, a fresh D, and a run that learns."""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from engine.checkpoint import read_checkpoint_metadata, save_checkpoint
from engine.errors import Cancelled, StyleDeckError
from engine.images import save_png
from engine.loader import load_network
from engine.networks import discriminator, stylegan2, stylegan3
from nvidia_pickle import write_nvidia_pickle
from engine.training.loop import (TrainOptions, ema_beta, plain_convolutions_while_training, scratch_networks,
                                  state_hash, train, update_ema)
from engine.training.snapshot import find_snapshots, latest_snapshot, read_state, snapshot_paths

ROOT = Path(__file__).resolve().parents[2]


def make_squares(folder: Path, n: int = 12, size: int = 20, seed: int = 0, corrupt: bool = False) -> Path:
    """n images: a reddish square (colour jittered a little) at a random place on a dark blue background."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = np.empty([size, size, 3], np.uint8)
        image[:] = (30, 40, 150)
        side = int(rng.integers(size // 3, size // 2 + 1))
        x, y = rng.integers(0, size - side, 2)
        image[y:y + side, x:x + side] = np.clip(np.array([210, 70, 40]) + rng.integers(-15, 16, 3), 0, 255)
        save_png(folder / f"img{i:03d}.png", image)
    if corrupt:
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


def tiny_options(outdir: Path, data: Path, **overrides) -> TrainOptions:
    """A 16 px StyleGAN2 with 16-32 channels: a step takes a fraction of a second on one core."""
    base = dict(outdir=str(outdir), data=str(data), cfg="stylegan2", resolution=16, batch=4, kimg=0.016,
                snap=0.008, tick=0.008, cbase=256, cmax=32, z_dim=16, w_dim=16, map=2, mbstd_group=2,
                num_fp16_res=0, d_reg_interval=4, g_reg_interval=2, aug="ada", ada_kimg=1, ada_interval=2,
                grid_size=(2, 2), cache=False, device="cpu", seed=3)
    base.update(overrides)
    return TrainOptions(**base)


def file_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def assert_same_files(a: Path, b: Path) -> None:
    ta, tb = file_tensors(a), file_tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def squares(tmp_path_factory) -> Path:
    return make_squares(tmp_path_factory.mktemp("data") / "squares", corrupt=True)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, squares):
    """An uninterrupted run of 8 steps (batch 4) with snapshots every 4 steps: at 16 and 32 images."""
    outdir = tmp_path_factory.mktemp("reference")
    events = []
    result = train(tiny_options(outdir, squares, kimg=0.032, snap=0.016), progress=events.append)
    return outdir, result, events


# ---------------------------------------------------------------------------------------------
# Pure pieces

def test_ema_beta_follows_half_life_and_rampup():
    # without ramp-up: after ema_kimg thousand images the old weights count half
    beta = ema_beta(batch=32, ema_kimg=10, ema_rampup=None, cur_nimg=10 ** 6)
    assert beta ** (10_000 / 32) == pytest.approx(0.5)
    # ramp-up: early in training the half-life is cur_nimg * rampup images, not ema_kimg
    early = ema_beta(batch=32, ema_kimg=10, ema_rampup=0.05, cur_nimg=3200)
    assert early == pytest.approx(0.5 ** (32 / 160))
    assert ema_beta(batch=32, ema_kimg=10, ema_rampup=0.05, cur_nimg=0) == 0.0   # G_ema <- G at the start


def test_update_ema_mixes_parameters_and_copies_buffers():
    G = torch.nn.BatchNorm1d(3)   # any module with parameters and float buffers
    G_ema = torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        G.weight.fill_(2.0)
        G_ema.weight.fill_(1.0)
        G.running_mean.fill_(5.0)
    update_ema(G_ema, G, beta=0.75)
    assert torch.allclose(G_ema.weight, torch.full([3], 0.75 * 1 + 0.25 * 2))
    assert torch.equal(G_ema.running_mean, G.running_mean)


def test_scratch_networks_follow_nvidia_train_py():
    opts = TrainOptions(outdir="o", data="d", batch=8, cbase=512, cmax=32, z_dim=8, w_dim=8)
    G, D = scratch_networks("stylegan2", 32, 0, 3, opts, batch_gpu=8)
    assert G.init_kwargs["mapping_kwargs"]["num_layers"] == 2          # small: stylegan2-ada's 'auto' choice
    assert G.init_kwargs["channel_base"] == 512 and G.init_kwargs["num_fp16_res"] == 4
    assert G.init_kwargs["conv_clamp"] == 256 and D.init_kwargs["conv_clamp"] == 256
    assert D.init_kwargs["architecture"] == "resnet" and D.init_kwargs["epilogue_kwargs"]["mbstd_group_size"] == 4
    G, _ = scratch_networks("stylegan2", 512, 0, 3, dataclasses.replace(opts, cmax=8), batch_gpu=2)
    assert G.init_kwargs["mapping_kwargs"]["num_layers"] == 8          # the paper's configs at 512 px and up
    G, D = scratch_networks("stylegan3-r", 16, 0, 3, opts, batch_gpu=2)
    kw = G.init_kwargs
    assert kw["conv_kernel"] == 1 and kw["use_radial_filters"] and kw["channel_base"] == 1024 and kw["channel_max"] == 64
    assert kw["magnitude_ema_beta"] == pytest.approx(0.5 ** (8 / 20_000))
    assert D.init_kwargs["channel_base"] == 512 and D.init_kwargs["epilogue_kwargs"]["mbstd_group_size"] == 2
    with pytest.raises(StyleDeckError, match="power of two"):
        scratch_networks("stylegan2", 48, 0, 3, opts, batch_gpu=8)


def test_stylegan2_trains_with_plain_convolutions_and_renders_fused():
    torch.manual_seed(0)
    G = stylegan2.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, channel_base=128,
                            channel_max=16, mapping_kwargs=dict(num_layers=1))
    plain_convolutions_while_training(G)
    ws = G.mapping(torch.randn([3, 8]), None)
    G.train()
    trained = G.synthesis(ws, noise_mode="const")
    assert torch.equal(trained, G.synthesis(ws, noise_mode="const", fused_modconv=False))
    fused = G.synthesis(ws, noise_mode="const", fused_modconv=True)
    assert not torch.equal(trained, fused)                  # a different computation ...
    torch.testing.assert_close(trained, fused, rtol=1e-4, atol=1e-5)   # ... of the same function
    G.eval()
    assert torch.equal(G.synthesis(ws, noise_mode="const"), fused)


# ---------------------------------------------------------------------------------------------
# A run, its snapshots, exact resume

def test_run_writes_snapshots_that_load_and_render(reference_run):
    outdir, result, events = reference_run
    names = sorted(p.name for p in outdir.iterdir())
    assert names == ["fakes000000016.png", "fakes000000032.png",
                     "network-snapshot-000000016.safetensors", "network-snapshot-000000016.state.safetensors",
                     "network-snapshot-000000032.safetensors", "network-snapshot-000000032.state.safetensors",
                     "reals.png"]  # and no temporary file left behind
    assert result.snapshot == outdir / "network-snapshot-000000032.safetensors"
    assert result.cur_nimg == 32 and result.kimg == pytest.approx(0.032)
    # the corrupt file was skipped, reported, and training went on
    assert result.dataset_report.used == 12
    assert [Path(p).name for p, _ in result.dataset_report.skipped] == ["broken.png"]
    assert any("broken.png" in note for note in result.notes)

    nets = load_network(result.snapshot)
    assert set(nets) == {"G_ema", "G", "D"}
    img = nets["G_ema"](torch.randn([2, 16]), None, noise_mode="const")
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
    assert torch.isfinite(nets["D"](img, None)).all()
    assert state_hash(nets) == result.state_hash

    meta = read_checkpoint_metadata(result.snapshot)["training"]
    assert meta["cur_nimg"] == 32 and meta["options"]["batch"] == 4 and meta["options"]["aug"] == "ada"
    tensors, info = read_state(snapshot_paths(outdir, 32).state)
    assert info["cur_nimg"] == 32 and info["batch_idx"] == 8
    assert {"opt.G.0.exp_avg", "opt.D.0.exp_avg_sq", "aug.pipe.p", "aug.ada.p", "loss.pl_mean"} <= set(tensors)

    metrics = [e.metrics for e in events if e.metrics]
    assert len(metrics) == 4   # a tick every 8 images
    assert {"kimg", "images_per_s", "eta_s", "loss/G", "loss/D", "aug_p", "gpu_mem_gb"} <= set(metrics[-1])
    assert metrics[-1]["kimg"] == pytest.approx(0.032) and metrics[-1]["eta_s"] == 0
    assert all(np.isfinite(m["loss/G"]) and np.isfinite(m["loss/D"]) for m in metrics)
    previews = [e.preview for e in events if e.preview is not None]
    assert len(previews) == 2 and previews[-1].shape == (32, 32, 3) and previews[-1].dtype == np.uint8
    assert all(e.total == 32 and 0 <= e.step <= 32 for e in events)


def test_resume_from_snapshot_is_bit_identical(tmp_path, reference_run, squares):
    outdir, result, _ = reference_run
    first = snapshot_paths(outdir, 16)
    for path in (first.network, first.state):
        shutil.copy(path, tmp_path / path.name)
    resumed = train(tiny_options(tmp_path, squares, kimg=0.032, snap=0.016, resume="latest"))
    assert resumed.cur_nimg == 32
    assert resumed.state_hash == result.state_hash
    assert_same_files(resumed.snapshot, result.snapshot)
    assert_same_files(snapshot_paths(tmp_path, 32).state, snapshot_paths(outdir, 32).state)


_CHILD = """
import sys, time
from engine.training.loop import TrainOptions, train
opts = TrainOptions(**eval(sys.argv[1]))
train(opts, progress=lambda event: time.sleep(0.05))   # slow the child so the kill lands mid-run
"""


def test_resume_after_kill_minus_9_matches_the_uninterrupted_run(tmp_path, reference_run, squares):
    outdir, result, _ = reference_run
    child_opts = dataclasses.asdict(tiny_options(tmp_path, squares, kimg=5, snap=0.016))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, repr(child_opts)], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        while latest_snapshot(tmp_path) is None:
            assert proc.poll() is None, "the training child ended before its first snapshot"
            assert time.monotonic() < deadline, "no snapshot within 120 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    snaps = find_snapshots(tmp_path)
    for snap in snaps:   # every complete snapshot on disk loads
        assert set(load_network(snap.network)) == {"G_ema", "G", "D"}
    if snaps[-1].cur_nimg > 32:
        pytest.skip("the child ran past 32 images before the kill (machine too fast for this timing)")
    resumed = train(tiny_options(tmp_path, squares, kimg=0.032, snap=0.016, resume=str(tmp_path)))
    assert resumed.state_hash == result.state_hash
    assert_same_files(snapshot_paths(tmp_path, 32).network, result.snapshot)


def test_latest_snapshot_skips_incomplete_ones(tmp_path, reference_run):
    outdir, _, _ = reference_run
    for path in outdir.iterdir():
        shutil.copy(path, tmp_path / path.name)
    assert latest_snapshot(tmp_path).cur_nimg == 32
    newest = snapshot_paths(tmp_path, 32)
    newest.state.write_bytes(newest.state.read_bytes()[:100])       # a state file cut short
    assert latest_snapshot(tmp_path).cur_nimg == 16
    newest.state.unlink()                                             # a network file without its state
    (tmp_path / ".network-snapshot-000000048.abc.safetensors").write_bytes(b"half a temporary file")
    assert [s.cur_nimg for s in find_snapshots(tmp_path)] == [16]
    shutil.copy(snapshot_paths(tmp_path, 16).state, newest.state)     # a state of another snapshot
    assert latest_snapshot(tmp_path).cur_nimg == 16


def test_resume_at_the_end_trains_no_further(tmp_path, reference_run, squares):
    outdir, result, _ = reference_run
    again = train(tiny_options(outdir, squares, kimg=0.032, snap=0.016, resume=str(result.snapshot)))
    assert again.cur_nimg == 32 and again.state_hash == result.state_hash and again.snapshot == result.snapshot


# ---------------------------------------------------------------------------------------------
# Starting points, pause and stop

def test_fine_tune_a_stylegan3_file_without_discriminator(tmp_path, squares):
    torch.manual_seed(0)
    G = stylegan3.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, channel_base=256,
                            channel_max=16, num_layers=4, num_critical=1, num_fp16_res=0,
                            mapping_kwargs=dict(num_layers=2))
    base = save_checkpoint(tmp_path / "base.safetensors", {"G_ema": G})
    result = train(tiny_options(tmp_path / "run", squares, resume=str(base), kimg=0.008, snap=1, aug="noaug"))
    assert any("no discriminator" in note for note in result.notes)
    nets = load_network(result.snapshot)
    assert nets["D"].img_resolution == 16 and nets["D"].b16.architecture == "resnet"   # NVIDIA's D for all
    assert type(nets["G"]) is stylegan3.Generator
    changed = [k for k, v in nets["G"].state_dict().items() if not torch.equal(v, G.state_dict()[k])]
    assert changed, "fine-tuning changed nothing"
    assert read_checkpoint_metadata(result.snapshot)["origin"]["source"] == "base.safetensors"
    # resuming the run keeps the network it started from as the origin
    again = train(tiny_options(tmp_path / "run", squares, resume="latest", kimg=0.016, snap=1, aug="noaug"))
    assert again.cur_nimg == 16 and not any("no discriminator" in note for note in again.notes)
    assert read_checkpoint_metadata(again.snapshot)["origin"]["source"] == "base.safetensors"


def test_fine_tune_an_nvidia_pickle_with_g_d_and_g_ema(tmp_path, squares):
    torch.manual_seed(1)
    G = stylegan2.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, channel_base=256,
                            channel_max=32, num_fp16_res=0, mapping_kwargs=dict(num_layers=2))
    D = discriminator.Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=32,
                                    num_fp16_res=0, epilogue_kwargs=dict(mbstd_group_size=2))
    G_ema = stylegan2.Generator(**G.init_kwargs)
    pkl = write_nvidia_pickle(tmp_path / "faces.pkl", {"G": G, "D": D, "G_ema": G_ema})
    result = train(tiny_options(tmp_path / "run", squares, resume=str(pkl), kimg=0.004, snap=1))   # one step
    assert not [note for note in result.notes if "faces.pkl" in note]   # G, D and G_ema all came from the file
    nets = load_network(result.snapshot)
    for key, before in (("G", G), ("D", D)):   # both trained, from the pickle's weights
        after = nets[key].state_dict()
        assert after.keys() == before.state_dict().keys()
        assert any(not torch.equal(v, after[k]) for k, v in before.state_dict().items())
    # EMA ramp-up: beta is 0 at cur_nimg 0, so after the first step G_ema is G
    assert all(torch.equal(v, nets["G"].state_dict()[k]) for k, v in nets["G_ema"].state_dict().items())
    assert read_checkpoint_metadata(result.snapshot)["origin"]["source"] == "faces.pkl"


def test_pause_holds_the_loop_and_stop_keeps_a_snapshot(tmp_path, squares):
    pause, stop = threading.Event(), threading.Event()
    from engine.jobs import CancelToken
    events, outcome = [], {}

    def watch(event):
        events.append(event)
        if event.step >= 8 and not pause.is_set() and not outcome.get("paused_once"):
            outcome["paused_once"] = True
            pause.set()                       # pause after the second step

    def run():
        try:
            outcome["result"] = train(tiny_options(tmp_path, squares, kimg=10, snap=10, aug="noaug"),
                                      progress=watch, cancel=CancelToken(stop), pause=pause)
        except Cancelled as exc:
            outcome["cancelled"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while not any(e.message == "paused" for e in events):
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    held = events[-1].step
    time.sleep(0.5)
    assert events[-1].step == held and thread.is_alive()   # nothing happens while paused
    stop.set()                                               # stop works while paused
    thread.join(30)
    assert not thread.is_alive()
    exc = outcome["cancelled"]
    assert exc.snapshot == snapshot_paths(tmp_path, held).network
    assert latest_snapshot(tmp_path).cur_nimg == held
    assert set(load_network(exc.snapshot)) == {"G_ema", "G", "D"}


def test_scratch_without_resolution_is_a_clear_error(tmp_path, squares):
    with pytest.raises(StyleDeckError, match="resolution"):
        train(tiny_options(tmp_path, squares, resolution=None))


# ---------------------------------------------------------------------------------------------
# Two processes under torchrun

_RANK_SCRIPT = """
import sys
from pathlib import Path
from engine.training.loop import TrainOptions, train
opts = TrainOptions(**eval(sys.argv[1]))
result = train(opts)
Path(opts.outdir, f"hash-rank{result.rank}.txt").write_text(f"{result.world_size} {result.state_hash}")
"""


def test_two_process_gloo_run_keeps_replicas_identical(tmp_path, squares):
    opts = dataclasses.asdict(tiny_options(tmp_path / "run", squares, kimg=0.024, snap=0.016))
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), repr(opts)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    hashes = [(tmp_path / "run" / f"hash-rank{r}.txt").read_text().split() for r in (0, 1)]
    assert hashes[0][0] == hashes[1][0] == "2"
    assert hashes[0][1] == hashes[1][1]
    snaps = find_snapshots(tmp_path / "run")
    assert [s.cur_nimg for s in snaps] == [16, 24]   # one writer: rank 0
    assert read_checkpoint_metadata(snaps[-1].network)["training"]["world_size"] == 2
    assert state_hash(load_network(snaps[-1].network)) == hashes[0][1]


# ---------------------------------------------------------------------------------------------
# A run that learns

def mean_colour(images: torch.Tensor) -> np.ndarray:
    """Mean RGB in [0, 255] of img [N, 3, H, W] in [-1, 1]."""
    return ((images.clamp(-1, 1) + 1) * 127.5).mean(dim=(0, 2, 3)).numpy()


def test_a_run_from_scratch_moves_the_colours_toward_the_data(tmp_path):
    data = make_squares(tmp_path / "data", n=32, size=16, seed=1)
    reals = np.stack([np.asarray(__import__("cv2").imread(str(p))[:, :, ::-1]) for p in sorted(data.iterdir())])
    target = reals.reshape(-1, 3).mean(axis=0)                                     # RGB in [0, 255]
    opts = tiny_options(tmp_path / "run", data, kimg=1.6, batch=8, snap=0.8, tick=0.4, aug="noaug",
                        glr=0.005, dlr=0.005, mbstd_group=4, seed=0)
    z = torch.randn([64, 16], generator=torch.Generator().manual_seed(7))
    result = train(dataclasses.replace(opts, kimg=0.008))      # one step: the network as it starts
    with torch.no_grad():
        before = np.linalg.norm(mean_colour(load_network(result.snapshot)["G_ema"](z, None)) - target)
    result = train(dataclasses.replace(opts, resume="latest"))
    with torch.no_grad():
        after = np.linalg.norm(mean_colour(load_network(result.snapshot)["G_ema"](z, None)) - target)
    print(f"mean colour distance to the data: {before:.1f} -> {after:.1f} (data mean {target.round(1)})")
    assert after < before / 3
