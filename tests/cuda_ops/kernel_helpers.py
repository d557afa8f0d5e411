"""Shared by the compiled-op tests: the built kernels, random op configurations, error measure."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from cuda_ops import build, reference
from cuda_ops.selftest import rel_error

__all__ = ["UpFirDnCase", "kernels", "random_upfirdn_cases", "rel_error"]


def kernels(kind: str = "cpu"):
    """(bias_act, upfirdn2d) kernel wrappers of `kind`; fails the test when the build fails.

    The build is cached per process (and on disk), so every test shares one build.
    """
    reason = build.load_kernels(kind)
    assert reason is None, f"{kind} kernels did not build: {reason}"
    from cuda_ops.kernels.bias_act import bias_act
    from cuda_ops.kernels.upfirdn2d import upfirdn2d
    return bias_act, upfirdn2d


@dataclass(frozen=True)
class UpFirDnCase:
    shape: tuple[int, int, int, int]
    taps: tuple  # 1-D (separable) or 2-D nested tuple of filter taps
    up: tuple[int, int]
    down: tuple[int, int]
    padding: tuple[int, int, int, int]
    flip_filter: bool
    gain: float

    def filter(self, dtype=torch.float64, device="cpu") -> torch.Tensor:
        return torch.tensor(self.taps, dtype=dtype, device=device)

    def kwargs(self) -> dict:
        return dict(up=self.up, down=self.down, padding=self.padding, flip_filter=self.flip_filter, gain=self.gain)


def random_upfirdn_cases(count: int, seed: int, max_side: int = 9) -> list[UpFirDnCase]:
    """Random valid configurations: factors 1-3 per axis, odd and even filters, negative padding."""
    rng = random.Random(seed)
    cases: list[UpFirDnCase] = []
    while len(cases) < count:
        up = (rng.randint(1, 3), rng.randint(1, 3))
        down = (rng.randint(1, 3), rng.randint(1, 3))
        separable = rng.random() < 0.4
        fw = rng.randint(1, 8)
        fh = fw if separable else rng.randint(1, 8)
        h, w = rng.randint(1, max_side), rng.randint(1, max_side)
        pad = tuple(rng.randint(-3, 6) for _ in range(4))
        if w * up[0] + pad[0] + pad[1] < fw or h * up[1] + pad[2] + pad[3] < fh:
            continue  # no output: not a valid call
        taps = tuple(round(rng.uniform(0.1, 1.0), 3) for _ in range(fw)) if separable else \
            tuple(tuple(round(rng.uniform(-0.5, 1.0), 3) for _ in range(fw)) for _ in range(fh))
        cases.append(UpFirDnCase((rng.randint(1, 2), rng.randint(1, 3), h, w), taps, up, down, pad,
                                 rng.random() < 0.5, rng.choice([1.0, 2.0, 0.5])))
    return cases

