"""Layers shared by every network family.

Equalised-lr fully connected and convolution layers, z normalisation, the StyleGAN2 modulated
convolution and the mapping network z (+ c) -> w. Parameter names follow NVIDIA's state dicts.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

import cuda_ops
from engine.errors import UnsupportedNetworkError


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit root-mean-square along `dim`."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def truncate(ws: torch.Tensor, w_avg: torch.Tensor, psi: float, cutoff: int | None = None) -> torch.Tensor:
    """The truncation trick, w_avg + psi (ws - w_avg), on layers [0, cutoff) (all when None).

    ws [..., num_ws, w_dim]. The one implementation the mapping networks and the editor share, so a
    truncated latent is bit-identical wherever it is made. psi 1 returns ws itself.
    """
    if psi == 1:
        return ws
    w_avg = w_avg.to(ws.dtype)
    if cutoff is None:
        return w_avg.lerp(ws, psi)
    out = ws.clone()
    out[..., :cutoff, :] = w_avg.lerp(ws[..., :cutoff, :], psi)
    return out


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


# Activations whose output gain restores unit variance after a He-initialised layer (the
# `def_gain` of NVIDIA's bias_act); every other activation has gain 1.
_SQRT2_GAIN_ACTIVATIONS = frozenset({"relu", "lrelu", "swish"})


def activation_gain(activation: str) -> float:
    """Default output gain of `activation`, as cuda_ops.bias_act applies it when gain is None."""
    return math.sqrt(2) if activation in _SQRT2_GAIN_ACTIVATIONS else 1.0


def check_kwargs(kwargs: dict, known: Sequence[str], where: str) -> None:
    """Raise UnsupportedNetworkError naming every kwarg of `kwargs` that is not in `known`."""
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise UnsupportedNetworkError(
            f"{where} got the argument(s) {', '.join(unknown)}, which this version of StyleDeck does "
            f"not know; the network was made by code it cannot reproduce.")


def plain_kwargs(value: Any) -> Any:
    """A deep copy of init kwargs as plain dicts and lists (NVIDIA's pickles hold EasyDicts)."""
    if isinstance(value, dict):
        return {str(k): plain_kwargs(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_kwargs(v) for v in value]
    return copy.deepcopy(value)


class Conv2dLayer(nn.Module):
    """Equalised-lr 2-D convolution with optional FIR up/downsampling, bias, activation and clamp."""

    def __init__(
        self,
        in_channels: int,                 # number of input channels
        out_channels: int,                # number of output channels
        kernel_size: int,                 # width and height of the kernel
        bias: bool = True,                # add a bias before the activation?
        activation: str = "linear",       # activation name, as understood by cuda_ops.bias_act
        up: int = 1,                      # integer upsampling factor
        down: int = 1,                    # integer downsampling factor
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # low-pass filter taps for resampling
        conv_clamp: float | None = None,  # clamp the output to +-conv_clamp; None = no clamp
        channels_last: bool = False,      # keep the weight in channels-last memory format?
        trainable: bool = True,           # parameters (True) or frozen buffers (False)?
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", cuda_ops.setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)  # He scale, applied at run time
        self.act_gain = activation_gain(activation)

        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        bias_value = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias_value) if bias_value is not None else None
        else:  # frozen layers (D's freeze_layers) keep their values as buffers, as NVIDIA's do
            self.register_buffer("weight", weight)
            if bias_value is not None:
                self.register_buffer("bias", bias_value)
            else:
                self.bias = None

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        """[N, in_channels, H, W] -> [N, out_channels, H * up / down, W * up / down]."""
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        # NVIDIA's upsampling layers convolve with the flipped kernel (flip_weight=False when
        # up > 1); their trained weights assume it, so we keep the convention.
        x = cuda_ops.conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                                     padding=self.padding, flip_weight=(self.up == 1))
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return cuda_ops.bias_act(x, b, act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, "
                f"up={self.up}, down={self.down}")


def modulated_conv2d(
    x: torch.Tensor,                       # input activations [N, I, H, W]
    weight: torch.Tensor,                  # shared weight [O, I, kh, kw]
    styles: torch.Tensor,                  # per-sample input-channel scales [N, I]
    noise: torch.Tensor | None = None,     # noise added to the output, broadcastable to [N, O, H', W']
    up: int = 1,                           # integer upsampling factor
    down: int = 1,                         # integer downsampling factor
    padding: int = 0,                      # padding with respect to the upsampled image
    resample_filter: torch.Tensor | None = None,  # low-pass filter from cuda_ops.setup_filter
    demodulate: bool = True,               # normalise each output channel to unit expected variance?
    flip_weight: bool = True,              # False = convolution (NVIDIA's upsampling layers), True = correlation
    fused_modconv: bool = True,            # one grouped convolution per batch (True) or scale the activations (False)?
) -> torch.Tensor:
    """StyleGAN2 weight modulation and demodulation (Karras et al. 2020, eqs. 1-3)."""
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if styles.shape != (batch_size, in_channels):
        raise ValueError(f"styles must be [{batch_size}, {in_channels}], got {tuple(styles.shape)}")

    # In float16 the modulated weights can overflow; rescaling weight and styles by their
    # maxima first changes nothing after demodulation, which divides any scale out again.
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / np.sqrt(in_channels * kh * kw)
                           / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    w = None
    dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, in_channels, 1, 1)  # [N, O, I, kh, kw]
    if demodulate:
        # eq. 3: sigma_j = sqrt(sum_{i,k} w'_{ijk}^2); the output is divided by it
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]

    if not fused_modconv:
        # Scale the activations instead of the weights: one ordinary convolution for the batch.
        x = x * styles.to(x.dtype).reshape(batch_size, in_channels, 1, 1)
        x = cuda_ops.conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, down=down,
                                     padding=padding, flip_weight=flip_weight)
        if demodulate:
            x = x * dcoefs.to(x.dtype).reshape(batch_size, out_channels, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    # Fused: every sample is one group of a grouped convolution over a batch of one.
    if demodulate:
        w = w * dcoefs.reshape(batch_size, out_channels, 1, 1, 1)
    x = x.reshape(1, batch_size * in_channels, *x.shape[2:])           # [1, N*I, H, W]
    w = w.reshape(batch_size * out_channels, in_channels, kh, kw)      # [N*O, I, kh, kw]
    x = cuda_ops.conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                                 groups=batch_size, flip_weight=flip_weight)
    x = x.reshape(batch_size, out_channels, *x.shape[2:])              # [N, O, H', W']
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


