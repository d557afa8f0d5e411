"""Layers shared by every network family.

Equalised-lr fully connected and convolution layers, z normalisation, the StyleGAN2 modulated
convolution and the mapping network z (+ c) -> w. Parameter names follow NVIDIA's state dicts.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

import cuda_ops
from cuda_ops.reference.bias_act import ACTIVATIONS
from engine.errors import UnsupportedNetworkError


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit root-mean-square along `dim`."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class FullyConnectedLayer(nn.Module):
    def __init__(
        self,
        in_features: int,            # number of input features
        out_features: int,           # number of output features
        bias: bool = True,           # apply an additive bias before the activation?
        activation: str = "linear",  # activation name, as understood by cuda_ops.bias_act
        lr_multiplier: float = 1,    # learning-rate multiplier (mapping network: 0.01)
        bias_init: float | np.ndarray = 0,  # initial value of the bias
        weight_init: float = 1,      # initial scale of the weight (StyleGAN3 affine layers)
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) * (weight_init / lr_multiplier))
        bias_init = np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [out_features])
        self.bias = nn.Parameter(torch.from_numpy(bias_init / lr_multiplier)) if bias else None
        # Equalised learning rate: the He scale is applied at run time, not at init.
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return cuda_ops.bias_act(x, b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"
