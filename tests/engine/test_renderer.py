"""Renderer on real tiny networks: determinism, mixing by group, truncation, sessions, the StyleGAN3
transform, previews, the mixing grid (against `main.py mix`) and owned image arrays."""
from __future__ import annotations

import dataclasses

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from engine import cli
from engine.checkpoint import save_checkpoint
from engine.edit_state import initial_state, load_session, save_session, set_group_amount, with_source
from engine.errors import DeviceOutOfMemoryError, StyleDeckError
from engine.images import to_uint8
from engine.latents import Source
from engine.networks import stylegan2, stylegan3
from engine.renderer import Renderer, RenderResult, _translate_oom, preview_resolution


def _sg2(resolution: int = 32, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs.setdefault("num_fp16_res", 0)
    G = stylegan2.Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=resolution, img_channels=3,
                            channel_base=512, channel_max=32, **kwargs)
    with torch.no_grad():  # a fresh network has w_avg = 0, which would make psi tests trivial
        G.mapping.w_avg.copy_(torch.randn(G.w_dim, generator=torch.Generator().manual_seed(1)))
        for name, p in G.named_parameters():  # NVIDIA starts noise_strength at 0: noise would do nothing
            if name.endswith("noise_strength"):
                p.fill_(0.3)
    return G.eval()


@pytest.fixture(scope="module")
def sg2() -> Renderer:
    return Renderer({"G_ema": _sg2()})


@pytest.fixture()
def sg3() -> Renderer:
    torch.manual_seed(0)
    G = stylegan3.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                            channel_base=128, channel_max=16, num_fp16_res=0)
    return Renderer(G.eval())


def _mixed(renderer: Renderer, amount: float = 0.0, group: str = "coarse"):
    state = initial_state("tiny.pkl", renderer.num_ws, seeds=(3, 11))
    layers = next(g.layers for g in renderer.groups if g.name == group)
    return set_group_amount(state, 1, layers, amount), layers


# --- what the app asks about the network --------------------------------------------------------

def test_renderer_describes_its_network(sg2, sg3):
    assert (sg2.family, sg2.resolution, sg2.num_ws) == ("stylegan2", 32, 8)
    assert [g.name for g in sg2.groups] == ["coarse", "middle"] and sg2.groups[0].label == "4-8 px"
    assert sg2.G is sg2.cache.G and sg2.device == torch.device("cpu")
    assert (sg3.family, sg3.resolution) == ("stylegan3", 16)
    with pytest.raises(StyleDeckError, match="no generator"):
        Renderer({"D": torch.nn.Linear(1, 1)})


# --- determinism and owned arrays --------------------------------------------------------------

def test_same_state_renders_bit_identical_images_in_fresh_arrays(sg2):
    state, _ = _mixed(sg2, 0.4)
    a, b = sg2.render(state), sg2.render(state)
    assert isinstance(a, RenderResult) and not a.preview and a.render_ms > 0
    assert a.image.shape == (32, 32, 3) and a.image.dtype == np.uint8
    assert a.ws.shape == (8, 32) and a.ws.dtype == np.float32
    assert np.array_equal(a.image, b.image) and np.array_equal(a.ws, b.ws)
    assert not np.shares_memory(a.image, b.image) and not np.shares_memory(a.ws, b.ws)
    kept = a.image.copy()
    b.image[:] = 0                                    # the receiver owns it: nothing else changes
    assert np.array_equal(sg2.render(state).image, kept)
    assert np.array_equal(sg2.compose(state), a.ws)


def test_noise_modes(sg2):
    state, _ = _mixed(sg2)
    random = dataclasses.replace(state, noise_mode="random")
    assert not np.array_equal(sg2.render(random).image, sg2.render(random).image)
    none = dataclasses.replace(state, noise_mode="none")
    assert np.array_equal(sg2.render(none).image, sg2.render(none).image)
    assert not np.array_equal(sg2.render(none).image, sg2.render(state).image)


# --- mixing and truncation ---------------------------------------------------------------------

