"""Read NVIDIA network pickles (stylegan2-ada-pytorch, stylegan3) without running anything in them.

How those files look: a dict (G, D, G_ema, augment_pipe, training_set_kwargs, ...) whose networks
are NVIDIA's "persistent" objects. Each pickles itself as a call of
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta` holds the full source
text of the module that defined the class (`module_src`), the class name and the module's
`__dict__` (`_parameters`, `_buffers`, `_modules` with children of the same kind, `_init_kwargs`).
NVIDIA's own loader imports that source text as a fresh module and executes it.

We never do. Our unpickler overrides `find_class` completely: every global a pickle names must be
on an explicit allow-list, which maps it to a function of ours or to a harmless constructor
(OrderedDict, set, numpy's array and scalar rebuilders, torch's tensor rebuilders with type
checks). Persistent objects become inert `PersistentRecord`s; `module_src` is only searched, to
tell a StyleGAN2 `Generator` from a StyleGAN3 one. The networks are then built as our own
classes from the recorded init kwargs and loaded with a flat state dict gathered from the record
tree, strictly. Nothing else is imported: modules named torch_utils, dnnlib or training, whether
present or not, are never touched.
"""
from __future__ import annotations

import collections
import io
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from engine.checkpoint import build_network
from engine.errors import CorruptFileError, StyleDeckError, UnsafePickleError, UnsupportedNetworkError

__all__ = ["NETWORK_KEYS", "PersistentRecord", "build_from_record", "build_networks", "load_network_pickle",
           "read_network_pickle", "training_info"]

NETWORK_KEYS = ("G_ema", "G", "D")  # the entries of a network pickle that we build, in this order


# ----------------------------------------------------------------------------------------------
# Inert stand-ins for NVIDIA's objects

@dataclass(eq=False)
class PersistentRecord:
    """What a pickled NVIDIA persistent object becomes: data only, never code."""

    class_name: str                     # e.g. 'Generator', 'SynthesisLayer'
    module_src: str = field(repr=False)  # the defining module's source text; searched, never run
    version: int                        # NVIDIA's persistence format version
    state: dict                         # the object's __dict__ as pickled

    @property
    def family(self) -> str | None:
        """'stylegan2', 'stylegan3', 'discriminator', 'augment_pipe', or None for a class we do not build."""
        return family_of(self.class_name, self.module_src)

    def _entry(self, name: str, kind: type, default: Any) -> Any:
        value = self.state.get(name, default)
        if not isinstance(value, kind):
            raise CorruptFileError(f"holds a {self.class_name} whose {name} is a {type(value).__name__}")
        return value

    @property
    def init_args(self) -> tuple:
        return tuple(plain(self._entry("_init_args", (tuple, list), ())))

    @property
    def init_kwargs(self) -> dict[str, Any]:
        return plain(dict(self._entry("_init_kwargs", dict, {})))

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat parameters and persistent buffers under this record, named as nn.Module.state_dict names them."""
        out: dict[str, torch.Tensor] = {}
        skip = set(self._entry("_non_persistent_buffers_set", (set, frozenset, list, tuple), ()))
        for kind in ("_parameters", "_buffers"):
            for name, value in self._entry(kind, dict, {}).items():
                if value is None or (kind == "_buffers" and name in skip):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise CorruptFileError(f"{prefix}{name} should be a tensor but is a {type(value).__name__}")
                out[prefix + name] = value
        for name, child in self._entry("_modules", dict, {}).items():
            if child is None:
                continue
            if not isinstance(child, PersistentRecord):
                raise CorruptFileError(f"{prefix}{name} should be a network layer but is a {type(child).__name__}")
            out.update(child.state_dict(f"{prefix}{name}."))
        return out


class EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict: a dict with attribute access, built by the unpickler."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state: Any) -> None:
        # EasyDict keeps everything in its items; a pickled __dict__ would only hold stray attributes.
        if state is not None and not isinstance(state, dict):
            raise CorruptFileError("a dnnlib EasyDict carries state that is not a dict")


def plain(value: Any) -> Any:
    """EasyDicts -> dicts, numpy scalars -> Python numbers, recursively: kwargs fit for a constructor and JSON."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


_SG3_MARK = re.compile(r"^class SynthesisInput\b", re.M)
_SG2_MARK = re.compile(r"^class SynthesisBlock\b", re.M)
_D_MARK = re.compile(r"^class DiscriminatorBlock\b", re.M)


