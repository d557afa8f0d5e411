"""Bias, activation, gain and clamp in plain PyTorch: the definition of `bias_act`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Activation:
    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float  # default parameter (e.g. the leaky ReLU slope)
    def_gain: float   # default gain, chosen to keep unit variance for He-initialised weights


ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(lambda x, _: x, 0.0, 1.0),
    "relu": Activation(lambda x, _: F.relu(x), 0.0, math.sqrt(2)),
    "lrelu": Activation(lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2)),
    "tanh": Activation(lambda x, _: torch.tanh(x), 0.0, 1.0),
    "sigmoid": Activation(lambda x, _: torch.sigmoid(x), 0.0, 1.0),
    "elu": Activation(lambda x, _: F.elu(x), 0.0, 1.0),
    "selu": Activation(lambda x, _: F.selu(x), 0.0, 1.0),
    "softplus": Activation(lambda x, _: F.softplus(x), 0.0, 1.0),
    "swish": Activation(lambda x, _: torch.sigmoid(x) * x, 0.0, math.sqrt(2)),
}


def resolve(act: str, alpha: float | None, gain: float | None, clamp: float | None) -> tuple[float, float, float]:
    """Fill in an activation's defaults; clamp -1 means no clamp."""
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; known: {', '.join(ACTIVATIONS)}")
    spec = ACTIVATIONS[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1)
    return alpha, gain, clamp


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """y = clamp(act(x + b) * gain, -clamp, clamp), with b broadcast along `dim`."""
    alpha, gain, clamp = resolve(act, alpha, gain, clamp)
    if b is not None:
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias of shape {tuple(b.shape)} does not match dim {dim} of x {tuple(x.shape)}")
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = ACTIVATIONS[act].func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x