MAPPING_KWARGS = ("num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta")


class MappingNetwork(nn.Module):
    """StyleGAN2 mapping network: normalised z (and embedded c) through an MLP to w, broadcast to ws."""

    def __init__(
        self,
        z_dim: int,                          # input latent (Z) dimensionality, 0 = no latent
        c_dim: int,                          # conditioning label (C) dimensionality, 0 = no label
        w_dim: int,                          # intermediate latent (W) dimensionality
        num_ws: int | None,                  # number of ws to output, None = return [N, w_dim]
        num_layers: int = 8,                 # number of mapping layers
        embed_features: int | None = None,   # label embedding width, None = w_dim
        layer_features: int | None = None,   # hidden layer width, None = w_dim
        activation: str = "lrelu",           # activation of every layer
        lr_multiplier: float = 0.01,         # learning-rate multiplier of the mapping layers
        w_avg_beta: float | None = 0.998,    # decay of the running average of w, None = do not track
    ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor | None,                 # [N, z_dim]
        c: torch.Tensor | None,                 # [N, c_dim]
        truncation_psi: float = 1,              # w_avg + psi * (w - w_avg); 1 = off
        truncation_cutoff: int | None = None,   # truncate only ws[:, :cutoff]; None = all
        update_emas: bool = False,              # update w_avg from this batch?
        skip_w_avg_update: bool | None = None,  # stylegan2-ada-pytorch spelling (see below)
    ) -> torch.Tensor:
        """ws [N, num_ws, w_dim] (or w [N, w_dim] when num_ws is None)."""
        x = None
        if self.z_dim > 0:
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y  # [N, z_dim + embed_features]
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)                      # -> [N, w_dim]

        # stylegan2-ada-pytorch updated w_avg whenever training unless skip_w_avg_update was set;
        # stylegan3 updates only on update_emas. A caller naming skip_w_avg_update gets the former.
        if skip_w_avg_update is not None:
            update = self.training and not skip_w_avg_update
        else:
            update = update_emas
        if update and self.w_avg_beta is not None and self.num_ws is not None:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])        # [N, num_ws, w_dim]
        if truncation_psi != 1:
            if self.w_avg_beta is None or self.num_ws is None:
                raise ValueError("truncation needs w_avg, which this mapping network does not track")
            x = truncate(x, self.w_avg, truncation_psi, truncation_cutoff)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"