def family_of(class_name: str, module_src: str) -> str | None:
    """Which of our network families an NVIDIA class is, judged by its name and by searching its module's source."""
    # Both generator modules define `Generator`; only networks_stylegan3.py has a SynthesisInput.
    if class_name == "Generator":
        if _SG3_MARK.search(module_src):
            return "stylegan3"
        if _SG2_MARK.search(module_src):
            return "stylegan2"
    elif class_name == "Discriminator" and _D_MARK.search(module_src):
        return "discriminator"
    elif class_name == "AugmentPipe":
        return "augment_pipe"
    return None


# ----------------------------------------------------------------------------------------------
# The allow-list: every global a network pickle may name, and what we give it instead

def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict):
        raise CorruptFileError("holds a malformed persistent object")
    if meta.get("type") != "class":
        raise CorruptFileError(f"holds a persistent object of an unknown kind ({meta.get('type')!r})")
    class_name, src, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(src, str) or not isinstance(state, dict):
        raise CorruptFileError("holds a persistent object without class name, source or state")
    return PersistentRecord(class_name=class_name, module_src=src, version=int(meta.get("version", 0)), state=state)


def _load_from_bytes(data: Any) -> torch.storage.TypedStorage:
    """A storage pickled by torch as legacy torch.save bytes, read with torch's own weights-only unpickler."""
    if not isinstance(data, (bytes, bytearray)):
        raise CorruptFileError("holds a tensor storage that is not bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation: torch's own pickles still use it
            storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # the weights-only unpickler refused something
        raise UnsafePickleError(f"holds a tensor storage that asks for something beyond plain data ({exc}). "
                                "Nothing in it was run.") from exc
    except Exception as exc:
        raise CorruptFileError(f"holds a tensor storage that cannot be read ({exc})") from exc
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CorruptFileError(f"holds a tensor storage that is a {type(storage).__name__}")
    return storage


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    # Hooks and metadata (conj/neg bits) are dropped: weights need neither, and hooks would be code.
    del requires_grad, backward_hooks, metadata
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CorruptFileError("holds a tensor whose storage is not a storage")
    if not (isinstance(storage_offset, int) and all(isinstance(s, int) for s in (*size, *stride))
            and len(size) == len(stride)):
        raise CorruptFileError("holds a tensor with a malformed size or stride")
    needed = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if storage_offset < 0 or any(s < 0 for s in stride) or needed > storage._size():
        raise CorruptFileError("holds a tensor that reaches past the end of its storage")
    return torch._utils._rebuild_tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> torch.Tensor:
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> torch.Tensor:
    # The value is all we load into our own modules; the Parameter wrapper adds nothing.
    if not isinstance(data, torch.Tensor):
        raise CorruptFileError("holds a parameter that is not a tensor")
    return data


class _TensorType:
    """Stands for torch.Tensor / Parameter where _rebuild_from_type_v2 names the type to rebuild as."""


_REBUILDERS: tuple[Callable, ...] = (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any = None) -> torch.Tensor:
    if func not in _REBUILDERS or new_type is not _TensorType or not isinstance(args, tuple):
        raise CorruptFileError("holds a tensor of a kind that network files do not use")
    return func(*args)  # python-level tensor attributes (state) are not needed for weights


_NP_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's own array and scalar rebuilders, named
_NP_SCALAR = np.float64(0).__reduce__()[0]     # as this numpy spells them (numpy.core / numpy._core)


def _np_reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise CorruptFileError("holds an array of a subclass that network files do not use")
    return _NP_RECONSTRUCT(np.ndarray, shape, typecode)


def _np_scalar(dtype: Any, data: Any = None) -> np.generic:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise CorruptFileError("holds a numpy scalar that is not a plain number")
    return _NP_SCALAR(dtype, data)


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Protocol 2 writes bytes as _codecs.encode(str, 'latin1'); only that use is admitted.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CorruptFileError("holds an encoded string of an unexpected form")
    return text.encode("latin1")


def _torch_size(dims: Any = ()) -> tuple:
    return tuple(int(d) for d in dims)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TensorType,
    ("torch._tensor", "Tensor"): _TensorType,
    ("torch.nn.parameter", "Parameter"): _TensorType,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch", "Size"): _torch_size,
    **{(m, "_reconstruct"): _np_reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _np_scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{("torch", name): getattr(torch, name) for name in (
        "float16", "bfloat16", "float32", "float64", "uint8", "int8", "int16", "int32", "int64", "bool")},
}


_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of an old-format torch.save file


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only the globals in _ALLOWED and imports nothing."""

    def __init__(self, file: Any, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"{self._source} asks to call {module}.{name}, which no network file "
                                    "needs, so it was not opened. Nothing in it was run.") from None

    def persistent_load(self, pid: Any) -> Any:
        raise CorruptFileError(f"{self._source} refers to external storage (a torch.save file in the old "
                               "format?); StyleDeck opens NVIDIA network pickles and StyleDeck checkpoints.")


# ----------------------------------------------------------------------------------------------
# Public API

def read_network_pickle(path: str | Path) -> dict[str, Any]:
    """The top-level contents of an NVIDIA network pickle, networks as PersistentRecords; nothing built.

    A pickle that holds a single network (not a dict) comes back as {'G_ema': record}.
    """
    path = Path(path)
    with open(path, "rb") as f:  # a missing file raises FileNotFoundError here; the loader words it
        try:
            data = _RestrictedUnpickler(f, path.name).load()
        except StyleDeckError as exc:
            if str(exc).startswith(path.name):
                raise
            raise type(exc)(f"{path.name} {exc}") from exc
        except Exception as exc:  # anything the pickle machine trips over: truncated, not a pickle, damaged
            raise CorruptFileError(f"{path.name} is not a readable network pickle (truncated or damaged?): "
                                   f"{type(exc).__name__}: {exc}") from exc
    if isinstance(data, PersistentRecord):
        data = {"G_ema": data}
    if isinstance(data, int) and data == _TORCH_LEGACY_MAGIC:
        raise CorruptFileError(f"{path.name} is a torch.save file in the old (non-zip) format, not a network "
                               "pickle; StyleDeck opens NVIDIA network pickles and StyleDeck checkpoints.")
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path.name} holds a {type(data).__name__}, not the dict of networks "
                               "(G, D, G_ema) that a network pickle holds")
    return data


def build_from_record(record: Any, key: str, source: str) -> nn.Module:
    """Our module for one pickled network: built from its init kwargs, loaded strictly with its tensors."""
    where = f"{source}: {key}"
    if not isinstance(record, PersistentRecord):
        raise CorruptFileError(f"{where} is a {type(record).__name__}, not a network")
    family = record.family
    if family in (None, "augment_pipe"):
        raise UnsupportedNetworkError(f"{where} is an NVIDIA {record.class_name}, a network class StyleDeck "
                                      "cannot build (it builds StyleGAN2/StyleGAN3 Generators and "
                                      "StyleGAN2 Discriminators)")
    try:
        init_args, init_kwargs, state = record.init_args, record.init_kwargs, record.state_dict()
    except CorruptFileError as exc:
        raise CorruptFileError(f"{where} {exc}") from exc
    return build_network(family, init_kwargs, state, where, init_args=init_args)


def build_networks(data: dict[str, Any], source: str) -> dict[str, nn.Module]:
    """Our modules for the networks (G_ema, G, D, those present) of read_network_pickle's result."""
    nets = {key: build_from_record(data[key], key, source) for key in NETWORK_KEYS if data.get(key) is not None}
    if not nets:
        raise CorruptFileError(f"{source} holds no network: none of {', '.join(NETWORK_KEYS)} among its "
                               f"entries ({', '.join(map(str, data)) or 'none'})")
    return nets


def training_info(data: dict[str, Any]) -> dict[str, Any]:
    """What a snapshot says about its training run, as plain data: dataset settings, ADA's p."""
    info: dict[str, Any] = {}
    if isinstance(data.get("training_set_kwargs"), dict):
        info["training_set_kwargs"] = plain(dict(data["training_set_kwargs"]))
    pipe = data.get("augment_pipe")
    if isinstance(pipe, PersistentRecord):
        p = pipe.state.get("_buffers", {}).get("p")
        if isinstance(p, torch.Tensor) and p.numel() == 1:
            info["augment_p"] = float(p)
    return info


def load_network_pickle(path: str | Path, device: str | torch.device = "cpu") -> dict[str, nn.Module]:
    """The networks (G_ema, G, D, those present) of an NVIDIA pickle, as our modules in eval mode."""
    path = Path(path)
    nets = build_networks(read_network_pickle(path), path.name)
    for key, net in nets.items():
        net.to(device).eval()
        if key == "G_ema":
            net.requires_grad_(False)
    return nets
