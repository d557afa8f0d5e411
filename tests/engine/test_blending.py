"""Model blending on tiny StyleGAN2 and StyleGAN3 networks: schedules, exact end points, mixed blends."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from engine.blending import blend_block_names, blend_networks, blend_schedule
from engine.errors import StyleDeckError, UnsupportedNetworkError
from engine.networks import stylegan2, stylegan3
from reference_data import perturbed


def _sg2(resolution: int = 16, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return stylegan2.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=resolution, img_channels=3,
                               channel_base=256, channel_max=16, num_fp16_res=0).eval()


def _sg3(seed: int = 0, num_layers: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return stylegan3.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                               channel_base=256, channel_max=16, num_layers=num_layers, num_critical=1,
                               margin_size=2, num_fp16_res=0).eval()


def _pair(make) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(base, tuned): the tuned one a nudged copy of the base, as after a fine-tune."""
    base = perturbed(make(), seed=1)
    tuned = perturbed(copy.deepcopy(base), seed=2)
    return base.requires_grad_(False), tuned.requires_grad_(False)


@torch.no_grad()
def _render(G: torch.nn.Module, psi: float = 1.0) -> torch.Tensor:
    z = torch.randn([3, G.z_dim], generator=torch.Generator().manual_seed(5))
    return G(z, None, truncation_psi=psi, noise_mode="const")


FAMILIES = {"stylegan2": _sg2, "stylegan3": _sg3}


# ---------------------------------------------------------------------------------------------
# Schedules

def test_schedule_is_a_monotone_ramp_from_base_to_tuned():
    weights = blend_schedule(9, split=0.5, width=0.4)
    assert len(weights) == 9
    assert weights[0] == 0.0 and weights[-1] == 1.0
    assert all(a <= b for a, b in zip(weights, weights[1:]))
    assert weights[4] == pytest.approx(0.5)       # the middle block sits on the split
    assert 0.0 < weights[3] < 0.5 < weights[5] < 1.0
    # outside the band the weights are exact, so those blocks are pure copies
    assert weights[:2] == [0.0, 0.0] and weights[-2:] == [1.0, 1.0]


def test_schedule_end_points_and_hard_switch():
    assert blend_schedule(5, split=1.0, width=0.0) == [0.0] * 5          # all base
    assert blend_schedule(5, split=0.0, width=0.0) == [1.0] * 5          # all tuned
    assert blend_schedule(5, split=0.4, width=0.0) == [0, 0, 1, 1, 1]    # two coarse blocks from the base
    assert blend_schedule(5, split=0.5, width=0.1) == pytest.approx([0, 0, 0.5, 1, 1], abs=1e-12)
    assert blend_schedule(1, split=0.6, width=0.0) == [0.0]


@pytest.mark.parametrize("split, width", [(-0.1, 0.1), (1.5, 0.1), (0.5, -1.0), (float("nan"), 0.1)])
def test_schedule_refuses_bad_values(split, width):
    with pytest.raises(StyleDeckError):
        blend_schedule(5, split, width)


def test_block_names_follow_the_architecture():
    assert blend_block_names(_sg2(32)) == ["b4", "b8", "b16", "b32"]
    G3 = _sg3()
    names = blend_block_names(G3)
    assert names[0] == "input" and len(names) == G3.num_ws == 4 + 2
    assert names[1:] == G3.synthesis.layer_names


# ---------------------------------------------------------------------------------------------
# Blends

@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_all_base_and_all_tuned_reproduce_each_network_exactly(family):
    base, tuned = _pair(FAMILIES[family])
    n = len(blend_block_names(base))
    assert not torch.equal(_render(base), _render(tuned))
    for weights, source in ((blend_schedule(n, 1.0, 0.0), base), (blend_schedule(n, 0.0, 0.0), tuned)):
        G = blend_networks(base, tuned, weights)
        assert torch.equal(_render(G), _render(source))
        assert torch.equal(_render(G, psi=0.5), _render(source, psi=0.5))   # w_avg too


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_mixed_blend_takes_coarse_blocks_from_the_base_and_fine_from_the_tuned(family):
    base, tuned = _pair(FAMILIES[family])
    before = {k: v.clone() for k, v in tuned.state_dict().items()}
    names = blend_block_names(base)
    weights = blend_schedule(len(names), split=0.5, width=0.3)
    assert 0.0 < max(w for w in weights if w < 1.0) and weights[0] == 0.0 and weights[-1] == 1.0
    G = blend_networks(base, tuned, weights)

    img, img_base, img_tuned = _render(G), _render(base), _render(tuned)
    assert not torch.allclose(img, img_base, atol=1e-3)
    assert not torch.allclose(img, img_tuned, atol=1e-3)

    sb, st, sg = base.state_dict(), tuned.state_dict(), G.state_dict()
    for name, t in zip(names, weights):
        keys = [k for k in sg if k.startswith(f"synthesis.{name}.")]
        assert keys, name
        for key in keys:
            if t == 0.0:
                assert torch.equal(sg[key], sb[key]), key
            elif t == 1.0:
                assert torch.equal(sg[key], st[key]), key
            elif sb[key].is_floating_point() and not torch.equal(sb[key], st[key]):
                assert torch.allclose(sg[key], t * st[key] + (1 - t) * sb[key], atol=1e-6), key
    # the mapping follows the coarsest block: from the base here
    for key in (k for k in sg if k.startswith("mapping.")):
        assert torch.equal(sg[key], sb[key]), key
    # the inputs are untouched
    assert all(torch.equal(v, before[k]) for k, v in tuned.state_dict().items())