def test_group_amount_changes_exactly_that_groups_ws_rows_and_the_image(sg2):
    before_state, coarse = _mixed(sg2, 0.0)
    after_state, _ = _mixed(sg2, 0.7)
    before, after = sg2.render(before_state), sg2.render(after_state)
    changed = sorted(int(i) for i in np.flatnonzero((before.ws != after.ws).any(axis=1)))
    assert changed == list(coarse) == [0, 1, 2, 3]
    assert not np.array_equal(before.image, after.image)
    # The coarse rows are the 0.3 / 0.7 blend of the two seeds' w.
    w_base, w_style = sg2.cache.ws(Source.from_seed(3)).numpy(), sg2.cache.ws(Source.from_seed(11)).numpy()
    np.testing.assert_allclose(after.ws[:4], 0.3 * w_base[:4] + 0.7 * w_style[:4], rtol=1e-5, atol=1e-6)


def test_psi_zero_renders_w_avg(sg2):
    state = dataclasses.replace(_mixed(sg2, 0.5)[0], psi=0.0)
    result = sg2.render(state)
    w_avg = sg2.G.mapping.w_avg.numpy()
    assert all(np.array_equal(row, w_avg) for row in result.ws)
    with torch.no_grad():
        img = sg2.G.synthesis(sg2.G.mapping.w_avg.expand(1, sg2.num_ws, -1), noise_mode="const")
    assert np.array_equal(result.image, to_uint8(img)[0])


def test_cutoff_truncates_only_the_first_layers(sg2):
    state = initial_state("tiny.pkl", sg2.num_ws, seeds=(5,))
    plain = sg2.render(state).ws
    cut = sg2.render(dataclasses.replace(state, psi=0.0, cutoff=3)).ws
    assert all(np.array_equal(row, sg2.G.mapping.w_avg.numpy()) for row in cut[:3])
    assert np.array_equal(cut[3:], plain[3:])


def test_a_stored_latent_renders_like_its_seed(sg2):
    state = initial_state("tiny.pkl", sg2.num_ws, seeds=(4,))
    w = sg2.compose(state)                                                       # [num_ws, w_dim]
    latent = with_source(state, Source.from_latent(w[0], "projected"), 0)      # one w, broadcast
    assert np.array_equal(sg2.render(latent).image, sg2.render(state).image)


def test_a_state_for_another_network_is_refused(sg2):
    with pytest.raises(StyleDeckError, match="8"):
        sg2.render(initial_state("other.pkl", 12))


# --- sessions ----------------------------------------------------------------------------------

def test_session_save_then_load_renders_the_same_image(sg2, tmp_path):
    state = dataclasses.replace(_mixed(sg2, 0.35, "middle")[0], psi=0.6, cutoff=5)
    path = save_session(tmp_path / "s.json", state)
    loaded = load_session(path)
    assert loaded == state
    assert np.array_equal(sg2.render(loaded).image, sg2.render(state).image)


# --- StyleGAN3 transform -----------------------------------------------------------------------

def test_stylegan3_transform_changes_the_image_and_zero_restores_it(sg3):
    state = initial_state("sg3.pkl", sg3.num_ws, seeds=(2,))
    plain = sg3.render(state).image
    rotated = sg3.render(dataclasses.replace(state, transform=(30.0, 0.0, 0.0))).image
    moved = sg3.render(dataclasses.replace(state, transform=(0.0, 0.25, 0.0))).image
    assert not np.array_equal(rotated, plain) and not np.array_equal(moved, plain)
    assert np.array_equal(sg3.render(state).image, plain)
    expected = torch.from_numpy(stylegan3.input_transform(0.0, (0.0, 0.0)))
    assert torch.equal(sg3.G.synthesis.input.transform, expected)


def test_stylegan2_ignores_the_transform(sg2):
    state, _ = _mixed(sg2)
    turned = dataclasses.replace(state, transform=(45.0, 0.1, 0.0))
    assert np.array_equal(sg2.render(turned).image, sg2.render(state).image)


# --- previews ----------------------------------------------------------------------------------

def test_preview_resolution_rule():
    assert [preview_resolution(r) for r in (16, 64, 256, 512, 1024, 2048)] == [8, 32, 128, 256, 256, 512]


