"""Pivotal tuning on a tiny StyleGAN2 (16 px) and the compact low-rank delta: reconstruction gains,
the original left untouched, the file round trip, exactness at full rank, the base check and sizes."""
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
from engine.pti import (PTIOptions, apply_delta, compress_delta, delta_report, load_delta, network_sha256,
                        pivotal_tune, pivotal_tune_lowrank, psnr, render_ws, save_delta)

from reference_data import perturbed

STEPS = 25  # enough for a clear gain on a 16 px network, short enough for a busy CPU


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


@pytest.fixture(scope="module")
def tuned():
    """(G, its state before tuning, pivot ws, target, PTIResult, progress events): tuned once for the module."""
    G = _sg2()
    before = _snapshot(G)
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, 32, generator=torch.Generator().manual_seed(3)), None)  # [1, 8, 32]
    target = render_face(sample_params(face_rng(0, 0)), 16)  # a procedural face: not something G can draw
    events = []
    result = pivotal_tune(G, ws, target, PTIOptions(steps=STEPS, lr=3e-3, preview_every=10), progress=events.append)
    return G, before, ws, target, result, events


def test_tuning_improves_the_reconstruction_and_leaves_the_original_untouched(tuned):
    G, before, ws, target, result, events = tuned
    base_psnr, tuned_psnr = psnr(render_ws(G, ws), target), psnr(result.image, target)
    assert tuned_psnr >= base_psnr + 8, (base_psnr, tuned_psnr)   # measured: 7.4 dB -> 19.0 dB
    assert len(result.losses) == STEPS and result.losses[-1] < 0.5 * result.losses[0]
    assert _same(G, before)                                         # bit for bit
    assert result.G_tuned is not G and not _same(result.G_tuned, before)
    assert not any(p.requires_grad for p in result.G_tuned.parameters())
    # Only the synthesis changes: a fixed pivot never reaches the mapping.
    tuned_state = result.G_tuned.state_dict()
    assert all(torch.equal(tuned_state[k], v) for k, v in before.items() if not k.startswith("synthesis."))
    assert np.array_equal(render_ws(result.G_tuned, ws), result.image)
    assert [e.step for e in events] == list(range(1, STEPS + 1)) and events[-1].total == STEPS
    assert [e.step for e in events if e.preview is not None] == [10, 20, STEPS]
    assert events[-1].preview.shape == (16, 16, 3) and events[-1].metrics["loss"] == result.losses[-1]


def test_cancel_stops_within_one_step_and_keeps_the_original():
    G = _sg2()
    before = _snapshot(G)
    ws = G.mapping.w_avg[None, None].repeat(1, G.num_ws, 1)
    target = render_face(sample_params(face_rng(0, 1)), 16)
    token, steps = CancelToken(), []

    def progress(event):
        steps.append(event.step)
        if event.step == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        pivotal_tune(G, ws, target, PTIOptions(steps=50), progress=progress, cancel=token)
    assert steps == [1, 2, 3]
    assert _same(G, before)


def test_lpips_loss_is_injected_and_bad_inputs_are_refused():
    G = _sg2()
    ws = G.mapping.w_avg[None, None].repeat(1, G.num_ws, 1)
    target = render_face(sample_params(face_rng(0, 2)), 16)
    with pytest.raises(StyleDeckError, match="LPIPS function"):
        pivotal_tune(G, ws, target, PTIOptions(steps=1, loss="lpips"))
    calls = []

    def l1(img, tgt):  # stands in for the projector's LPIPS module: any differentiable (img, target) -> scalar
        calls.append(img.shape)
        return (img - tgt).abs().mean()

    result = pivotal_tune(G, ws, target, PTIOptions(steps=2, loss="lpips"), loss_fn=l1)
    assert calls == [(1, 3, 16, 16)] * 2 and len(result.losses) == 2
    with pytest.raises(StyleDeckError, match=r"\[16, 16, 3\]"):
        pivotal_tune(G, ws, target[:8], PTIOptions(steps=1))
    with pytest.raises(StyleDeckError, match=r"\[1, 6, 32\]"):
        pivotal_tune(G, ws[:, :4], target, PTIOptions(steps=1))


