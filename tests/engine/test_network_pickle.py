"""NVIDIA network pickles: read without running anything, built as our classes, refused when unsafe."""
from __future__ import annotations

import copy
import os
import pickle
import sys
import types
import zipfile

import pytest
import torch
from torch import nn

from reference_data import load_reference, perturbed, rel_error, state_of
from engine.errors import CorruptFileError, StyleDeckError, UnsafePickleError, UnsupportedNetworkError
from engine.errors import NetworkFileNotFoundError
from engine.loader import load_network
from engine.network_pickle import PersistentRecord, load_network_pickle, read_network_pickle
from engine.networks import discriminator, stylegan2, stylegan3
from nvidia_pickle import TRAP_ENV, write_nvidia_pickle

TOL = 1e-4


# ---------------------------------------------------------------------------------------------- networks

def tiny_sg2(c_dim: int = 0, num_fp16_res: int = 0) -> nn.Module:
    return stylegan2.Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=16, img_channels=3,
                               channel_base=128, channel_max=16, num_fp16_res=num_fp16_res,
                               mapping_kwargs=dict(num_layers=2)).eval()


def tiny_sg3(c_dim: int = 0, **kwargs) -> nn.Module:
    kwargs = {"channel_base": 256, "channel_max": 16, "num_layers": 4, "num_critical": 1, **kwargs}
    return stylegan3.Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=16, img_channels=3,
                               mapping_kwargs=dict(num_layers=2), **kwargs).eval()


def tiny_d(c_dim: int = 0, num_fp16_res: int = 0) -> nn.Module:
    return discriminator.Discriminator(c_dim=c_dim, img_resolution=16, img_channels=3, channel_base=128,
                                       channel_max=16, num_fp16_res=num_fp16_res,
                                       epilogue_kwargs=dict(mbstd_group_size=2)).eval()


@pytest.fixture(autouse=True)
def source_trap(tmp_path, monkeypatch):
    """Running any embedded module_src would create this file."""
    trap = tmp_path / "module_src_was_run"
    monkeypatch.setenv(TRAP_ENV, str(trap))
    yield trap
    assert not trap.exists(), "the pickle's embedded source code was executed"


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ---------------------------------------------------------------------------------------------- reference

def reference_networks(name: str):
    config, weights, expected = load_reference(name)
    G_cls = stylegan2.Generator if name == "sg2_uncond" else stylegan3.Generator
    G = G_cls(**config["G_ema"]["init_kwargs"]).eval()
    G.load_state_dict(state_of(weights, "G_ema"), strict=True)
    D = discriminator.Discriminator(**config["D"]["init_kwargs"]).eval()
    D.load_state_dict(state_of(weights, "D"), strict=True)
    return G, D, expected


@pytest.mark.parametrize("name,repo", [("sg2_uncond", "stylegan3"), ("sg2_uncond", "ada"), ("sg3t", "stylegan3")])
def test_reference_pickle_reproduces_reference_outputs(tmp_path, name, repo):
    G, D, expected = reference_networks(name)
    path = write_nvidia_pickle(tmp_path / "net.pkl", {"G": copy.deepcopy(G), "D": D, "G_ema": G}, repo=repo)
    nets = load_network(path)
    assert list(nets) == ["G_ema", "G", "D"]
    G_ema = nets["G_ema"]
    assert type(G_ema) is type(G) and not G_ema.training
    assert not any(p.requires_grad for p in G_ema.parameters())
    assert_same_state(G_ema, G)

    z = torch.from_numpy(expected["z"])
    with torch.no_grad():
        ws = G_ema.mapping(z, None, truncation_psi=0.7)
        assert rel_error(ws, expected["ws_psi0.7"]) < TOL
        img = G_ema.synthesis(torch.from_numpy(expected["ws_psi0.7"]), noise_mode="const", force_fp32=True)
        assert rel_error(img, expected["img_psi0.7"]) < TOL
        logits = nets["D"](torch.from_numpy(expected["img_psi1.0"]), None, force_fp32=True)
        assert rel_error(logits, expected["d_logits"]) < TOL


