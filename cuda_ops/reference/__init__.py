"""Plain-PyTorch definitions of every op: the fallback, and the oracle the kernels are tested against."""
from .bias_act import ACTIVATIONS, bias_act
from .conv2d_resample import conv2d_resample
from .filtered_lrelu import filtered_lrelu
from .upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

__all__ = ["ACTIVATIONS", "bias_act", "conv2d_resample", "downsample2d", "filter2d", "filtered_lrelu",
           "setup_filter", "upfirdn2d", "upsample2d"]
