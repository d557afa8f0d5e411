"""Behaviour of the StyleGAN2 discriminator on tiny networks: conditioning, mbstd, architectures, R1."""
from __future__ import annotations

import pytest
import torch

from engine.errors import UnsupportedNetworkError
from engine.networks.discriminator import Discriminator, MinibatchStdLayer

TINY = dict(img_resolution=16, img_channels=3, channel_base=128, channel_max=16, num_fp16_res=2)


def tiny_discriminator(c_dim: int = 0, seed: int = 0, **overrides) -> Discriminator:
    torch.manual_seed(seed)
    D = Discriminator(**{**TINY, "c_dim": c_dim, **overrides}).eval()
    with torch.no_grad():  # non-zero biases, so that every parameter matters
        for p in D.parameters():
            if p.ndim == 1:
                p.normal_(0, 0.3)
    return D


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn([n, 3, 16, 16], generator=torch.Generator().manual_seed(seed))


def test_tiny_discriminator_shapes_and_names():
    D = tiny_discriminator()
    assert D.block_resolutions == [16, 8]
    keys = set(D.state_dict())
    assert {"b16.fromrgb.weight", "b16.skip.weight", "b8.skip.weight", "b4.conv.weight", "b4.fc.weight",
            "b4.out.weight"} <= keys
    assert "b8.fromrgb.weight" not in keys and "mapping.embed.weight" not in keys
    assert D.b4.conv.weight.shape == (16, 16 + 1, 3, 3)  # + the minibatch std channel
    assert D.b4.fc.weight.shape == (16, 16 * 4 * 4)
    logits = D(images(), None)
    assert logits.shape == (4, 1) and logits.dtype == torch.float32


def test_conditional_discriminator_projects_onto_the_class():
    D = tiny_discriminator(c_dim=3)
    assert D.cmap_dim == 16 and D.b4.out.weight.shape == (16, 16)
    assert "mapping.embed.weight" in D.state_dict() and "mapping.w_avg" not in D.state_dict()
    img = images(1).repeat(3, 1, 1, 1)
    logits = D(img, torch.eye(3))
    assert logits.shape == (3, 1)
    assert len(set(logits.flatten().tolist())) == 3  # each class scores the same image differently
    D8 = tiny_discriminator(c_dim=3, cmap_dim=8)
    assert D8.b4.out.weight.shape == (8, 16) and D8.mapping.fc7.weight.shape[0] == 8


def test_minibatch_std_matches_a_direct_computation():
    torch.manual_seed(0)
    x = torch.randn(6, 4, 3, 3)
    out = MinibatchStdLayer(group_size=2, num_channels=2)(x)
    assert out.shape == (6, 6, 3, 3)
    assert torch.equal(out[:, :4], x)
    # group_size 2 over 6 samples: groups {0, 3}, {1, 4}, {2, 5}; channels split into 2 halves
    for i in range(6):
        group = x[[i % 3, i % 3 + 3]]
        for f in range(2):
            half = group[:, 2 * f: 2 * f + 2]
            expected = (half.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
            assert torch.allclose(out[i, 4 + f], expected.expand(3, 3), atol=1e-6)


def test_minibatch_std_group_larger_than_batch_uses_the_batch():
    x = torch.randn(3, 2, 2, 2)
    out = MinibatchStdLayer(group_size=4)(x)
    expected = (x.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
    assert torch.allclose(out[:, 2], expected.expand(3, 2, 2), atol=1e-6)


@pytest.mark.parametrize("architecture", ["orig", "skip", "resnet"])
def test_architectures_build_and_run(architecture):
    D = tiny_discriminator(architecture=architecture)
    keys = set(D.state_dict())
    assert ("b8.fromrgb.weight" in keys) == (architecture == "skip")
    assert ("b4.fromrgb.weight" in keys) == (architecture == "skip")
    assert ("b8.skip.weight" in keys) == (architecture == "resnet")
    logits = D(images(), None)
    assert logits.shape == (4, 1) and torch.isfinite(logits).all()


def test_rebuilt_from_init_kwargs_gives_identical_logits():
    D = tiny_discriminator(c_dim=3, epilogue_kwargs=dict(mbstd_group_size=2), mapping_kwargs=dict(num_layers=2))
    D2 = type(D)(**D.init_kwargs).eval()
    assert D2.init_kwargs == D.init_kwargs
    D2.load_state_dict(D.state_dict(), strict=True)
    c = torch.eye(3)[[0, 1, 2, 0]]
    assert torch.equal(D2(images(), c), D(images(), c))


def test_freeze_layers_turns_the_first_layers_into_buffers():
    D = tiny_discriminator(block_kwargs=dict(freeze_layers=2))
    params = dict(D.named_parameters())
    assert "b16.fromrgb.weight" not in params and "b16.conv0.weight" not in params
    assert "b16.conv1.weight" in params
    assert "b16.fromrgb.weight" in D.state_dict()  # still saved, same names


def test_update_emas_is_accepted_and_changes_nothing():
    D = tiny_discriminator()
    before = {k: v.clone() for k, v in D.state_dict().items()}
    a = D(images(), None, update_emas=True)
    assert torch.equal(a, D(images(), None, force_fp32=True))
    assert all(torch.equal(v, before[k]) for k, v in D.state_dict().items())


def test_r1_penalty_has_second_order_gradients():
    """Lazy R1 differentiates the gradient of D with respect to its input; it must reach D's weights."""
    D = tiny_discriminator(c_dim=3).train()
    img = images().requires_grad_(True)
    logits = D(img, torch.eye(3)[[0, 1, 2, 0]])
    (grad,) = torch.autograd.grad(logits.sum(), img, create_graph=True)
    penalty = grad.square().sum(dim=[1, 2, 3]).mean()
    penalty.backward()
    assert D.b16.conv0.weight.grad is not None and D.b16.conv0.weight.grad.abs().sum() > 0
    assert D.mapping.embed.weight.grad is not None


def test_unknown_kwargs_are_refused_by_name():
    with pytest.raises(UnsupportedNetworkError, match="wobble"):
        Discriminator(**{**TINY, "c_dim": 0, "block_kwargs": {"wobble": 1}})
    with pytest.raises(UnsupportedNetworkError, match="mbstd_groups"):
        Discriminator(**{**TINY, "c_dim": 0, "epilogue_kwargs": {"mbstd_groups": 1}})


@pytest.mark.gpu
def test_fp16_blocks_on_cuda_stay_close_to_float32():
    D = tiny_discriminator().cuda()
    img = images().cuda()
    x16, _ = D.b16(None, img)
    assert x16.dtype == torch.float16
    full = D(img, None)
    ref = D(img, None, force_fp32=True)
    assert full.dtype == torch.float32
    assert (full - ref).norm() / ref.norm() < 2e-2