def test_reference_sg3_transform_survives_the_pickle(tmp_path):
    G, _, expected = reference_networks("sg3t")
    G_ema = load_network(write_nvidia_pickle(tmp_path / "net.pkl", {"G_ema": G}))["G_ema"]
    with torch.no_grad():
        G_ema.synthesis.input.transform.copy_(torch.from_numpy(expected["transform"]))
        img = G_ema.synthesis(torch.from_numpy(expected["ws_psi0.5"]), noise_mode="const", force_fp32=True)
    assert rel_error(img, expected["img_transform"]) < TOL


# ---------------------------------------------------------------------------------------------- formats

@pytest.mark.parametrize("repo,family,c_dim,fp16", [
    ("stylegan3", "sg2", 0, 0), ("stylegan3", "sg2", 5, 2), ("ada", "sg2", 0, 2), ("ada", "sg2", 5, 0),
    ("stylegan3", "sg3", 0, 0), ("stylegan3", "sg3", 5, 2)])
def test_formats_load_bit_exactly(tmp_path, repo, family, c_dim, fp16):
    torch.manual_seed(1)
    G = perturbed(tiny_sg2(c_dim, fp16) if family == "sg2" else tiny_sg3(c_dim, num_fp16_res=fp16), 2)
    D = perturbed(tiny_d(c_dim, fp16), 3)
    path = write_nvidia_pickle(tmp_path / "net.pkl", {"G": G, "D": D, "G_ema": G}, repo=repo)
    nets = load_network_pickle(path)
    for key, ours in (("G_ema", G), ("G", G), ("D", D)):
        assert type(nets[key]) is type(ours)
        assert_same_state(nets[key], ours)
    z = torch.randn([2, G.z_dim], generator=torch.Generator().manual_seed(4))
    c = torch.eye(max(c_dim, 1))[:2, :c_dim]
    with torch.no_grad():
        img = G(z, c, truncation_psi=0.8, noise_mode="const")
        assert torch.equal(nets["G_ema"](z, c, truncation_psi=0.8, noise_mode="const"), img)
        assert torch.equal(nets["D"](img, c), D(img, c))
    # the rebuilt network carries kwargs that rebuild it again
    again = type(nets["G_ema"])(**nets["G_ema"].init_kwargs)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in G.state_dict().items()}


def test_sg3_r_config(tmp_path):
    G = perturbed(tiny_sg3(conv_kernel=1, use_radial_filters=True, channel_base=512), 5)
    nets = load_network_pickle(write_nvidia_pickle(tmp_path / "r.pkl", {"G_ema": G}))
    assert_same_state(nets["G_ema"], G)
    assert nets["G_ema"].init_kwargs["use_radial_filters"] is True


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_records_and_extras(tmp_path, protocol):
    G = tiny_sg2()
    path = write_nvidia_pickle(tmp_path / "net.pkl", {"G_ema": G, "D": tiny_d()}, protocol=protocol)
    data = read_network_pickle(path)
    assert set(data) == {"G_ema", "D", "augment_pipe", "training_set_kwargs"}
    record = data["G_ema"]
    assert isinstance(record, PersistentRecord) and record.class_name == "Generator"
    assert record.family == "stylegan2" and data["D"].family == "discriminator"
    assert data["augment_pipe"].family == "augment_pipe"
    assert data["augment_pipe"].state["xflip"] == 1.0
    # numpy scalars and EasyDicts in the recorded kwargs come back as plain Python values
    kwargs = record.init_kwargs
    assert kwargs["mapping_kwargs"] == {"num_layers": 2} and type(kwargs["mapping_kwargs"]) is dict
    assert type(kwargs["z_dim"]) is int and kwargs["z_dim"] == 16
    assert data["training_set_kwargs"].resolution == 64  # attribute access, like dnnlib's EasyDict
    assert list(record.state_dict()) == list(G.state_dict())
    assert "augment_pipe" not in load_network_pickle(path)