def test_delta_round_trips_through_a_safetensors_file(tuned, tmp_path):
    G, _, ws, _, result, _ = tuned
    delta = compress_delta(G, result.G_tuned, rank=4, pivot_ws=ws, info={"steps": STEPS})
    path = save_delta(tmp_path / "photo.safetensors", delta)
    assert path.stat().st_size == delta.nbytes() and not list(tmp_path.glob(".photo*"))  # no temp left over
    with safe_open(str(path), framework="pt") as f:  # what a user would read it with
        meta = json.loads(f.metadata()["styledeck"])
        assert f.get_tensor("synthesis.b8.conv0.weight.U").dtype == torch.float16
    assert meta["format"] == "styledeck-weight-delta" and meta["base_sha256"] == network_sha256(G)
    assert meta["entries"]["synthesis.b8.conv0.weight"] == {"shape": [32, 32, 3, 3], "kind": "lowrank"}
    assert meta["entries"]["synthesis.b8.conv0.bias"]["kind"] == "dense"
    back = load_delta(path)
    assert (back.base_sha256, back.rank, back.info) == (delta.base_sha256, 4, {"steps": STEPS})
    assert torch.equal(back.pivot_ws, ws)
    assert back.entries.keys() == delta.entries.keys()
    stored, read = delta.tensors(), back.tensors()
    assert stored.keys() == read.keys() and all(torch.equal(stored[k], read[k]) for k in stored)
    assert _same(apply_delta(G, back), apply_delta(G, delta).state_dict())


def test_compact_delta_reproduces_the_tuned_image(tuned):
    G, before, ws, target, result, _ = tuned
    full_image = result.image
    # rank 8 in float16: close to full tuning (measured 31.8 dB to the fully tuned image)
    report = delta_report(G, result.G_tuned, compress_delta(G, result.G_tuned, rank=8), ws, target)
    assert report.psnr_compact_vs_full >= 22, report.summary()
    assert report.psnr_compact >= report.psnr_base + 6 and report.psnr_full == psnr(full_image, target)
    # full rank in float64: the tuned weights bit for bit, so the same image
    exact = apply_delta(G, compress_delta(G, result.G_tuned, rank=None, dtype="float64"))
    assert _same(exact, result.G_tuned.state_dict())
    assert np.array_equal(render_ws(exact, ws), full_image)
    # full rank in float32: within about an ulp of the larger of base and tuned value
    near = apply_delta(G, compress_delta(G, result.G_tuned, rank=None, dtype="float32")).state_dict()
    assert all(torch.allclose(near[k], v, rtol=1e-6, atol=1e-6) for k, v in result.G_tuned.state_dict().items())
    # full rank in float16: only the storage rounding is lost
    half = apply_delta(G, compress_delta(G, result.G_tuned, rank=None))
    assert psnr(render_ws(half, ws), full_image) >= 50
    assert _same(G, before)                                           # apply_delta copies


def test_lowrank_tuning_trains_the_stored_factors(tuned, tmp_path):
    G, before, ws, target, full, _ = tuned
    result, delta = pivotal_tune_lowrank(G, ws, target, PTIOptions(steps=STEPS, lr=1e-2, rank=4))
    base_psnr, lowrank_psnr = psnr(render_ws(G, ws), target), psnr(result.image, target)
    # measured: 7.4 dB -> 19.5 dB at rank 4 (full PTI at lr 3e-3: 19.0 dB)
    assert lowrank_psnr >= base_psnr + 8 and lowrank_psnr >= psnr(full.image, target) - 3, (base_psnr, lowrank_psnr)
    assert _same(G, before)
    assert delta.rank == 4 and delta.entries["synthesis.b8.conv0.weight"].U.shape == (32, 4)
    assert all(not k.startswith("mapping.") for k in delta.entries)
    # What was trained is what the file holds: the file on the base gives the tuned image exactly.
    back = load_delta(save_delta(tmp_path / "lora.safetensors", delta))
    assert np.array_equal(render_ws(apply_delta(G, back), ws), result.image)
    assert delta_report(G, result.G_tuned, back, ws, target).psnr_compact == lowrank_psnr


def test_a_delta_refuses_another_base(tuned):
    G, _, _, _, result, _ = tuned
    delta = compress_delta(G, result.G_tuned, rank=2)
    other = perturbed(copy.deepcopy(G), seed=5)
    assert network_sha256(copy.deepcopy(G)) == delta.base_sha256 != network_sha256(other)
    with pytest.raises(StyleDeckError, match="another network"):
        apply_delta(other, delta)


def test_compact_file_is_much_smaller_than_the_network(tmp_path):
    # 64 px, 256 channels: 3x3 convs are [256, 2304] matrices, where rank 8 is meaningful
    G = _sg2(resolution=64, channel_max=256)
    tuned_G = copy.deepcopy(G)
    with torch.no_grad():  # a dense random change of every synthesis tensor: the worst case for the file
        for p in tuned_G.synthesis.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 1e-3)
    delta = compress_delta(G, tuned_G, rank=8)
    size = save_delta(tmp_path / "d.safetensors", delta).stat().st_size
    network_bytes = sum(t.numel() * t.element_size() for t in G.state_dict().values())
    # measured: 20.8 MiB network (G, float32), 0.45 MiB delta file: 46x smaller
    assert network_bytes > 8 * 2**20 and size < network_bytes / 40, (size, network_bytes)


def test_a_file_that_is_not_a_delta_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptFileError, match="junk.safetensors"):
        load_delta(junk)
    with pytest.raises(StyleDeckError, match="does not exist"):
        load_delta(tmp_path / "missing.safetensors")
