"""StyleGAN3-T against NVIDIA's reference vectors (64 px, CPU, force_fp32): layout, filters, outputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import UnsupportedNetworkError
from engine.networks.stylegan3 import Generator, input_transform
from reference_data import load_reference, rel_error, state_of

TOL = 1e-4  # float32 arithmetic lands near 1e-7; the reference README allows 1e-4


@pytest.fixture(scope="module")
def reference():
    return load_reference("sg3t")


@pytest.fixture(scope="module")
def fresh_G(reference):
    """Built from the recorded init kwargs, before any weights are loaded."""
    config, _, _ = reference
    torch.manual_seed(0)
    return Generator(**config["G_ema"]["init_kwargs"]).eval()


@pytest.fixture(scope="module")
def G(reference):
    config, weights, _ = reference
    G = Generator(**config["G_ema"]["init_kwargs"]).eval()
    G.load_state_dict(state_of(weights, "G_ema"), strict=True)
    return G


def test_state_dict_keys_and_shapes_equal_the_reference(reference, fresh_G):
    _, weights, _ = reference
    ref = state_of(weights, "G_ema")
    mine = fresh_G.state_dict()
    assert sorted(mine) == sorted(ref)
    bad = {k: (tuple(mine[k].shape), tuple(ref[k].shape)) for k in ref if mine[k].shape != ref[k].shape}
    assert not bad


def test_designed_filters_equal_the_reference_buffers(reference, fresh_G):
    """The filters are designed at construction; equality proves the cutoff / rate schedule."""
    _, weights, _ = reference
    ref = state_of(weights, "G_ema")
    names = [k for k in ref if k.endswith(("up_filter", "down_filter"))]
    assert len(names) == 28  # 14 layers x 2; ToRGB has neither
    for name in names:
        np.testing.assert_allclose(fresh_G.state_dict()[name].numpy(), ref[name].numpy(), rtol=0, atol=1e-7,
                                   err_msg=name)


def test_attributes(G, reference):
    config, _, expected = reference
    kwargs = config["G_ema"]["init_kwargs"]
    assert (G.z_dim, G.c_dim, G.w_dim) == (kwargs["z_dim"], kwargs["c_dim"], kwargs["w_dim"])
    assert (G.img_resolution, G.img_channels) == (64, 3)
    assert G.num_ws == G.synthesis.num_ws == G.mapping.num_ws == expected["ws_psi1.0"].shape[1] == 16
    assert G.synthesis.layer_names[0] == "L0_36_64" and G.synthesis.layer_names[-1] == "L14_64_3"
    assert len(G.synthesis.layer_names) == 15


@pytest.mark.parametrize("psi", ["1.0", "0.7", "0.5"])
def test_mapping_matches(G, reference, psi):
    _, _, expected = reference
    with torch.no_grad():
        ws = G.mapping(torch.from_numpy(expected["z"]), torch.from_numpy(expected["c"]), truncation_psi=float(psi))
    assert rel_error(ws, expected[f"ws_psi{psi}"]) < TOL


@pytest.mark.parametrize("psi", ["1.0", "0.7"])
def test_synthesis_matches(G, reference, psi):
    _, _, expected = reference
    with torch.no_grad():
        img = G.synthesis(torch.from_numpy(expected[f"ws_psi{psi}"]), noise_mode="const", force_fp32=True)
    assert img.dtype == torch.float32
    assert rel_error(img, expected[f"img_psi{psi}"]) < TOL


def test_generator_end_to_end_matches(G, reference):
    _, _, expected = reference
    with torch.no_grad():
        img = G(torch.from_numpy(expected["z"]), torch.from_numpy(expected["c"]), truncation_psi=0.7,
                noise_mode="const", force_fp32=True)
    assert rel_error(img, expected["img_psi0.7"]) < TOL


def test_style_mix_matches(G, reference):
    _, _, expected = reference
    ws, cut = expected["ws_psi0.5"], int(expected["mix_cut"])
    mixed = ws.copy()
    mixed[:, cut:] = ws[::-1, cut:]          # sample i takes layers [cut:] from sample 3 - i
    np.testing.assert_array_equal(mixed, expected["ws_mix"])
    with torch.no_grad():
        img = G.synthesis(torch.from_numpy(mixed), noise_mode="const", force_fp32=True)
    assert rel_error(img, expected["img_mix"]) < TOL


def test_noise_mode_none_matches(G, reference):
    _, _, expected = reference
    with torch.no_grad():
        img = G.synthesis(torch.from_numpy(expected["ws_psi0.5"]), noise_mode="none", force_fp32=True)
    assert rel_error(img, expected["img_noise_none"]) < TOL


def test_input_transform_helper_gives_the_reference_buffer(reference):
    _, _, expected = reference
    m = input_transform(rotate=15, translate=(0.1, -0.05))
    assert m.dtype == np.float32 and m.shape == (3, 3)
    np.testing.assert_allclose(m, expected["transform"], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(input_transform(), np.eye(3, dtype=np.float32))


def test_transformed_image_matches(reference):
    config, weights, expected = reference
    G = Generator(**config["G_ema"]["init_kwargs"]).eval()   # own copy: the transform is state
    G.load_state_dict(state_of(weights, "G_ema"), strict=True)
    G.synthesis.input.transform.copy_(torch.from_numpy(input_transform(15, (0.1, -0.05))))
    with torch.no_grad():
        img = G.synthesis(torch.from_numpy(expected["ws_psi0.5"]), noise_mode="const", force_fp32=True)
        plain = G.synthesis(torch.from_numpy(expected["ws_psi0.5"]) * 1, force_fp32=True)
    assert rel_error(img, expected["img_transform"]) < TOL
    assert torch.equal(img, plain)  # noise_mode is accepted and ignored


def test_init_kwargs_rebuild_the_architecture(G, reference):
    config, _, _ = reference
    assert G.init_kwargs == config["G_ema"]["init_kwargs"]
    assert type(G.init_kwargs) is dict and type(G.init_kwargs["mapping_kwargs"]) is dict
    G.init_kwargs["mapping_kwargs"]["num_layers"] = 99   # a copy: the network is unaffected
    G.init_kwargs["mapping_kwargs"]["num_layers"] = 2
    rebuilt = type(G)(**G.init_kwargs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in G.state_dict().items()}


def test_unknown_kwarg_is_named(reference):
    config, _, _ = reference
    kwargs = dict(config["G_ema"]["init_kwargs"], warp_drive=True)
    with pytest.raises(UnsupportedNetworkError, match="warp_drive"):
        Generator(**kwargs)
    kwargs = dict(config["G_ema"]["init_kwargs"], mapping_kwargs={"num_layers": 2, "embed_features": 8})
    with pytest.raises(UnsupportedNetworkError, match="embed_features"):
        Generator(**kwargs)