def test_a_bare_generator_pickle_is_g_ema(tmp_path):
    G = tiny_sg2()
    path = write_nvidia_pickle(tmp_path / "g.pkl", {"G_ema": G}, bare=True)  # as some people share them
    assert read_network_pickle(path)["G_ema"].family == "stylegan2"
    nets = load_network_pickle(path)
    assert list(nets) == ["G_ema"]
    assert_same_state(nets["G_ema"], G)


# ---------------------------------------------------------------------------------------------- no code runs

def _trap_module(name: str, calls: list[str]) -> types.ModuleType:
    """A module whose every attribute lookup, class creation or call is recorded in `calls`."""
    mod = types.ModuleType(name)

    def record(*args, **kwargs):
        calls.append(f"{name} called")
        raise AssertionError(f"{name} was called")

    class Trap:
        def __new__(cls, *args, **kwargs):
            calls.append(f"{name}.{cls.__name__} built")
            raise AssertionError("trap class built")

        def __setstate__(self, state):
            calls.append(f"{name} setstate")

    for attr in ("_reconstruct_persistent_obj", "construct_class_by_name", "persistent_class"):
        setattr(mod, attr, record)
    for cls_name in ("EasyDict", "Generator", "Discriminator", "MappingNetwork", "SynthesisNetwork",
                     "AugmentPipe", "FullyConnectedLayer"):
        setattr(mod, cls_name, type(cls_name, (Trap,), {}))

    def module_getattr(attr):
        calls.append(f"{name}.{attr} looked up")
        raise AttributeError(attr)

    mod.__getattr__ = module_getattr
    return mod


TRAP_NAMES = ("torch_utils", "torch_utils.persistence", "torch_utils.misc", "dnnlib", "dnnlib.util", "training",
              "training.networks", "training.networks_stylegan2", "training.networks_stylegan3", "training.augment")


def test_loading_needs_no_nvidia_modules_and_calls_none(tmp_path, monkeypatch):
    G, D = perturbed(tiny_sg2(c_dim=3), 6), perturbed(tiny_d(c_dim=3), 7)
    path = write_nvidia_pickle(tmp_path / "net.pkl", {"G": G, "D": D, "G_ema": G})
    for name in TRAP_NAMES:
        monkeypatch.delitem(sys.modules, name, raising=False)

    plain = load_network_pickle(path)                     # nothing of theirs importable
    assert not any(name in sys.modules for name in TRAP_NAMES), "the loader imported NVIDIA modules"

    calls: list[str] = []
    for name in TRAP_NAMES:                              # now every one of them is booby-trapped
        monkeypatch.setitem(sys.modules, name, _trap_module(name, calls))
    trapped = load_network_pickle(path)
    assert calls == []
    for key in ("G_ema", "G", "D"):
        assert type(trapped[key]).__module__.startswith("engine.networks.")
        assert_same_state(trapped[key], plain[key])
        assert_same_state(trapped[key], D if key == "D" else G)