def test_preview_is_the_same_size_and_exact_when_the_last_block_adds_no_detail():
    renderer = Renderer(_sg2())
    state, _ = _mixed(renderer, 0.5)
    assert not np.array_equal(renderer.render(state, preview=True).image, renderer.render(state).image)
    with torch.no_grad():  # a network whose 32 px block adds nothing: the 16 px preview is all of it
        renderer.G.synthesis.b32.torgb.weight.zero_()
        renderer.G.synthesis.b32.torgb.bias.zero_()
    preview, full = renderer.render(state, preview=True), renderer.render(state)
    assert preview.preview and not full.preview
    assert preview.image.shape == full.image.shape == (32, 32, 3)
    assert np.array_equal(preview.image, full.image) and np.array_equal(preview.ws, full.ws)


def test_preview_is_close_for_a_smooth_network():
    renderer = Renderer(_sg2())
    with torch.no_grad():  # smooth: the finest block adds a tenth of its random detail
        renderer.G.synthesis.b32.torgb.weight.mul_(0.1)
    for seed in range(4):
        state = initial_state("tiny.pkl", renderer.num_ws, seeds=(seed,))
        preview, full = renderer.render(state, preview=True), renderer.render(state)
        other = renderer.render(initial_state("tiny.pkl", renderer.num_ws, seeds=(seed + 100,)))
        error = np.abs(preview.image.astype(int) - full.image.astype(int)).mean()
        assert error < 10, error                                              # of 255; measured 1.6-6.2
        assert error < 0.5 * np.abs(other.image.astype(int) - full.image.astype(int)).mean()


def test_preview_of_networks_without_partial_rgb_is_the_full_image(sg3):
    state = initial_state("sg3.pkl", sg3.num_ws, seeds=(1,))
    assert np.array_equal(sg3.render(state, preview=True).image, sg3.render(state).image)
    orig = Renderer(_sg2(16, architecture="orig"))
    state = initial_state("tiny.pkl", orig.num_ws, seeds=(1,))
    result = orig.render(state, preview=True)
    assert not result.preview and np.array_equal(result.image, orig.render(state).image)


# --- the mixing grid ---------------------------------------------------------------------------

def test_render_grid_equals_main_py_mix(sg2, tmp_path):
    network = save_checkpoint(tmp_path / "tiny.safetensors", {"G_ema": sg2.G})
    assert cli.main(["mix", "--network", str(network), "--device", "cpu", "--rows", "1,2", "--cols", "5-7",
                     "--styles", "coarse", "--trunc", "0.7", "--outdir", str(tmp_path / "out")]) == 0
    expected = iio.imread(tmp_path / "out" / "grid.png")
    coarse = sg2.groups[0].layers
    result = sg2.render_grid([Source.from_seed(1), Source.from_seed(2)], [5, 6, 7], coarse, psi=0.7)
    assert result.image.shape == (3 * 32, 4 * 32, 3)
    assert np.array_equal(result.image, expected)
    assert result.ws.shape == (2, 3, 8, 32)
    assert np.array_equal(result.ws[1, 1, 4:], sg2.cache.ws(Source.from_seed(2), 0.7).numpy()[4:])
    assert np.array_equal(result.ws[1, 1, :4], sg2.cache.ws(Source.from_seed(6), 0.7).numpy()[:4])
    # A cell is what the sliders give with the column seed at 1 on those layers.
    slider_state = dataclasses.replace(set_group_amount(initial_state("", 8, seeds=(2, 6)), 1, coarse, 1.0), psi=0.7)
    assert np.array_equal(sg2.compose(slider_state), result.ws[1, 1])
    with pytest.raises(StyleDeckError, match="layer 8"):
        sg2.render_grid([1], [2], [8])


# --- errors ------------------------------------------------------------------------------------

def test_cuda_out_of_memory_becomes_a_device_error():
    with pytest.raises(DeviceOutOfMemoryError, match="ran out of memory"):
        with _translate_oom():
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.gpu
@pytest.mark.parametrize("num_fp16_res", [0, 2])
def test_cuda_renders_are_repeatable_and_near_the_cpu_ones(sg2, num_fp16_res):
    renderer = Renderer(_sg2(num_fp16_res=num_fp16_res), device="cuda")
    state, _ = _mixed(renderer, 0.5)
    a, b = renderer.render(state), renderer.render(state)
    assert np.array_equal(a.image, b.image)
    assert np.abs(a.image.astype(int) - sg2.render(state).image.astype(int)).mean() < 2.0  # TF32 / fp16 rounding
    preview = renderer.render(state, preview=True)
    assert preview.preview and preview.image.shape == a.image.shape
