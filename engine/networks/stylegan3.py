"""StyleGAN3 generator (alias-free; T and R configurations), with NVIDIA's names and init kwargs.

Read top down: low-pass filter design, the user input transform, modulated convolution, the
mapping network, the Fourier-feature input, one synthesis layer, the synthesis network, Generator.
Everything follows "Alias-Free Generative Adversarial Networks" (Karras et al., 2021); parameter
and buffer names are NVIDIA's so their state dicts load with strict=True.
"""
from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

import cuda_ops
from engine.errors import UnsupportedNetworkError
from engine.networks.layers import FullyConnectedLayer, normalize_2nd_moment, truncate

__all__ = ["Generator", "MappingNetwork", "SynthesisInput", "SynthesisLayer", "SynthesisNetwork",
           "design_lowpass_filter", "input_transform", "input_transforms", "kaiser_beta", "modulated_conv2d"]

# ----------------------------------------------------------------------------------------------
# Filter design (the paper's appendix: Kaiser-windowed sinc, and a jinc for the radial R filters)


def kaiser_beta(numtaps: int, width: float, fs: float) -> float:
    """Kaiser window beta for a filter of `numtaps` taps and transition `width` (Hz at rate `fs`).

    Kaiser's empirical design formulas: the stopband attenuation a window of N taps reaches over a
    transition band of normalised width dw is A = 2.285 (N - 1) pi dw + 7.95 dB, and the window
    parameter reaching A is 0.1102 (A - 8.7) above 50 dB, 0.5842 (A - 21)^0.4 + 0.07886 (A - 21)
    between 21 and 50 dB, and 0 below.
    """
    atten = 2.285 * (numtaps - 1) * np.pi * (width / (fs / 2)) + 7.95   # dw normalised to Nyquist
    if atten > 50:
        return 0.1102 * (atten - 8.7)
    if atten > 21:
        return 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21)
    return 0.0


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float,
                          radial: bool = False) -> torch.Tensor | None:
    """Windowed low-pass FIR filter with unit DC gain; None for a single tap (no filtering).

    Separable: 1-D taps [numtaps] of a Kaiser-windowed sinc. Radial: 2-D taps [numtaps, numtaps]
    of a jinc (the ideal circularly band-limited filter) times the separable Kaiser window.
    """
    if numtaps < 1:
        raise ValueError(f"a filter needs at least one tap, got {numtaps}")
    if numtaps == 1:
        return None
    window = np.kaiser(numtaps, kaiser_beta(numtaps, width, fs))       # symmetric window, [numtaps]
    t = (np.arange(numtaps) - (numtaps - 1) / 2) / fs                   # tap positions in seconds
    if not radial:
        f = np.sinc(2 * cutoff * t) * window                            # ideal low-pass: sinc(2 fc t)
    else:
        r = np.hypot(*np.meshgrid(t, t))                                # [numtaps, numtaps]
        arg = torch.from_numpy(2 * np.pi * cutoff * r)                  # float64
        j1 = torch.special.bessel_j1(arg).numpy()
        # jinc: J1(2 pi fc r) / (pi r), whose limit at r = 0 is fc (only odd numtaps reach r = 0).
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(r > 0, j1 / (np.pi * np.maximum(r, 1e-300)), cutoff)
        f = f * np.outer(window, window)
    f = f / np.sum(f)                                                   # unit gain at DC
    return torch.as_tensor(f, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# The user-facing input transform


def input_transform(rotate: float = 0.0, translate: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The value for `G.synthesis.input.transform` that rotates the image by `rotate` degrees and
    translates it by `translate` (in image widths), as NVIDIA's gen_images.py --rotate/--translate.

    As displayed (rows downwards), positive angles turn the image counter-clockwise, +x moves it
    right and +y moves it down; tests/engine/test_stylegan3.py checks both.

    Their matrix is m = [[c, s, tx], [-s, c, ty], [0, 0, 1]] (c, s = cos, sin of the angle); the
    input layer maps output coordinates to feature coordinates, so the buffer holds inv(m).
    """
    a = math.radians(rotate)
    c, s = math.cos(a), math.sin(a)
    m = np.array([[c, s, translate[0]], [-s, c, translate[1]], [0.0, 0.0, 1.0]], dtype=np.float64)
    return np.linalg.inv(m).astype(np.float32)


def input_transforms(transforms: Iterable[Sequence[float]]) -> torch.Tensor:
    """[N, 3, 3] per-sample input transforms (SynthesisInput.forward's `transform`) for N
    (rotate, tx, ty) rows, each as input_transform(rotate, (tx, ty))."""
    return torch.from_numpy(np.stack([input_transform(float(r), (float(tx), float(ty))) for r, tx, ty in transforms]))


# ----------------------------------------------------------------------------------------------
# Modulated convolution


def modulated_conv2d(
    x: torch.Tensor,                          # input [N, I, H, W]
    w: torch.Tensor,                          # weight [O, I, kh, kw]
    s: torch.Tensor,                          # styles [N, I]
    demodulate: bool = True,                  # normalise each output channel's weights per sample
    padding: int = 0,                         # zero padding on every side
    input_gain: torch.Tensor | None = None,   # [] or [I]: scale of the input, folded into w
    fused_modconv: bool = True,               # one grouped conv (True) or scale the activations (False)?
) -> torch.Tensor:
    """Per-sample modulated (and demodulated) convolution: [N, O, H', W'].

    fused_modconv=True folds the styles into per-sample weights (one grouped conv; best for a batch
    of one); False scales the activations around one shared-weight conv for the whole batch, the
    same function in another order (best for larger batches on a GPU).
    """
    n = x.shape[0]
    out_ch, in_ch, kh, kw = w.shape
    assert s.shape == (n, in_ch), (s.shape, n, in_ch)
    if demodulate:
        # Pre-normalise w and s to unit RMS so the products below stay in float16's range.
        # Demodulation divides out any per-sample scale, so normalising s per sample (NVIDIA
        # uses one scalar over the whole batch) gives the same image and keeps samples independent.
        w = w * w.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean(dim=1, keepdim=True).rsqrt()
    if not fused_modconv:
        return _scaled_modconv(x, w, s, demodulate, padding, input_gain)
    w = w.unsqueeze(0) * s[:, None, :, None, None]                       # [N, O, I, kh, kw]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()          # [N, O]
        w = w * dcoefs[:, :, None, None, None]
    if input_gain is not None:
        w = w * input_gain.expand(n, in_ch)[:, None, :, None, None]
    x = x.reshape(1, n * in_ch, *x.shape[2:])                            # samples become groups
    w = w.reshape(n * out_ch, in_ch, kh, kw)
    x = torch.nn.functional.conv2d(x, w.to(x.dtype), padding=padding, groups=n)
    return x.reshape(n, out_ch, *x.shape[2:])                            # [N, O, H', W']


def _scaled_modconv(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, demodulate: bool, padding: int,
                    input_gain: torch.Tensor | None) -> torch.Tensor:
    """modulated_conv2d with the styles on the activations: x s -> conv(w) -> times the demodulation."""
    n, in_ch = s.shape
    out_ch, _, kh, kw = w.shape
    scale = s if input_gain is None else s * input_gain.expand(n, in_ch)          # [N, I]
    x = x * scale.to(x.dtype)[:, :, None, None]
    if not demodulate:
        return torch.nn.functional.conv2d(x, w.to(x.dtype), padding=padding)
    # sum_{i,k} (w_oik s_ni)^2 without the [N, O, I, kh, kw] tensor: (s^2) @ (sum_k w^2)^T.
    dcoefs = (s.square() @ w.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()        # [N, O]
    # The He scale moves from the demodulation into the shared weight so that half-precision
    # activations keep about unit scale inside the conv; the product is unchanged.
    fan_in = in_ch * kh * kw
    x = torch.nn.functional.conv2d(x, (w * (1 / np.sqrt(fan_in))).to(x.dtype), padding=padding)
    return x * (dcoefs * np.sqrt(fan_in)).to(x.dtype)[:, :, None, None]


# ----------------------------------------------------------------------------------------------
# Mapping network


class MappingNetwork(nn.Module):
    def __init__(
        self,
        z_dim: int,                   # input latent (z) width; 0 for none
        c_dim: int,                   # conditioning label (c) width; 0 for none
        w_dim: int,                   # intermediate latent (w) width
        num_ws: int,                  # how many copies of w to output
        num_layers: int = 2,          # fully connected layers
        lr_multiplier: float = 0.01,  # learning-rate multiplier of the layers
        w_avg_beta: float = 0.998,    # decay of the running average of w (truncation centre)
    ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        # The label is embedded to w_dim features and concatenated to z.
        self.embed = FullyConnectedLayer(c_dim, w_dim) if c_dim > 0 else None
        features = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * num_layers
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation="lrelu",
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        """ws [N, num_ws, w_dim] for z [N, z_dim] and c [N, c_dim]."""
        assert z.ndim == 2 and z.shape[1] == self.z_dim, (z.shape, self.z_dim)
        x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            assert c is not None and c.shape[1:] == (self.c_dim,), (None if c is None else c.shape)
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])                   # [N, num_ws, w_dim]
        return truncate(x, self.w_avg, truncation_psi, truncation_cutoff)

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim:d}, c_dim={self.c_dim:d}, w_dim={self.w_dim:d}, num_ws={self.num_ws:d}"


# ----------------------------------------------------------------------------------------------
# Fourier-feature input


class SynthesisInput(nn.Module):
    def __init__(
        self,
        w_dim: int,               # intermediate latent width
        channels: int,            # number of output channels (Fourier features)
        size: int | list[int],    # output size in pixels, int or [width, height]
        sampling_rate: float,     # output sampling rate (pixels per unit of the feature space)
        bandwidth: float,         # highest frequency of the features
    ):
        super().__init__()
        self.w_dim = w_dim
        self.channels = channels
        self.size = np.broadcast_to(np.asarray(size), [2])
        self.sampling_rate = sampling_rate
        self.bandwidth = bandwidth

        # Random directions, radii drawn so frequencies concentrate inside the band, scaled to it.
        freqs = torch.randn([channels, 2])
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs /= radii * radii.square().exp().pow(0.25)
        freqs *= bandwidth
        phases = torch.rand([channels]) - 0.5

        self.weight = nn.Parameter(torch.randn([channels, channels]))
        # Per-sample rotation (cos, sin) and translation (x, y) predicted from w; starts at identity.
        self.affine = FullyConnectedLayer(w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])
        self.register_buffer("transform", torch.eye(3, 3))   # user transform, see input_transform()
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", phases)

    def forward(self, w: torch.Tensor, transform: torch.Tensor | None = None) -> torch.Tensor:
        """Features [N, channels, height, width] for w [N, w_dim].

        transform: [N, 3, 3], one user transform per sample (e.g. animation frames); None uses the
        `transform` buffer for every sample, as NVIDIA's code does.
        """
        n = w.shape[0]
        # Learned per-sample similarity: rotate by the unit vector (t0, t1), translate by -(t2, t3).
        t = self.affine(w)                                                # [N, 4]
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        cos, sin, tx, ty = t.unbind(dim=1)
        zero, one = torch.zeros_like(cos), torch.ones_like(cos)
        m_r = torch.stack([cos, -sin, zero, sin, cos, zero, zero, zero, one], dim=1).reshape(n, 3, 3)
        m_t = torch.stack([one, zero, -tx, zero, one, -ty, zero, zero, one], dim=1).reshape(n, 3, 3)
        user = self.transform.unsqueeze(0) if transform is None else transform.to(m_r)
        transforms = m_r @ m_t @ user                                     # [N, 3, 3]

        # sin(2 pi (f . (A p + b) + phase)) = sin(2 pi ((f A) . p + f . b + phase))
        phases = self.phases.unsqueeze(0) + (self.freqs.unsqueeze(0) @ transforms[:, :2, 2:]).squeeze(2)
        freqs = self.freqs.unsqueeze(0) @ transforms[:, :2, :2]           # [N, C, 2]
        # Fade out features that the transform pushes above the band, to avoid aliasing.
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth)
                      / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)   # [N, C]

        # Pixel centres in feature-space units, centred on the origin: (j + 0.5 - size / 2) / rate.
        width, height = int(self.size[0]), int(self.size[1])
        gx = (torch.arange(width, device=w.device, dtype=torch.float32) + 0.5 - width / 2) / self.sampling_rate
        gy = (torch.arange(height, device=w.device, dtype=torch.float32) + 0.5 - height / 2) / self.sampling_rate
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=2)   # [H, W, 2] as (x, y)

        x = grid.reshape(1, height * width, 2) @ freqs.transpose(1, 2)     # [N, H*W, C]
        x = x + phases.unsqueeze(1)
        x = torch.sin(x * (2 * np.pi)) * amplitudes.unsqueeze(1)
        x = x @ (self.weight / np.sqrt(self.channels)).t()                 # channel mixing
        x = x.reshape(n, height, width, self.channels).permute(0, 3, 1, 2) # [N, C, H, W]
        return x.contiguous()

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim:d}, channels={self.channels:d}, size={list(self.size)}, "
                f"sampling_rate={self.sampling_rate:g}, bandwidth={self.bandwidth:g}")


# ----------------------------------------------------------------------------------------------
# One synthesis layer: modulated conv, then up-filter / leaky ReLU / down-filter


class SynthesisLayer(nn.Module):
    def __init__(
        self,
        w_dim: int,                         # intermediate latent width
        is_torgb: bool,                     # the last layer: 1x1, no demodulation, linear
        is_critically_sampled: bool,        # cutoff at Nyquist: no radial down filter in R
        use_fp16: bool,                     # run in float16 (CUDA only)
        in_channels: int,
        out_channels: int,
        in_size: int | list[int],           # input size in pixels, int or [width, height]
        out_size: int | list[int],          # output size in pixels
        in_sampling_rate: int,
        out_sampling_rate: int,
        in_cutoff: float,                   # cutoff of the input signal
        out_cutoff: float,                  # cutoff of the output signal
        in_half_width: float,               # transition half-width of the input signal
        out_half_width: float,              # transition half-width of the output signal
        conv_kernel: int = 3,               # 3 (T config) or 1 (R config)
        filter_size: int = 6,               # filter taps per unit of the resampling factor
        lrelu_upsampling: int = 2,          # oversampling of the nonlinearity
        use_radial_filters: bool = False,   # R config: radial (rotation-invariant) down filters
        conv_clamp: float | None = 256,     # clamp the output to +-conv_clamp
        magnitude_ema_beta: float = 0.999,  # decay of the input-magnitude running average
    ):
        super().__init__()
        self.w_dim = w_dim
        self.is_torgb = is_torgb
        self.is_critically_sampled = is_critically_sampled
        self.use_fp16 = use_fp16
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.in_size = np.broadcast_to(np.asarray(in_size), [2])
        self.out_size = np.broadcast_to(np.asarray(out_size), [2])
        self.in_sampling_rate = in_sampling_rate
        self.out_sampling_rate = out_sampling_rate
        # The nonlinearity runs at the higher of the two rates, oversampled (not in ToRGB).
        self.tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.in_cutoff = in_cutoff
        self.out_cutoff = out_cutoff
        self.in_half_width = in_half_width
        self.out_half_width = out_half_width
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp = conv_clamp
        self.magnitude_ema_beta = magnitude_ema_beta

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, self.conv_kernel, self.conv_kernel]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))

        # Up filter: from the input rate to the temporary rate, keeping the input band.
        self.up_factor = int(np.rint(self.tmp_sampling_rate / in_sampling_rate))
        assert in_sampling_rate * self.up_factor == self.tmp_sampling_rate
        self.up_taps = filter_size * self.up_factor if self.up_factor > 1 and not is_torgb else 1
        self.register_buffer("up_filter", design_lowpass_filter(
            numtaps=self.up_taps, cutoff=in_cutoff, width=in_half_width * 2, fs=self.tmp_sampling_rate))

        # Down filter: from the temporary rate to the output rate, keeping the output band.
        self.down_factor = int(np.rint(self.tmp_sampling_rate / out_sampling_rate))
        assert out_sampling_rate * self.down_factor == self.tmp_sampling_rate
        self.down_taps = filter_size * self.down_factor if self.down_factor > 1 and not is_torgb else 1
        self.down_radial = use_radial_filters and not is_critically_sampled
        self.register_buffer("down_filter", design_lowpass_filter(
            numtaps=self.down_taps, cutoff=out_cutoff, width=out_half_width * 2, fs=self.tmp_sampling_rate,
            radial=self.down_radial))

        # Padding so that the output has out_size pixels: the conv grows the input by
        # kernel - 1, upsampling multiplies by up_factor, each filter eats taps - 1, and
        # decimation keeps every down_factor-th sample, i.e. (out - 1) * down + 1 of them.
        pad_total = (self.out_size - 1) * self.down_factor + 1
        pad_total -= (self.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += self.up_taps + self.down_taps - 2
        # The extra up_factor // 2 on the low side centres the zero-inserted samples.
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = [int(pad_lo[0]), int(pad_hi[0]), int(pad_lo[1]), int(pad_hi[1])]

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", force_fp32: bool = False,
                update_emas: bool = False, fused_modconv: bool = True,
                half_dtype: torch.dtype = torch.float16) -> torch.Tensor:
        """[N, out_channels, out_h, out_w] from x [N, in_channels, in_h, in_w] and w [N, w_dim].

        noise_mode is accepted for signature compatibility with StyleGAN2 and ignored: no noise here.
        fused_modconv picks the form of the modulated convolution (see modulated_conv2d); half_dtype
        is what an fp16 layer runs in on CUDA (the render fast path may pick bfloat16).
        """
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        assert x.shape[1:] == (self.in_channels, self.in_size[1], self.in_size[0]), (x.shape, self.in_size)

        if update_emas:
            with torch.no_grad():
                magnitude_cur = x.detach().to(torch.float32).square().mean()
                self.magnitude_ema.copy_(magnitude_cur.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        input_gain = self.magnitude_ema.rsqrt()          # normalise the input to unit RMS

        styles = self.affine(w)                          # [N, in_channels]
        if self.is_torgb:
            # No demodulation in ToRGB: apply the equalised-lr gain of the weight through the styles.
            styles = styles * (1 / np.sqrt(self.in_channels * self.conv_kernel ** 2))

        # Half precision only on CUDA, as NVIDIA does: CPU float16 convolutions are slow or missing,
        # and would change the image a CPU user sees against the reference.
        use_half = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = half_dtype if use_half else torch.float32
        x = modulated_conv2d(x.to(dtype), self.weight, styles, demodulate=not self.is_torgb,
                             padding=self.conv_kernel - 1, input_gain=input_gain, fused_modconv=fused_modconv)

        gain = 1 if self.is_torgb else np.sqrt(2)        # He gain of the leaky ReLU
        slope = 1 if self.is_torgb else 0.2              # slope 1: ToRGB is linear
        x = cuda_ops.filtered_lrelu(x, fu=self.up_filter, fd=self.down_filter, b=self.bias.to(x.dtype),
                                    up=self.up_factor, down=self.down_factor, padding=self.padding,
                                    gain=gain, slope=slope, clamp=self.conv_clamp)
        assert x.shape[1:] == (self.out_channels, self.out_size[1], self.out_size[0]), (x.shape, self.out_size)
        assert x.dtype == dtype
        return x

    def extra_repr(self) -> str:
        return "\n".join([
            f"w_dim={self.w_dim:d}, is_torgb={self.is_torgb},",
            f"is_critically_sampled={self.is_critically_sampled}, use_fp16={self.use_fp16},",
            f"in_sampling_rate={self.in_sampling_rate:g}, out_sampling_rate={self.out_sampling_rate:g},",
            f"in_cutoff={self.in_cutoff:g}, out_cutoff={self.out_cutoff:g},",
            f"in_half_width={self.in_half_width:g}, out_half_width={self.out_half_width:g},",
            f"in_size={list(self.in_size)}, out_size={list(self.out_size)},",
            f"in_channels={self.in_channels:d}, out_channels={self.out_channels:d}"])


# ----------------------------------------------------------------------------------------------
# Synthesis network


class SynthesisNetwork(nn.Module):
    def __init__(
        self,
        w_dim: int,                          # intermediate latent width
        img_resolution: int,                 # output side in pixels
        img_channels: int,                   # 3 for RGB
        channel_base: int = 32768,           # channels scale with channel_base / cutoff
        channel_max: int = 512,              # cap on any layer's channels
        num_layers: int = 14,                # layers, not counting the input and ToRGB
        num_critical: int = 2,               # last layers sampled critically (cutoff at Nyquist)
        first_cutoff: float = 2,             # cutoff of the first layer, f_{c,0}
        first_stopband: float = 2 ** 2.1,    # stopband of the first layer, f_{t,0}
        last_stopband_rel: float = 2 ** 0.3, # stopband of the last layer relative to its cutoff
        margin_size: int = 10,               # pixels of margin around each intermediate image
        output_scale: float = 0.25,          # scale of the output image
        num_fp16_res: int = 4,               # layers at the highest this many octaves run in float16
        **layer_kwargs,                      # handed to every SynthesisLayer
    ):
        super().__init__()
        self.w_dim = w_dim
        self.num_ws = num_layers + 2
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.num_layers = num_layers
        self.num_critical = num_critical
        self.margin_size = margin_size
        self.output_scale = output_scale
        self.num_fp16_res = num_fp16_res

        # Per-layer schedule (paper, sec. 3.2 and fig. 4): cutoff and stopband grow geometrically
        # from the first layer to the last non-critical one, then stay; the sampling rate is the
        # smallest power of two holding the stopband; channels shrink as the cutoff grows.
        last_cutoff = img_resolution / 2                               # f_{c,N}
        last_stopband = last_cutoff * last_stopband_rel                # f_{t,N}
        exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
        cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
        stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
        sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
        half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
        sizes = sampling_rates + margin_size * 2
        sizes[-2:] = img_resolution                                    # no margin in the last two
        channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
        channels[-1] = img_channels

        self.input = SynthesisInput(w_dim=w_dim, channels=int(channels[0]), size=int(sizes[0]),
                                    sampling_rate=sampling_rates[0], bandwidth=cutoffs[0])
        self.layer_names: list[str] = []
        for idx in range(num_layers + 1):
            prev = max(idx - 1, 0)
            layer = SynthesisLayer(
                w_dim=w_dim, is_torgb=(idx == num_layers),
                is_critically_sampled=(idx >= num_layers - num_critical),
                use_fp16=bool(sampling_rates[idx] * (2 ** num_fp16_res) > img_resolution),
                in_channels=int(channels[prev]), out_channels=int(channels[idx]),
                in_size=int(sizes[prev]), out_size=int(sizes[idx]),
                in_sampling_rate=int(sampling_rates[prev]), out_sampling_rate=int(sampling_rates[idx]),
                in_cutoff=cutoffs[prev], out_cutoff=cutoffs[idx],
                in_half_width=half_widths[prev], out_half_width=half_widths[idx],
                **layer_kwargs)
            name = f"L{idx}_{layer.out_size[0]}_{layer.out_channels}"   # -> "synthesis.L3_36_512..."
            setattr(self, name, layer)
            self.layer_names.append(name)

    def forward(self, ws: torch.Tensor, transform: torch.Tensor | None = None, **layer_kwargs) -> torch.Tensor:
        """img [N, img_channels, img_resolution, img_resolution] for ws [N, num_ws, w_dim].

        transform: optional [N, 3, 3] input transform per sample (see SynthesisInput.forward).
        layer_kwargs: noise_mode (ignored), force_fp32, update_emas, fused_modconv, half_dtype.
        """
        assert ws.shape[1:] == (self.num_ws, self.w_dim), (ws.shape, self.num_ws, self.w_dim)
        ws = ws.to(torch.float32).unbind(dim=1)          # ws[0] drives the input, ws[i] layer i-1
        x = self.input(ws[0], transform)
        for name, w in zip(self.layer_names, ws[1:]):
            x = getattr(self, name)(x, w, **layer_kwargs)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x.to(torch.float32)

    def extra_repr(self) -> str:
        return "\n".join([
            f"w_dim={self.w_dim:d}, num_ws={self.num_ws:d},",
            f"img_resolution={self.img_resolution:d}, img_channels={self.img_channels:d},",
            f"num_layers={self.num_layers:d}, num_critical={self.num_critical:d},",
            f"margin_size={self.margin_size:d}, num_fp16_res={self.num_fp16_res:d}"])


# ----------------------------------------------------------------------------------------------
# Generator


def _kwarg_names(fn) -> set[str]:
    return {p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}


# What a pickle may record: SynthesisNetwork's own kwargs plus those it hands every layer.
_SYNTHESIS_KWARGS = (_kwarg_names(SynthesisNetwork.__init__) | _kwarg_names(SynthesisLayer.__init__)) - {
    "w_dim", "img_resolution", "img_channels", "is_torgb", "is_critically_sampled", "use_fp16",
    "in_channels", "out_channels", "in_size", "out_size", "in_sampling_rate", "out_sampling_rate",
    "in_cutoff", "out_cutoff", "in_half_width", "out_half_width"}
_MAPPING_KWARGS = _kwarg_names(MappingNetwork.__init__) - {"z_dim", "c_dim", "w_dim", "num_ws"}


class Generator(nn.Module):
    def __init__(
        self,
        z_dim: int,                      # input latent (z) width
        c_dim: int,                      # conditioning label (c) width; 0 for none
        w_dim: int,                      # intermediate latent (w) width
        img_resolution: int,             # output side in pixels
        img_channels: int,               # 3 for RGB
        mapping_kwargs: dict[str, Any] = {},   # noqa: B006 (NVIDIA's default; never mutated)
        **synthesis_kwargs,              # SynthesisNetwork and SynthesisLayer kwargs
    ):
        super().__init__()
        for name, known, where in ((set(mapping_kwargs), _MAPPING_KWARGS, "mapping_kwargs"),
                                   (set(synthesis_kwargs), _SYNTHESIS_KWARGS, "synthesis kwargs")):
            if unknown := sorted(name - known):
                raise UnsupportedNetworkError(
                    f"StyleGAN3 Generator: unknown {where} {', '.join(map(repr, unknown))}; "
                    f"known ones are {', '.join(sorted(known))}. The network may come from a newer "
                    "or modified StyleGAN3 that StyleDeck cannot build.")
        # Plain deep copy, so that type(G)(**G.init_kwargs) rebuilds the architecture.
        self.init_kwargs: dict[str, Any] = copy.deepcopy(dict(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
            mapping_kwargs=dict(mapping_kwargs), **synthesis_kwargs))
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, update_emas: bool = False,
                **synthesis_kwargs) -> torch.Tensor:
        """img [N, img_channels, H, W] in ~[-1, 1] for z [N, z_dim] and c [N, c_dim]."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)