class _Evil:
    """Pickles as a call of os.system (posix.system on Linux) that would create `flag`."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return os.system, (f"touch {self.flag}",)


def _unsafe_pickles(flag) -> dict[str, tuple[bytes, str]]:
    """name -> (pickle bytes, the global the refusal must name)."""
    system = f"{os.system.__module__}.system"
    return {
        # protocol 0, spelled by hand: exactly the globals an attacker would write
        "os.system": (f"cos\nsystem\n(S'touch {flag}'\ntR.".encode(), "os.system"),
        "builtins.eval": (f"cbuiltins\neval\n(S'open({str(flag)!r}, \"w\")'\ntR.".encode(), "builtins.eval"),
        "subprocess.Popen": (pickle.dumps(_Popen(flag)), "subprocess.Popen"),
        "posix.system": (pickle.dumps({"G_ema": _Evil(flag)}), system),
    }


class _Popen:
    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        import subprocess
        return subprocess.Popen, (["touch", str(self.flag)],)


@pytest.mark.parametrize("case", ["os.system", "builtins.eval", "subprocess.Popen", "posix.system"])
def test_unsafe_globals_are_refused_and_never_run(tmp_path, case):
    flag = tmp_path / "pwned"
    data, named = _unsafe_pickles(flag)[case]
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    for opener in (read_network_pickle, load_network):
        with pytest.raises(UnsafePickleError) as info:
            opener(path)
        assert str(info.value) == (f"evil.pkl asks to call {named}, which no network file needs, so it was "
                                   "not opened. Nothing in it was run.")
    assert not flag.exists()


def test_unsafe_global_inside_a_real_looking_snapshot(tmp_path):
    flag = tmp_path / "pwned"
    path = write_nvidia_pickle(tmp_path / "net.pkl", {"G_ema": tiny_sg2()},
                               extra={"progress": {"cur_nimg": _Evil(flag)}})
    with pytest.raises(UnsafePickleError, match=r"net\.pkl asks to call \w+\.system"):
        load_network(path)
    assert not flag.exists()


class _EvilStorage:
    """A tensor storage whose embedded torch.save bytes hide a call of os.system."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return torch.storage._load_from_bytes, (pickle.dumps(_Evil(self.flag), protocol=2),)


def test_unsafe_global_inside_storage_bytes(tmp_path):
    flag = tmp_path / "pwned"
    path = tmp_path / "storage.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _EvilStorage(flag)}))
    with pytest.raises(UnsafePickleError, match="storage.pkl holds a tensor storage"):
        read_network_pickle(path)
    assert not flag.exists()


# ---------------------------------------------------------------------------------------------- bad files

@pytest.fixture(scope="module")
def good_pickle(tmp_path_factory):
    return write_nvidia_pickle(tmp_path_factory.mktemp("good") / "net.pkl", {"G_ema": tiny_sg2(), "D": tiny_d()})


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_pickle(tmp_path, good_pickle, keep):
    data = good_pickle.read_bytes()
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CorruptFileError, match=r"cut\.pkl is not a readable network pickle \(truncated"):
        load_network(path)


def test_text_and_other_files(tmp_path):
    text = tmp_path / "notes.pkl"
    text.write_text("these are not the weights you are looking for\n")
    with pytest.raises(CorruptFileError, match=r"notes\.pkl is a text file\. StyleDeck opens NVIDIA network pickles"):
        load_network(text)
    with pytest.raises(CorruptFileError, match=r"notes\.pkl is not a readable network pickle"):
        read_network_pickle(text)  # the pickle reader alone, without the sniffing
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty"):
        load_network(empty)
    torch_zip = tmp_path / "rosinality.pt"
    torch.save({"g_ema": {"w": torch.zeros(2)}}, torch_zip)
    assert zipfile.is_zipfile(torch_zip)
    with pytest.raises(CorruptFileError, match=r"rosinality\.pt is a zip archive, most likely a torch\.save"):
        load_network(torch_zip)
    legacy = tmp_path / "legacy.pkl"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CorruptFileError, match=r"legacy\.pkl"):
        load_network(legacy)
    not_dict = tmp_path / "list.pkl"
    not_dict.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CorruptFileError, match=r"list\.pkl holds a list, not the dict of networks"):
        load_network(not_dict)
    no_nets = tmp_path / "nonets.pkl"
    no_nets.write_bytes(pickle.dumps({"hello": 1}))
    with pytest.raises(CorruptFileError, match=r"nonets\.pkl holds no network"):
        load_network(no_nets)


def test_missing_file(tmp_path):
    with pytest.raises(NetworkFileNotFoundError, match="nowhere.pkl does not exist") as info:
        load_network(tmp_path / "nowhere.pkl")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, StyleDeckError)


