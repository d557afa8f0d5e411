"""Test helper: WRITE network pickles in NVIDIA's format from our modules.

The files have the structure of real stylegan2-ada-pytorch / stylegan3 snapshots: a dict of
G, D, G_ema, augment_pipe, training_set_kwargs, where every network and layer is pickled as
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with meta = dict(type='class',
version, module_src, class_name, state), `state` being a module __dict__ (`_parameters`,
`_buffers`, `_modules`, hooks as OrderedDicts, `_init_args`, `_init_kwargs` with
`dnnlib.util.EasyDict`s and numpy scalars). Tensors are pickled by torch itself.

`module_src` is a stand-in written for these tests: it has the class layout of NVIDIA's modules
(so a loader can tell the families apart by searching it) but none of their code, and running it
would write the file named by $STYLEDECK_SOURCE_TRAP, so a test can prove nobody ran it.

To make pickle emit globals named torch_utils.persistence and dnnlib.util, throwaway modules of
those names sit in sys.modules only while dumping; whatever was there before is put back.
"""
from __future__ import annotations

import collections
import contextlib
import os
import pickle
import sys
import types
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

TRAP_ENV = "STYLEDECK_SOURCE_TRAP"

_TRAP = f"""
import os
# Running this stand-in source is exactly what a loader must never do: it leaves a mark.
open(os.environ.get({TRAP_ENV!r}, os.devnull), 'w').write('module_src was executed')
import numpy as np
import torch
from torch_utils import misc
from torch_utils import persistence
"""


def _stub_source(doc: str, imports: str, classes: list[str]) -> str:
    body = "".join(f"\n@persistence.persistent_class\nclass {name}(torch.nn.Module):\n"
                   f"    def __init__(self, *args, **kwargs):\n        super().__init__()\n" for name in classes)
    return f'"""{doc}"""\n{_TRAP}{imports}\n@misc.profiled_function\ndef modulated_conv2d(*args, **kwargs):\n' \
           f"    raise NotImplementedError\n{body}"


_D_CLASSES = ["DiscriminatorBlock", "MinibatchStdLayer", "DiscriminatorEpilogue", "Discriminator"]
SOURCES = {
    # stylegan3 repo: training/networks_stylegan2.py (StyleGAN2 G and the shared D)
    "stylegan3/networks_stylegan2": _stub_source(
        "Stand-in for training/networks_stylegan2.py (test fixture, not NVIDIA's code).",
        "from torch_utils.ops import conv2d_resample, upfirdn2d, bias_act, fma\n",
        ["FullyConnectedLayer", "Conv2dLayer", "MappingNetwork", "SynthesisLayer", "ToRGBLayer",
         "SynthesisBlock", "SynthesisNetwork", "Generator", *_D_CLASSES]),
    # stylegan3 repo: training/networks_stylegan3.py
    "stylegan3/networks_stylegan3": _stub_source(
        "Stand-in for training/networks_stylegan3.py (test fixture, not NVIDIA's code).",
        "from torch_utils.ops import conv2d_gradfix, filtered_lrelu, bias_act\n",
        ["FullyConnectedLayer", "MappingNetwork", "SynthesisInput", "SynthesisLayer", "SynthesisNetwork",
         "Generator"]),
    # stylegan2-ada-pytorch: training/networks.py
    "ada/networks": _stub_source(
        "Stand-in for stylegan2-ada-pytorch training/networks.py (test fixture, not NVIDIA's code).",
        "from torch_utils.ops import conv2d_resample, upfirdn2d, bias_act, fma\n",
        ["FullyConnectedLayer", "Conv2dLayer", "MappingNetwork", "SynthesisLayer", "ToRGBLayer",
         "SynthesisBlock", "SynthesisNetwork", "Generator", *_D_CLASSES]),
    "augment": _stub_source("Stand-in for training/augment.py (test fixture).",
                            "from torch_utils.ops import upfirdn2d, grid_sample_gradfix, conv2d_gradfix\n",
                            ["AugmentPipe"]),
}


class AugmentPipe(nn.Module):
    """A small module in the shape of NVIDIA's AugmentPipe: a probability buffer and plain settings."""

    def __init__(self, xflip: float = 1, rotate90: float = 1, xint: float = 1):
        super().__init__()
        self.xflip, self.rotate90, self.xint = float(xflip), float(rotate90), float(xint)
        self.register_buffer("p", torch.zeros([]))
        self.register_buffer("Hz_geom", torch.randn(12))
        self.init_kwargs = dict(xflip=xflip, rotate90=rotate90, xint=xint)


_HOOK_DICTS = ("_backward_pre_hooks", "_backward_hooks", "_forward_hooks", "_forward_hooks_with_kwargs",
               "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
               "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
               "_load_state_dict_post_hooks")


def _is_plain(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str, type(None), np.ndarray, np.generic)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return False