def test_stylegan2_blocks_include_their_torgb_and_const():
    base, tuned = _pair(_sg2)
    G = blend_networks(base, tuned, [0.0, 1.0, 0.0])           # b4 base, b8 tuned, b16 base
    sg, sb, st = G.state_dict(), base.state_dict(), tuned.state_dict()
    assert torch.equal(sg["synthesis.b4.const"], sb["synthesis.b4.const"])
    assert torch.equal(sg["synthesis.b4.torgb.weight"], sb["synthesis.b4.torgb.weight"])
    assert torch.equal(sg["synthesis.b8.torgb.affine.weight"], st["synthesis.b8.torgb.affine.weight"])
    assert torch.equal(sg["synthesis.b8.conv0.noise_const"], st["synthesis.b8.conv0.noise_const"])
    assert torch.equal(sg["synthesis.b16.conv1.weight"], sb["synthesis.b16.conv1.weight"])


def test_mapping_weight_can_be_chosen():
    base, tuned = _pair(_sg2)
    G = blend_networks(base, tuned, [0.0, 0.0, 0.0], mapping_weight=1.0)
    assert torch.equal(G.state_dict()["mapping.fc0.weight"], tuned.state_dict()["mapping.fc0.weight"])
    assert torch.equal(G.state_dict()["synthesis.b16.conv1.weight"], base.state_dict()["synthesis.b16.conv1.weight"])


def test_blending_into_an_existing_network_matches_a_fresh_blend():
    base, tuned = _pair(_sg3)
    n = len(blend_block_names(base))
    preview = blend_networks(base, tuned, blend_schedule(n, 0.2, 0.1))
    again = blend_networks(base, tuned, blend_schedule(n, 0.7, 0.5), out=preview)
    assert again is preview
    fresh = blend_networks(base, tuned, blend_schedule(n, 0.7, 0.5))
    assert torch.equal(_render(again), _render(fresh))


def test_mismatched_architectures_are_refused():
    base = _sg2(16)
    with pytest.raises(UnsupportedNetworkError, match="different architectures"):
        blend_networks(base, _sg2(32), [0.0, 0.5, 1.0])
    with pytest.raises(UnsupportedNetworkError, match="stylegan2 base with a stylegan3"):
        blend_networks(base, _sg3(), [0.0, 0.5, 1.0])
    wider = stylegan2.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                                channel_base=512, channel_max=32, num_fp16_res=0)
    with pytest.raises(UnsupportedNetworkError, match="synthesis.b4.const"):
        blend_networks(base, wider, [0.0, 0.5, 1.0])
    with pytest.raises(UnsupportedNetworkError, match="different architectures"):
        blend_networks(_sg3(), _sg3(num_layers=5), [0.0] * 6)


def test_wrong_weight_counts_and_ranges_are_refused():
    base, tuned = _pair(_sg2)
    with pytest.raises(ValueError, match="3 blocks"):
        blend_networks(base, tuned, [0.0, 1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        blend_networks(base, tuned, [0.0, 1.5, 1.0])


def test_end_points_are_exact_on_the_nvidia_reference_network():
    """The 64 px StyleGAN2 NVIDIA trained (StyleGAN3 is covered by the tiny network: per-layer blocks are generic)."""
    from reference_data import load_reference, state_of

    config, weights, _ = load_reference("sg2_uncond")
    base = stylegan2.Generator(**config["G_ema"]["init_kwargs"]).eval().requires_grad_(False)
    base.load_state_dict(state_of(weights, "G_ema"))
    tuned = perturbed(copy.deepcopy(base), seed=4)
    n = len(blend_block_names(base))
    assert torch.equal(_render(blend_networks(base, tuned, [0.0] * n)), _render(base))
    assert torch.equal(_render(blend_networks(base, tuned, [1.0] * n)), _render(tuned))


def test_blend_preview_renders_schedules_from_files_and_saves_them(tmp_path):
    from engine.checkpoint import read_checkpoint_metadata, save_checkpoint
    from engine.blending import BlendPreview
    from engine.images import to_uint8
    from engine.latents import seed_to_z
    from engine.loader import load_network

    base, tuned = _pair(_sg3)
    save_checkpoint(tmp_path / "base.safetensors", {"G_ema": base})
    save_checkpoint(tmp_path / "tuned.safetensors", {"G_ema": tuned})
    preview = BlendPreview(tmp_path / "base.safetensors", tmp_path / "tuned.safetensors")
    assert preview.blocks == tuple(blend_block_names(base))

    def expected(G):
        with torch.no_grad():
            return np.stack([to_uint8(G(seed_to_z(s, G.z_dim), None, noise_mode="const"))[0] for s in (0, 1)])

    images = preview.render(1.0, 0.0, seeds=[0, 1])
    assert images.dtype == np.uint8 and images.shape == (2, 16, 16, 3)
    assert np.array_equal(images, expected(base))
    assert np.array_equal(preview.render(0.0, 0.0, seeds=[0, 1]), expected(tuned))
    mixed = preview.render(0.5, 0.4, seeds=[0, 1])
    assert not np.array_equal(mixed, expected(base)) and not np.array_equal(mixed, expected(tuned))
    first, _ = preview.blend(0.5, 0.4)
    assert preview.blend(0.2, 0.1)[0] is first                     # one network, rewritten in place

    result = preview.save(tmp_path / "blend.safetensors", 0.5, 0.4)
    assert result.blocks == preview.blocks and result.weights == tuple(blend_schedule(len(preview.blocks), 0.5, 0.4))
    origin = read_checkpoint_metadata(result.path)["origin"]["blend"]
    assert origin["base"]["source"] == "base.safetensors" and origin["tuned"]["source"] == "tuned.safetensors"
    G = load_network(result.path)["G_ema"]
    assert np.array_equal(expected(G), mixed)
