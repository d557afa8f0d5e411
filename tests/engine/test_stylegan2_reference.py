"""StyleGAN2 G and D against NVIDIA's reference vectors (sg2_uncond, 64 px), on the CPU in float32."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.networks.discriminator import Discriminator
from engine.networks.stylegan2 import Generator
from reference_data import load_reference, rel_error, state_of

TOL = 1e-4  # README: float32 arithmetic lands far under this


@pytest.fixture(scope="module")
def reference():
    return load_reference("sg2_uncond")


@pytest.fixture(scope="module")
def G(reference):
    config, weights, _ = reference
    G = Generator(**config["G_ema"]["init_kwargs"]).eval().requires_grad_(False)
    G.load_state_dict(state_of(weights, "G_ema"), strict=True)
    return G


@pytest.fixture(scope="module")
def D(reference):
    config, weights, _ = reference
    D = Discriminator(**config["D"]["init_kwargs"]).eval().requires_grad_(False)
    D.load_state_dict(state_of(weights, "D"), strict=True)
    return D


def tensor(expected, name):
    return torch.from_numpy(np.asarray(expected[name]))


@pytest.mark.parametrize("net", ["G_ema", "D"])
def test_state_dict_keys_and_shapes_equal_the_reference(reference, net):
    config, weights, _ = reference
    cls = Generator if net == "G_ema" else Discriminator
    ours = {k: tuple(v.shape) for k, v in cls(**config[net]["init_kwargs"]).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state_of(weights, net).items()}
    assert ours == theirs
    assert list(ours) == list(theirs)  # same order too, as NVIDIA registers them


def test_generator_attributes(G):
    assert (G.z_dim, G.c_dim, G.w_dim, G.img_resolution, G.img_channels) == (64, 0, 64, 64, 3)
    assert G.num_ws == G.synthesis.num_ws == G.mapping.num_ws == 10
    assert G.synthesis.block_resolutions == [4, 8, 16, 32, 64]
    assert (G.synthesis.b4.num_conv, G.synthesis.b4.num_torgb) == (1, 1)
    assert (G.synthesis.b64.num_conv, G.synthesis.b64.num_torgb) == (2, 1)
    # num_fp16_res=2: the two highest resolutions are fp16 blocks
    assert [getattr(G.synthesis, f"b{r}").use_fp16 for r in G.synthesis.block_resolutions] == \
        [False, False, False, True, True]


@pytest.mark.parametrize("psi", ["1.0", "0.7", "0.5"])
def test_mapping_matches_reference(G, reference, psi):
    _, _, expected = reference
    ws = G.mapping(tensor(expected, "z"), tensor(expected, "c"), truncation_psi=float(psi))
    assert ws.shape == (4, 10, 64)
    assert rel_error(ws, expected[f"ws_psi{psi}"]) < TOL


@pytest.mark.parametrize("psi", ["1.0", "0.7"])
@pytest.mark.parametrize("fused_modconv", [True, False])
def test_synthesis_matches_reference(G, reference, psi, fused_modconv):
    _, _, expected = reference
    img = G.synthesis(tensor(expected, f"ws_psi{psi}"), noise_mode="const", force_fp32=True,
                      fused_modconv=fused_modconv)
    assert img.shape == (4, 3, 64, 64) and img.dtype == torch.float32
    assert rel_error(img, expected[f"img_psi{psi}"]) < TOL


def test_full_generator_call_matches_reference(G, reference):
    _, _, expected = reference
    img = G(tensor(expected, "z"), tensor(expected, "c"), truncation_psi=0.7, noise_mode="const", force_fp32=True)
    assert rel_error(img, expected["img_psi0.7"]) < TOL


def test_style_mix_matches_reference(G, reference):
    _, _, expected = reference
    ws = tensor(expected, "ws_psi0.5")
    cut = int(expected["mix_cut"])
    ws_mix = ws.clone()
    ws_mix[:, cut:] = ws.flip(0)[:, cut:]  # sample i takes layers [cut:] from sample 3 - i
    assert rel_error(ws_mix, expected["ws_mix"]) == 0
    img = G.synthesis(ws_mix, noise_mode="const", force_fp32=True)
    assert rel_error(img, expected["img_mix"]) < TOL


def test_noise_mode_none_matches_reference(G, reference):
    _, _, expected = reference
    img = G.synthesis(tensor(expected, "ws_psi0.5"), noise_mode="none", force_fp32=True)
    assert rel_error(img, expected["img_noise_none"]) < TOL
    # and the noise matters in these weights: 'const' gives a different image
    const = G.synthesis(tensor(expected, "ws_psi0.5"), noise_mode="const", force_fp32=True)
    assert rel_error(const, expected["img_noise_none"]) > 1e-3


def test_discriminator_matches_reference(D, reference):
    _, _, expected = reference
    logits = D(tensor(expected, "img_psi1.0"), tensor(expected, "c"))
    assert logits.shape == (4, 1)
    assert rel_error(logits, expected["d_logits"]) < TOL


def test_cpu_runs_fp16_blocks_in_float32(G, reference):
    """On CPU force_fp32 is implied: the default call gives the float32 reference image."""
    _, _, expected = reference
    img = G.synthesis(tensor(expected, "ws_psi1.0"), noise_mode="const")
    assert img.dtype == torch.float32
    assert rel_error(img, expected["img_psi1.0"]) < TOL


def test_rebuilt_from_init_kwargs_gives_the_same_image(G, reference):
    _, _, expected = reference
    G2 = type(G)(**G.init_kwargs).eval()
    G2.load_state_dict(G.state_dict(), strict=True)
    ws = tensor(expected, "ws_psi0.7")
    assert torch.equal(G2.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const"))


@pytest.mark.gpu
def test_fp16_blocks_on_cuda_stay_close_to_the_reference(G, reference):
    _, _, expected = reference
    G_cuda = Generator(**G.init_kwargs).eval().requires_grad_(False).cuda()
    G_cuda.load_state_dict(G.state_dict())
    ws = tensor(expected, "ws_psi1.0").cuda()
    img16 = G_cuda.synthesis(ws, noise_mode="const").cpu()
    img32 = G_cuda.synthesis(ws, noise_mode="const", force_fp32=True).cpu()
    assert rel_error(img32, expected["img_psi1.0"]) < 1e-3  # TF32 convolutions may be on
    assert rel_error(img16, expected["img_psi1.0"]) < 2e-2  # float16 in b32 and b64
    D_cuda = Discriminator(**load_reference("sg2_uncond")[0]["D"]["init_kwargs"]).eval().cuda()
    D_cuda.load_state_dict(state_of(reference[1], "D"))
    logits = D_cuda(tensor(expected, "img_psi1.0").cuda(), tensor(expected, "c").cuda()).cpu()
    assert rel_error(logits, expected["d_logits"]) < 2e-2
