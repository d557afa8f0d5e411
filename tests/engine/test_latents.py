"""Latents: seeds as NVIDIA draws them, truncation and mixing against the reference vectors,
layer groups derived from real networks, the cache, sources and composition."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import StyleDeckError
from engine.latents import (LatentCache, LayerGroup, Source, base_mix, class_to_c, compose_ws, layer_groups,
                            mix_ws, parse_range_list, parse_styles, seed_to_z, set_mix_weight, truncate,
                            ws_resolutions)
from engine.networks import stylegan2, stylegan3
from reference_data import load_reference, rel_error, state_of


def _perturb_w_avg(G: torch.nn.Module) -> torch.nn.Module:
    # A fresh network has w_avg = 0, which would make truncation tests trivially pass.
    with torch.no_grad():
        G.mapping.w_avg.copy_(torch.randn(G.w_dim, generator=torch.Generator().manual_seed(1)))
    return G.eval()


@pytest.fixture(scope="module")
def tiny_sg2() -> torch.nn.Module:
    torch.manual_seed(0)
    return _perturb_w_avg(stylegan2.Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=64, img_channels=3,
                                              channel_base=512, channel_max=32, num_fp16_res=0))


@pytest.fixture(scope="module")
def tiny_sg2_cond() -> torch.nn.Module:
    torch.manual_seed(0)
    return _perturb_w_avg(stylegan2.Generator(z_dim=16, c_dim=4, w_dim=16, img_resolution=16, img_channels=3,
                                              channel_base=128, channel_max=16, num_fp16_res=0))


@pytest.fixture(scope="module")
def tiny_sg3() -> torch.nn.Module:
    torch.manual_seed(0)
    return _perturb_w_avg(stylegan3.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                                              channel_base=128, channel_max=16, num_fp16_res=0))


# --- seeds, classes and ranges ----------------------------------------------------------------

def test_seed_to_z_is_nvidias_draw():
    z = seed_to_z(42, 512)
    assert z.shape == (1, 512) and z.dtype == torch.float32
    expected = np.random.RandomState(42).randn(1, 512).astype(np.float32)
    assert np.array_equal(z.numpy(), expected)
    assert float(z[0, 0]) == pytest.approx(0.4967141530112327, abs=1e-7)  # RandomState(42)'s first normal
    assert not torch.equal(seed_to_z(43, 512), z)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_out_of_range_is_a_clear_error(seed):
    with pytest.raises(StyleDeckError, match="out of range"):
        seed_to_z(seed, 8)


def test_parse_range_list_reads_nvidias_syntax():
    assert parse_range_list("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_range_list("5") == [5]
    assert parse_range_list(" 9, 2-3 ") == [9, 2, 3]  # order kept, as NVIDIA
    for bad in ("a", "3-1", "1,,2", "-2"):
        with pytest.raises(StyleDeckError):
            parse_range_list(bad)


def test_class_to_c_one_hot_and_errors():
    assert torch.equal(class_to_c(2, 4), torch.tensor([[0.0, 0.0, 1.0, 0.0]]))
    assert class_to_c(None, 0).shape == (1, 0)
    assert class_to_c(3, 0).shape == (1, 0)  # unconditional: ignored, as gen_images.py
    with pytest.raises(StyleDeckError, match="conditional"):
        class_to_c(None, 4)
    with pytest.raises(StyleDeckError, match="out of range"):
        class_to_c(4, 4)


# --- truncation and mixing against NVIDIA's reference vectors --------------------------------

@pytest.mark.parametrize("name", ["sg2_uncond", "sg3t"])
@pytest.mark.parametrize("psi", [0.7, 0.5])
def test_truncate_matches_reference_mapping(name, psi):
    _, weights, expected = load_reference(name)
    w_avg = torch.from_numpy(weights["G_ema.mapping.w_avg"])
    ws = truncate(torch.from_numpy(expected["ws_psi1.0"]), w_avg, psi)
    assert rel_error(ws, expected[f"ws_psi{psi}"]) < 1e-6


def test_truncate_psi_zero_gives_w_avg_below_the_cutoff():
    ws = torch.randn(2, 10, 8)
    w_avg = torch.randn(8)
    out = truncate(ws, w_avg, 0.0, cutoff=4)
    assert torch.equal(out[:, :4], w_avg.expand(2, 4, 8))
    assert torch.equal(out[:, 4:], ws[:, 4:])
    assert torch.equal(truncate(ws, w_avg, 0.0), w_avg.expand(2, 10, 8))
    assert truncate(ws, w_avg, 1.0) is ws


@pytest.mark.parametrize("name", ["sg2_uncond", "sg3t"])
def test_mix_ws_reproduces_reference_style_mix(name):
    _, _, expected = load_reference(name)
    ws = torch.from_numpy(expected["ws_psi0.5"])                 # [4, L, w_dim]
    cut = int(expected["mix_cut"])
    num_ws = ws.shape[1]
    weights = set_mix_weight(base_mix(2, num_ws), 1, range(cut, num_ws), 1.0)
    for i in range(4):
        mixed = mix_ws(torch.stack([ws[i], ws[3 - i]]), weights)  # [1, L, w_dim]
        assert torch.equal(mixed[0], torch.from_numpy(expected["ws_mix"][i]))


def test_mix_ws_checks_shapes():
    with pytest.raises(StyleDeckError, match="weights"):
        mix_ws(torch.zeros(2, 5, 3), [[1.0] * 4, [0.0] * 4])


def test_set_mix_weight_keeps_columns_summing_to_one():
    mix = set_mix_weight(base_mix(3, 6), 1, [0, 1], 0.25)
    mix = set_mix_weight(mix, 2, [1, 2], 0.5)
    assert mix[0] == (0.75, 0.25, 0.5, 1.0, 1.0, 1.0)
    assert mix[1] == (0.25, 0.25, 0.0, 0.0, 0.0, 0.0)
    assert mix[2] == (0.0, 0.5, 0.5, 0.0, 0.0, 0.0)
    with pytest.raises(StyleDeckError, match="base"):
        set_mix_weight(mix, 0, [0], 0.5)


# --- layer groups ------------------------------------------------------------------------------

def test_sg2_groups_follow_resolution(tiny_sg2):
    assert ws_resolutions(tiny_sg2) == [4, 4, 8, 8, 16, 16, 32, 32, 64, 64]
    assert layer_groups(tiny_sg2) == (LayerGroup("coarse", (0, 1, 2, 3), "4-8 px"),
                                      LayerGroup("middle", (4, 5, 6, 7), "16-32 px"),
                                      LayerGroup("fine", (8, 9), "64 px"))


def test_sg2_groups_at_1024_match_the_papers_split():
    # Only the structure matters: 2-4 channels per layer keep it small.
    G = stylegan2.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=1024, img_channels=3,
                            channel_base=2048, channel_max=4, num_fp16_res=0)
    groups = {g.name: g for g in layer_groups(G)}
    assert G.num_ws == 18
    assert groups["coarse"].layers == (0, 1, 2, 3)
    assert groups["middle"].layers == (4, 5, 6, 7)
    assert groups["fine"].layers == tuple(range(8, 18)) and groups["fine"].label == "64-1024 px"


def test_small_sg2_has_no_fine_group(tiny_sg2_cond):
    assert [g.name for g in layer_groups(tiny_sg2_cond)] == ["coarse", "middle"]


def test_sg3_groups_split_the_layers_in_thirds(tiny_sg3):
    groups = layer_groups(tiny_sg3)
    assert tiny_sg3.num_ws == 16
    assert [(g.name, g.layers[0], g.layers[-1], g.label) for g in groups] == [
        ("coarse", 0, 4, "layers 0-4"), ("middle", 5, 10, "layers 5-10"), ("fine", 11, 15, "layers 11-15")]
    assert sum((g.layers for g in groups), ()) == tuple(range(16))


def test_parse_styles_takes_groups_and_indices(tiny_sg2):
    assert parse_styles("coarse", tiny_sg2) == [0, 1, 2, 3]
    assert parse_styles("fine,0-1", tiny_sg2) == [0, 1, 8, 9]
    assert parse_styles("0-6", tiny_sg2) == list(range(7))
    with pytest.raises(StyleDeckError, match="layers 0-9"):
        parse_styles("0-12", tiny_sg2)


# --- cache, sources and composition -------------------------------------------------------------

@torch.no_grad()
def test_cache_equals_mapping_and_bounds_its_size(tiny_sg2):
    cache = LatentCache(tiny_sg2, max_entries=2)
    ws = cache.ws(Source.from_seed(7), psi=0.6, cutoff=5)
    direct = tiny_sg2.mapping(seed_to_z(7, 32), None, truncation_psi=0.6, truncation_cutoff=5)[0]
    assert torch.equal(ws, direct)
    ws[:] = 0                                          # callers get copies
    assert torch.equal(cache.ws(7, psi=0.6, cutoff=5), direct) and cache.hits == 1
    cache.ws(8)
    cache.ws(9)
    assert len(cache) == 2 and cache.misses == 3
    cache.ws(7, psi=0.6, cutoff=5)                     # was evicted: computed again
    assert cache.misses == 4


@torch.no_grad()
def test_cache_uses_the_class(tiny_sg2_cond):
    cache = LatentCache(tiny_sg2_cond)
    a, b = cache.ws(Source.from_seed(1, class_idx=0)), cache.ws(Source.from_seed(1, class_idx=3))
    assert not torch.equal(a, b)
    direct = tiny_sg2_cond.mapping(seed_to_z(1, 16), class_to_c(3, 4))[0]
    assert torch.equal(b, direct)
    with pytest.raises(StyleDeckError, match="conditional"):
        cache.ws(Source.from_seed(1))


def test_source_latents_are_values():
    w = torch.randn(16)
    a, b = Source.from_latent(w, "projected"), Source.from_latent(w.clone()[None], "projected")
    assert a == b and hash(a) == hash(b)
    assert np.array_equal(a.latent_array(), w.numpy()[None])
    assert Source.from_dict(a.to_dict()) == a
    assert Source.from_dict(Source.from_seed(5, 2).to_dict()) == Source.from_seed(5, 2)
    with pytest.raises(StyleDeckError):
        Source()


@torch.no_grad()
def test_stored_latents_broadcast_and_truncate(tiny_sg2):
    cache = LatentCache(tiny_sg2)
    w = torch.randn(32)
    ws = cache.ws(Source.from_latent(w), psi=1.0)
    assert ws.shape == (10, 32) and torch.equal(ws, w.expand(10, 32))
    truncated = cache.ws(Source.from_latent(w), psi=0.0, cutoff=3)
    assert torch.equal(truncated[:3], tiny_sg2.mapping.w_avg.expand(3, 32)) and torch.equal(truncated[3:], ws[3:])
    with pytest.raises(StyleDeckError, match="shape"):
        cache.ws(Source.from_latent(torch.randn(4, 32)))


@torch.no_grad()
def test_group_weight_changes_exactly_that_groups_layers(tiny_sg2):
    cache = LatentCache(tiny_sg2)
    sources = [Source.from_seed(1), Source.from_seed(2)]
    mix = base_mix(2, tiny_sg2.num_ws)
    base = compose_ws(sources, mix, cache)
    assert torch.equal(base[0], cache.ws(1))
    for group in layer_groups(tiny_sg2):
        mixed = compose_ws(sources, set_mix_weight(mix, 1, group.layers, 0.5), cache)
        changed = [i for i in range(tiny_sg2.num_ws) if not torch.equal(mixed[0, i], base[0, i])]
        assert changed == list(group.layers), group.name
        expected = 0.5 * cache.ws(1)[list(group.layers)] + 0.5 * cache.ws(2)[list(group.layers)]
        assert torch.allclose(mixed[0, list(group.layers)], expected, atol=1e-6)


@torch.no_grad()
def test_psi_zero_gives_w_avg_in_every_truncated_layer(tiny_sg3):
    cache = LatentCache(tiny_sg3)
    sources = [Source.from_seed(3), Source.from_latent(torch.randn(16, 16))]
    mix = set_mix_weight(base_mix(2, 16), 1, range(8, 16), 0.3)
    ws = compose_ws(sources, mix, cache, psi=0.0, cutoff=6)
    w_avg = tiny_sg3.mapping.w_avg
    assert torch.allclose(ws[0, :6], w_avg.expand(6, 16), atol=1e-6)
    assert not torch.allclose(ws[0, 6:], w_avg.expand(10, 16), atol=1e-3)
    all_layers = compose_ws(sources, mix, cache, psi=0.0)
    assert torch.allclose(all_layers[0], w_avg.expand(16, 16), atol=1e-6)


@pytest.mark.parametrize("name, module", [("sg2_uncond", stylegan2), ("sg3t", stylegan3)])
@torch.no_grad()
def test_seed_123_gives_nvidias_ws(name, module):
    # NVIDIA's reference z are RandomState(123).randn(4, z_dim): z[0] is seed 123 as gen_images.py draws it.
    config, weights, expected = load_reference(name)
    G = module.Generator(**config["G_ema"]["init_kwargs"]).eval()
    G.load_state_dict(state_of(weights, "G_ema"))
    cache = LatentCache(G)
    for psi in (1.0, 0.7, 0.5):
        assert rel_error(cache.ws(123, psi=psi), expected[f"ws_psi{psi}"][0]) < 1e-6
    # the reference's style mix: seed 123 with sample 3's late layers, here given as a stored untruncated w
    mix = set_mix_weight(base_mix(2, G.num_ws), 1, range(int(expected["mix_cut"]), G.num_ws), 1.0)
    assert rel_error(compose_ws([Source.from_seed(123), Source.from_latent(expected["ws_psi1.0"][3])], mix,
                                cache, psi=0.5)[0], expected["ws_mix"][0]) < 1e-6
