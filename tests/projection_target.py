"""A tiny StyleGAN2 checkpoint and an image it generates: a target whose latent is known to exist."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.checkpoint import save_checkpoint
from engine.images import to_uint8
from engine.networks import stylegan2


def tiny_network_and_target(folder: Path) -> tuple[Path, np.ndarray]:
    """(folder/tiny.safetensors, uint8 [16, 16, 3] image of z seed 3); toRGB is scaled so images stay in range."""
    torch.manual_seed(0)
    G = stylegan2.Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=16, img_channels=3, channel_base=256,
                            channel_max=32, num_fp16_res=0).eval()
    with torch.no_grad():
        for name, module in G.named_modules():
            if name.endswith("torgb"):
                module.weight.mul_(0.25)
        image = to_uint8(G(torch.randn([1, 32], generator=torch.Generator().manual_seed(3)), None,
                           noise_mode="const"))[0]
    path = folder / "tiny.safetensors"
    save_checkpoint(path, {"G_ema": G})
    return path, image