def test_missing_key_and_wrong_shape(tmp_path):
    G = tiny_sg2()
    missing = copy.deepcopy(G)
    del missing.mapping.fc1._parameters["bias"]
    with pytest.raises(CorruptFileError, match=r"m\.pkl: G_ema does not match .*missing mapping\.fc1\.bias"):
        load_network(write_nvidia_pickle(tmp_path / "m.pkl", {"G_ema": missing}))
    extra = copy.deepcopy(G)
    extra.synthesis.b8.register_buffer("stowaway", torch.zeros(3))
    with pytest.raises(CorruptFileError, match=r"unexpected synthesis\.b8\.stowaway"):
        load_network(write_nvidia_pickle(tmp_path / "x.pkl", {"G_ema": extra}))
    wrong = copy.deepcopy(G)
    wrong.synthesis.b8.conv1.bias = nn.Parameter(torch.zeros(5))
    with pytest.raises(CorruptFileError, match=r"w\.pkl: G_ema: synthesis\.b8\.conv1\.bias has shape \[5\] in the "
                                               r"file, but the network .* needs \[16\]"):
        load_network(write_nvidia_pickle(tmp_path / "w.pkl", {"G_ema": wrong}))


class MysteryNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.init_kwargs = {}


def test_unsupported_class_and_kwarg(tmp_path):
    with pytest.raises(UnsupportedNetworkError, match=r"u\.pkl: G_ema is an NVIDIA MysteryNet"):
        load_network(write_nvidia_pickle(tmp_path / "u.pkl", {"G_ema": MysteryNet()}))
    G = copy.deepcopy(tiny_sg2())
    G.init_kwargs = {**G.init_kwargs, "warp_drive": 3}
    with pytest.raises(UnsupportedNetworkError, match=r"k\.pkl: G_ema: .*warp_drive"):
        load_network(write_nvidia_pickle(tmp_path / "k.pkl", {"G_ema": G}))
    D = copy.deepcopy(tiny_d())
    D.init_kwargs = {**D.init_kwargs, "warp": 1}  # a constructor without **kwargs: a TypeError, worded
    with pytest.raises(UnsupportedNetworkError, match=r"d\.pkl: D: StyleDeck's discriminator network cannot be "
                                                      r"built .*unexpected keyword argument 'warp'"):
        load_network(write_nvidia_pickle(tmp_path / "d.pkl", {"G_ema": tiny_sg2(), "D": D}))
    G3 = copy.deepcopy(tiny_sg3())
    G3.init_kwargs = {**G3.init_kwargs, "mapping_kwargs": {"num_layers": 2, "flux": 1}}
    with pytest.raises(UnsupportedNetworkError, match=r"flux"):
        load_network(write_nvidia_pickle(tmp_path / "k3.pkl", {"G_ema": G3}))


def _persistent_pickle(meta: dict) -> bytes:
    """A pickle holding one hand-made NVIDIA persistent object as G_ema."""
    from nvidia_pickle import _nvidia_module_names

    with _nvidia_module_names() as (reconstruct, _):
        class Persistent:
            def __reduce__(self):
                return reconstruct, (meta,)
        return pickle.dumps({"G_ema": Persistent()})


def test_malformed_records(tmp_path):
    from nvidia_pickle import SOURCES
    src = SOURCES["stylegan3/networks_stylegan2"]
    cases = {
        "modules": (dict(type="class", version=6, module_src=src, class_name="Generator",
                         state={"_modules": [1, 2], "_init_kwargs": {}}),
                    r"modules\.pkl: G_ema holds a Generator whose _modules is a list"),
        "tensor": (dict(type="class", version=6, module_src=src, class_name="Generator",
                        state={"_parameters": {"w": [0.5]}, "_init_kwargs": {}}),
                   r"tensor\.pkl: G_ema w should be a tensor but is a list"),
        "kind": (dict(type="function", version=6, module_src=src, class_name="Generator", state={}),
                 r"kind\.pkl holds a persistent object of an unknown kind \('function'\)"),
        "nosrc": (dict(type="class", version=6, class_name="Generator", state={}),
                  r"nosrc\.pkl holds a persistent object without class name, source or state"),
    }
    for name, (meta, message) in cases.items():
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(_persistent_pickle(meta))
        with pytest.raises(CorruptFileError, match=message):
            load_network(path)