@contextlib.contextmanager
def _nvidia_module_names() -> Iterator[tuple[Any, type]]:
    """Throwaway torch_utils.persistence and dnnlib.util in sys.modules, only for the `with` block."""
    names = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")
    saved = {name: sys.modules.get(name) for name in names}
    mods = {name: types.ModuleType(name) for name in names}

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - only its name is pickled
        raise AssertionError("writer stub called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    easy_dict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    mods["torch_utils"].persistence = mods["torch_utils.persistence"]
    mods["dnnlib.util"].EasyDict = easy_dict
    mods["dnnlib"].util = mods["dnnlib.util"]
    mods["dnnlib"].EasyDict = easy_dict
    sys.modules.update(mods)
    try:
        yield _reconstruct_persistent_obj, easy_dict
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _to_easydict(value: Any, easy_dict: type, numpy_scalars: bool) -> Any:
    """Nested dicts -> EasyDicts; numbers -> numpy scalars when asked (as NVIDIA's configs sometimes hold)."""
    if isinstance(value, dict):
        return easy_dict({k: _to_easydict(v, easy_dict, numpy_scalars) for k, v in value.items()})
    if numpy_scalars and isinstance(value, float):
        return np.float64(value)
    if numpy_scalars and isinstance(value, int) and not isinstance(value, bool):
        return np.int64(value)
    return value


def _nvidia_init_kwargs(key: str, net: nn.Module, repo: str) -> dict[str, Any]:
    kwargs = dict(net.init_kwargs)
    if repo == "ada" and type(net).__module__.endswith("stylegan2") and key != "D":
        # stylegan2-ada-pytorch passed synthesis settings as one dict, synthesis_kwargs
        top = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs")
        synthesis = {k: v for k, v in kwargs.items() if k not in top}
        synthesis.setdefault("num_fp16_res", 4)   # the stylegan3-form defaults the flat kwargs implied
        synthesis.setdefault("conv_clamp", 256)
        kwargs = {k: v for k, v in kwargs.items() if k in top}
        kwargs["synthesis_kwargs"] = synthesis
    return kwargs


def _source_for(net: nn.Module, repo: str) -> str:
    module = type(net).__module__
    if isinstance(net, AugmentPipe):
        return SOURCES["augment"]
    if module.endswith("stylegan3"):
        if repo == "ada":
            raise ValueError("stylegan2-ada-pytorch has no StyleGAN3")
        return SOURCES["stylegan3/networks_stylegan3"]
    return SOURCES["ada/networks" if repo == "ada" else "stylegan3/networks_stylegan2"]


class _NvidiaPickler(pickle.Pickler):
    """Pickles every nn.Module the way NVIDIA's persistence decorator does."""

    def __init__(self, file, protocol, reconstruct, easy_dict, sources, kwargs_by_module, numpy_scalars):
        super().__init__(file, protocol=protocol)
        self._reconstruct, self._easy_dict = reconstruct, easy_dict
        self._sources, self._kwargs = sources, kwargs_by_module
        self._numpy_scalars = numpy_scalars

    def reducer_override(self, obj: Any) -> Any:
        if not isinstance(obj, nn.Module):
            return NotImplemented
        state: dict[str, Any] = {k: v for k, v in vars(obj).items()
                                 if not k.startswith("_") and k not in ("init_kwargs", "training") and _is_plain(v)}
        state.update(
            training=False,
            _parameters=collections.OrderedDict(obj._parameters),
            _buffers=collections.OrderedDict(obj._buffers),
            _non_persistent_buffers_set=set(obj._non_persistent_buffers_set),
            _modules=collections.OrderedDict(obj._modules),
            _is_full_backward_hook=None,
            _init_args=(),
            _init_kwargs=_to_easydict(self._kwargs.get(id(obj), {}), self._easy_dict, self._numpy_scalars),
        )
        state["_init_kwargs"] = dict(state["_init_kwargs"])  # NVIDIA deep-copies **kwargs: a plain dict at the top
        state.update({name: collections.OrderedDict() for name in _HOOK_DICTS})
        meta = dict(type="class", version=6, module_src=self._sources[id(obj)], class_name=type(obj).__name__,
                    state=state)
        return self._reconstruct, (meta,)


def write_nvidia_pickle(path: str | os.PathLike, networks: dict[str, nn.Module], *, repo: str = "stylegan3",
                        augment_pipe: bool = True, numpy_scalars: bool = True, protocol: int = 4,
                        extra: dict[str, Any] | None = None, bare: bool = False) -> Path:
    """Write `networks` ({'G': ..., 'D': ..., 'G_ema': ...}) as a `repo` ('stylegan3' | 'ada') snapshot pickle.

    bare=True writes the one network alone at the top level instead of the snapshot dict.
    """
    path = Path(path)
    data: dict[str, Any] = dict(networks)
    if augment_pipe:
        data["augment_pipe"] = AugmentPipe()
    with _nvidia_module_names() as (reconstruct, easy_dict):
        data["training_set_kwargs"] = easy_dict(class_name="training.dataset.ImageFolderDataset",
                                                path="~/datasets/faces.zip", use_labels=False, max_size=70000,
                                                xflip=False, resolution=64, random_seed=0)
        data.update(extra or {})
        sources, kwargs = {}, {}
        for key, net in data.items():
            if not isinstance(net, nn.Module):
                continue
            src = _source_for(net, repo)
            for module in net.modules():
                sources[id(module)] = src
            kwargs[id(net)] = _nvidia_init_kwargs(key, net, repo)
        with open(path, "wb") as f:
            top = next(iter(networks.values())) if bare else data
            _NvidiaPickler(f, protocol, reconstruct, easy_dict, sources, kwargs, numpy_scalars).dump(top)
    return path


write_network_pickle = write_nvidia_pickle  # the name tests/cli uses
