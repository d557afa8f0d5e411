"""Pivotal tuning on a tiny StyleGAN2 (16 px): the low-rank delta trained directly (the compact form
users get) and its report against full tuning, the original left untouched, the file round trip, the
base check and the file's size against the network's."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from engine.datasets.toyfaces import face_rng, render_face, sample_params
from engine.errors import Cancelled, CorruptFileError, StyleDeckError
from engine.jobs import CancelToken
from engine.networks import stylegan2
from engine.pti import (PTIOptions, apply_delta, delta_report, load_delta, network_sha256, pivotal_tune,
                        pivotal_tune_lowrank, psnr, render_ws, save_delta, tune_projection)

from reference_data import perturbed

STEPS = 25    # enough for a clear gain on a 16 px network, short enough for a busy CPU
LR = 1e-2     # a 16 px network in 25 steps; the low-rank factors start at zero and need the larger step
RANK = 4


def _sg2(resolution: int = 16, channel_max: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    return stylegan2.Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=resolution, img_channels=3,
                               channel_base=resolution * channel_max, channel_max=channel_max,
                               num_fp16_res=0).eval()


def _snapshot(G: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in G.state_dict().items()}


def _same(G: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = G.state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k], state[k]) for k in own)


def _network_bytes(G: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in G.state_dict().values())


@pytest.fixture(scope="module")
def compared():
    """(G, its state before, pivot ws, target, TunedPhoto with compare=True, progress events): run once."""
    G = _sg2()
    before = _snapshot(G)
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, 32, generator=torch.Generator().manual_seed(3)), None)  # [1, 8, 32]
    target = render_face(sample_params(face_rng(0, 0)), 16)  # a procedural face: not something G can draw
    events = []
    photo = tune_projection(G, ws, target, PTIOptions(steps=STEPS, lr=LR, rank=RANK, preview_every=10, compare=True),
                            progress=events.append)
    return G, before, ws, target, photo, events


def test_compact_form_beats_the_untuned_network_and_is_reported_against_full_tuning(compared):
    G, before, ws, target, photo, events = compared
    report = photo.report
    untuned = psnr(render_ws(G, ws), target)
    # measured: untuned 7.36 dB, full tuning 20.40 dB, compact (rank 4) 19.47 dB, 23.1 dB to the full image
    assert report.psnr_base == untuned
    assert report.psnr_compact > untuned + 8, report.summary()
    assert report.psnr_compact >= report.psnr_full - 3, report.summary()
    assert report.psnr_full == psnr(photo.full.image, target) > untuned + 8
    assert report.psnr_compact_vs_full == psnr(photo.image, photo.full.image) >= 18
    # the compact image is what base + the stored delta renders, and the tuned copy is exactly that network
    assert report.psnr_compact == psnr(photo.image, target)
    assert np.array_equal(render_ws(apply_delta(G, photo.delta), ws), photo.image)
    assert _same(photo.tuning.G_tuned, apply_delta(G, photo.delta).state_dict())
    text = report.summary()
    assert (f"rank {RANK}: PSNR untuned {untuned:.2f} dB, full tuning {report.psnr_full:.2f} dB, "
            f"compact {report.psnr_compact:.2f} dB") in text and "MiB" in text
    assert _same(G, before)                                              # bit for bit
    # Progress counts both runs: the low-rank one, then the full one.
    assert [e.step for e in events] == list(range(1, 2 * STEPS + 1)) and {e.total for e in events} == {2 * STEPS}
    assert [e.step for e in events if e.preview is not None] == [10, 20, 25, 35, 45, 50]
    assert events[0].message == "pivotal tuning" and events[-1].message == "full tuning, to compare"
    assert events[STEPS - 1].metrics["loss"] == photo.tuning.losses[-1]
    assert events[-1].metrics["loss"] == photo.full.losses[-1]


def test_without_compare_full_tuning_is_not_run_and_the_delta_is_the_same(compared):
    G, before, ws, target, photo, _ = compared
    events = []
    alone = tune_projection(G, ws, target, PTIOptions(steps=STEPS, lr=LR, rank=RANK, preview_every=10),
                            progress=events.append)
    assert alone.full is None and alone.report.psnr_full is None and alone.report.psnr_compact_vs_full is None
    assert [e.step for e in events] == list(range(1, STEPS + 1)) and events[-1].total == STEPS
    # the stored form does not depend on whether full tuning ran beside it
    a, b = alone.delta.tensors(), photo.delta.tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert alone.report.psnr_compact == photo.report.psnr_compact > alone.report.psnr_base
    text = alone.report.summary()
    assert (f"PSNR untuned {alone.report.psnr_base:.2f} dB, compact {alone.report.psnr_compact:.2f} dB, "
            "full tuning not run;") in text
    assert _same(G, before)


def test_full_tuning_changes_only_the_synthesis_of_a_copy(compared):
    G, before, ws, target, photo, _ = compared
    full = photo.full
    assert len(full.losses) == STEPS and full.losses[-1] < 0.5 * full.losses[0]
    assert full.G_tuned is not G and not _same(full.G_tuned, before)
    assert not any(p.requires_grad for p in full.G_tuned.parameters())
    # Only the synthesis changes: a fixed pivot never reaches the mapping.
    tuned_state = full.G_tuned.state_dict()
    assert all(torch.equal(tuned_state[k], v) for k, v in before.items() if not k.startswith("synthesis."))
    assert np.array_equal(render_ws(full.G_tuned, ws), full.image)


def test_lowrank_tuning_stores_factors_of_the_synthesis_only(compared):
    G, _, _, _, photo, _ = compared
    delta = photo.delta
    assert delta.rank == RANK and delta.base_sha256 == network_sha256(G)
    conv = delta.entries["synthesis.b8.conv0.weight"]
    assert conv.kind == "lowrank" and conv.U.shape == (32, RANK) and conv.V.shape == (32 * 9, RANK)
    assert delta.entries["synthesis.b8.conv0.bias"].kind == "dense"
    assert all(k.startswith("synthesis.") for k in delta.entries)
    assert delta.info == {"pti": "lowrank", "steps": STEPS, "lr": LR, "loss": "pixel"}
    # rank RANK per weight: what was trained has no more than that
    assert torch.linalg.matrix_rank(conv.tensor().reshape(32, -1)) <= RANK
    # small relative to the network even at 16 px; see below for a size where rank 8 is meaningful
    assert delta.nbytes() < _network_bytes(G) / 4 and photo.report.delta_bytes == delta.nbytes()
    assert photo.report.network_bytes == _network_bytes(G)


def test_cancel_stops_within_one_step_and_keeps_the_original():
    G = _sg2()
    before = _snapshot(G)
    ws = G.mapping.w_avg[None, None].repeat(1, G.num_ws, 1)
    target = render_face(sample_params(face_rng(0, 1)), 16)
    for tune in (pivotal_tune, pivotal_tune_lowrank, tune_projection):
        token, steps = CancelToken(), []

        def progress(event):
            steps.append(event.step)
            if event.step == 3:
                token.cancel()

        with pytest.raises(Cancelled):
            tune(G, ws, target, PTIOptions(steps=50), progress=progress, cancel=token)
        assert steps == [1, 2, 3], tune.__name__
    assert _same(G, before)


def test_lpips_loss_is_injected_and_bad_inputs_are_refused():
    G = _sg2()
    ws = G.mapping.w_avg[None, None].repeat(1, G.num_ws, 1)
    target = render_face(sample_params(face_rng(0, 2)), 16)
    with pytest.raises(StyleDeckError, match="LPIPS function"):
        tune_projection(G, ws, target, PTIOptions(steps=1, loss="lpips"))
    calls = []

    def l1(img, tgt):  # stands in for the projector's LPIPS module: any differentiable (img, target) -> scalar
        calls.append(img.shape)
        return (img - tgt).abs().mean()

    photo = tune_projection(G, ws, target, PTIOptions(steps=2, loss="lpips", compare=True), loss_fn=l1)
    assert calls == [(1, 3, 16, 16)] * 4 and len(photo.tuning.losses) == len(photo.full.losses) == 2
    with pytest.raises(StyleDeckError, match=r"\[16, 16, 3\]"):
        tune_projection(G, ws, target[:8], PTIOptions(steps=1))
    with pytest.raises(StyleDeckError, match=r"\[1, 6, 32\]"):
        tune_projection(G, ws[:, :4], target, PTIOptions(steps=1))
    for bad, message in (({"steps": 0}, "at least one step"), ({"rank": 0}, "rank must be at least 1"),
                         ({"lr": 0}, "learning rate must be positive")):
        with pytest.raises(StyleDeckError, match=message):
            PTIOptions(**bad)


def test_delta_round_trips_through_a_safetensors_file(compared, tmp_path):
    G, _, ws, _, photo, _ = compared
    delta = photo.delta
    path = save_delta(tmp_path / "photo.safetensors", delta)
    assert path.stat().st_size == delta.nbytes() and not list(tmp_path.glob(".photo*"))  # no temp left over
    with safe_open(str(path), framework="pt") as f:  # what a user would read it with
        meta = json.loads(f.metadata()["styledeck"])
        assert f.get_tensor("synthesis.b8.conv0.weight.U").dtype == torch.float16
    assert meta["format"] == "styledeck-weight-delta" and meta["base_sha256"] == network_sha256(G)
    assert meta["entries"]["synthesis.b8.conv0.weight"] == {"shape": [32, 32, 3, 3], "kind": "lowrank"}
    assert meta["entries"]["synthesis.b8.conv0.bias"]["kind"] == "dense"
    back = load_delta(path)
    assert (back.base_sha256, back.rank, back.info) == (delta.base_sha256, RANK, delta.info)
    assert torch.equal(back.pivot_ws, ws)
    stored, read = delta.tensors(), back.tensors()
    assert stored.keys() == read.keys() and all(torch.equal(stored[k], read[k]) for k in stored)
    # What was trained is what the file holds: the file on the base gives the tuned image exactly.
    assert np.array_equal(render_ws(apply_delta(G, back), ws), photo.image)
    assert delta_report(G, back, ws, compared[3]).psnr_compact == photo.report.psnr_compact


def test_a_delta_refuses_another_base(compared):
    G, _, _, _, photo, _ = compared
    other = perturbed(copy.deepcopy(G), seed=5)
    assert network_sha256(copy.deepcopy(G)) == photo.delta.base_sha256 != network_sha256(other)
    with pytest.raises(StyleDeckError, match="another network"):
        apply_delta(other, photo.delta)


def test_compact_file_is_much_smaller_than_the_network(tmp_path):
    # 64 px, 256 channels: 3x3 convs are [256, 2304] matrices, where rank 8 is meaningful. The file's size
    # does not depend on how long the factors were trained, so one step will do.
    G = _sg2(resolution=64, channel_max=256)
    ws = G.mapping.w_avg[None, None].repeat(1, G.num_ws, 1)
    target = render_face(sample_params(face_rng(0, 3)), 64)
    _, delta = pivotal_tune_lowrank(G, ws, target, PTIOptions(steps=1, rank=8))
    size = save_delta(tmp_path / "d.safetensors", delta).stat().st_size
    network_bytes = _network_bytes(G)
    # measured: 20.8 MiB network (G, float32), 0.45 MiB delta file: 46x smaller
    assert network_bytes > 8 * 2**20 and size < network_bytes / 40, (size, network_bytes)


def test_a_file_that_is_not_a_delta_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptFileError, match="junk.safetensors"):
        load_delta(junk)
    with pytest.raises(StyleDeckError, match="does not exist"):
        load_delta(tmp_path / "missing.safetensors")
