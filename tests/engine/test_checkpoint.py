"""The native checkpoint (.safetensors + JSON) and the loader: round trips, conversion, clear errors."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from reference_data import load_reference, perturbed, rel_error, state_of
from engine.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint, save_checkpoint
from engine.errors import CorruptFileError, StyleDeckError, UnsupportedNetworkError
from engine.loader import (convert_network, file_sha256, load_network, network_info, provenance, provenance_lines,
                           sniff_format)
from engine.networks import discriminator, stylegan2, stylegan3
from nvidia_pickle import write_nvidia_pickle


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    G = perturbed(stylegan2.Generator(z_dim=16, c_dim=3, w_dim=16, img_resolution=16, img_channels=3,
                                      channel_base=128, channel_max=16, num_fp16_res=2,
                                      mapping_kwargs=dict(num_layers=2)), 1)
    D = perturbed(discriminator.Discriminator(c_dim=3, img_resolution=16, img_channels=3, channel_base=128,
                                              channel_max=16, epilogue_kwargs=dict(mbstd_group_size=2)), 2)
    G3 = perturbed(stylegan3.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                                       channel_base=256, channel_max=16, num_layers=4, num_critical=1,
                                       magnitude_ema_beta=0.999, mapping_kwargs=dict(num_layers=2)), 3)
    return {"G_ema": G, "G": perturbed(copy.deepcopy(G), 4), "D": D, "G3": G3}


def test_round_trip_is_bit_exact(tmp_path, nets):
    networks = {"G_ema": nets["G_ema"], "G": nets["G"], "D": nets["D"]}
    origin = {"source": "faces.pkl", "sha256": "ab" * 32}
    training = {"kimg": 12.5, "batch": 8, "snapshots": [1, 2]}
    path = save_checkpoint(tmp_path / "faces.safetensors", networks, origin=origin, training=training)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces.safetensors"]  # no temp file left behind

    loaded, meta = load_checkpoint(path)
    assert list(loaded) == ["G_ema", "G", "D"]
    for key, net in networks.items():
        assert type(loaded[key]) is type(net) and not loaded[key].training
        ours, theirs = net.state_dict(), loaded[key].state_dict()
        assert list(ours) == list(theirs)
        assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in ours)
    assert not any(p.requires_grad for p in loaded["G_ema"].parameters())
    assert meta["format"] == FORMAT and meta["version"] == FORMAT_VERSION
    assert meta["origin"] == origin and meta["training"] == training
    assert meta["networks"]["G_ema"] == {"family": "stylegan2", "class": "engine.networks.stylegan2.Generator",
                                         "init_kwargs": json.loads(json.dumps(nets["G_ema"].init_kwargs))}
    assert meta["networks"]["D"]["family"] == "discriminator"

    z, c = torch.randn([2, 16]), torch.eye(3)[:2]
    with torch.no_grad():
        img = nets["G_ema"](z, c, truncation_psi=0.7, noise_mode="const")
        assert torch.equal(loaded["G_ema"](z, c, truncation_psi=0.7, noise_mode="const"), img)
        assert torch.equal(loaded["D"](img, c), nets["D"](img, c))


def test_file_is_plain_safetensors(tmp_path, nets):
    path = save_checkpoint(tmp_path / "g3.safetensors", {"G_ema": nets["G3"]})
    tensors = load_file(path)  # what any safetensors reader sees
    assert set(tensors) == {f"G_ema.{k}" for k in nets["G3"].state_dict()}
    assert torch.equal(tensors["G_ema.synthesis.input.freqs"], nets["G3"].synthesis.input.freqs)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["styledeck"])
    assert meta["networks"]["G_ema"]["family"] == "stylegan3"
    assert meta["networks"]["G_ema"]["init_kwargs"]["magnitude_ema_beta"] == 0.999
    assert meta["origin"] is None and meta["training"] is None
    G3 = load_network(path)["G_ema"]
    z = torch.randn([1, 16])
    with torch.no_grad():
        assert torch.equal(G3(z, None, noise_mode="const"), nets["G3"](z, None, noise_mode="const"))


def test_failed_save_leaves_the_old_file(tmp_path, nets):
    path = save_checkpoint(tmp_path / "g.safetensors", {"G_ema": nets["G_ema"]})
    before = path.read_bytes()
    with pytest.raises(ValueError, match="training.when is a object"):
        save_checkpoint(path, {"G_ema": nets["G"]}, training={"when": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.safetensors"]


def _rewrite(src, dst, change):
    """Copy a checkpoint with its tensors changed by `change(dict)`, keeping the header metadata."""
    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(src)
    change(tensors)
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def test_wrong_shape_missing_and_stray_tensors(tmp_path, nets):
    good = save_checkpoint(tmp_path / "good.safetensors", {"G_ema": nets["G_ema"], "D": nets["D"]})

    def reshape(t):
        t["D.b4.out.weight"] = torch.zeros(2, 16)
    with pytest.raises(CorruptFileError, match=r"shape\.safetensors: D: b4\.out\.weight has shape \[2, 16\] in the "
                                               r"file, but the network .* needs \[16, 16\]"):
        load_network(_rewrite(good, tmp_path / "shape.safetensors", reshape))

    def drop(t):
        del t["G_ema.mapping.w_avg"]
    with pytest.raises(CorruptFileError, match=r"missing\.safetensors: G_ema does not match .* missing mapping\.w_avg"):
        load_checkpoint(_rewrite(good, tmp_path / "missing.safetensors", drop))

    def stray(t):
        t["H.weight"] = torch.zeros(1)
    with pytest.raises(CorruptFileError, match=r"holds the tensor H\.weight, which belongs to no network"):
        load_checkpoint(_rewrite(good, tmp_path / "stray.safetensors", stray))


def test_bad_files(tmp_path, nets):
    good = save_checkpoint(tmp_path / "good.safetensors", {"G_ema": nets["G_ema"]})
    data = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"cut\.safetensors is not a readable safetensors file \(truncated"):
        load_network(cut)

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(CorruptFileError, match=r"foreign\.safetensors is a safetensors file but not a StyleDeck"):
        load_network(foreign)

    future = tmp_path / "future.safetensors"
    meta = {"format": FORMAT, "version": FORMAT_VERSION + 1, "networks": {}}
    save_file({"w": torch.zeros(2)}, str(future), metadata={"styledeck": json.dumps(meta)})
    with pytest.raises(UnsupportedNetworkError, match=f"version {FORMAT_VERSION + 1}.*Update StyleDeck"):
        load_network(future)

    with pytest.raises(ValueError, match="at least one network"):
        save_checkpoint(tmp_path / "none.safetensors", {})
    with pytest.raises(UnsupportedNetworkError, match="not a network StyleDeck can save"):
        save_checkpoint(tmp_path / "lin.safetensors", {"G_ema": nn.Linear(2, 2)})


def test_sniffing_ignores_the_extension(tmp_path, nets):
    ckpt = save_checkpoint(tmp_path / "really_a_checkpoint.pkl", {"G_ema": nets["G_ema"]})
    pkl = write_nvidia_pickle(tmp_path / "really_a_pickle.safetensors", {"G_ema": nets["G_ema"]})
    assert sniff_format(ckpt) == "safetensors" and sniff_format(pkl) == "pickle"
    for path in (ckpt, pkl):
        G = load_network(path)["G_ema"]
        assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), nets["G_ema"].state_dict().values()))


def test_convert_reference_pickle_keeps_origin_and_images(tmp_path):
    config, weights, expected = load_reference("sg2_uncond")
    G = stylegan2.Generator(**config["G_ema"]["init_kwargs"]).eval()
    G.load_state_dict(state_of(weights, "G_ema"))
    D = discriminator.Discriminator(**config["D"]["init_kwargs"]).eval()
    D.load_state_dict(state_of(weights, "D"))
    pkl = write_nvidia_pickle(tmp_path / "ref.pkl", {"G": copy.deepcopy(G), "D": D, "G_ema": G}, repo="ada")
    dst = convert_network(pkl, tmp_path / "ref.safetensors")

    nets, meta = load_checkpoint(dst)
    assert list(nets) == ["G_ema", "G", "D"]
    assert meta["origin"] == {"source": "ref.pkl", "sha256": file_sha256(pkl), "format": "nvidia-pickle"}
    nvidia = meta["training"]["nvidia"]  # what the snapshot said about its run
    assert nvidia["training_set_kwargs"]["resolution"] == 64 and nvidia["augment_p"] == 0.0
    with torch.no_grad():
        img = nets["G_ema"].synthesis(torch.from_numpy(expected["ws_psi0.7"]), noise_mode="const", force_fp32=True)
    assert rel_error(img, expected["img_psi0.7"]) < 1e-4

    again = convert_network(dst, tmp_path / "again.safetensors", training={"kimg": 1})
    again_meta = load_checkpoint(again)[1]
    assert again_meta["origin"] == meta["origin"]  # a re-save keeps where it came from
    assert again_meta["training"] == {"nvidia": nvidia, "kimg": 1}  # added to what was recorded
    named = {"source": "ancestor.safetensors", "sha256": "0" * 64, "kimg": 79.616}
    renamed = convert_network(dst, tmp_path / "renamed.safetensors", origin=named)
    assert load_checkpoint(renamed)[1]["origin"] == named   # told where it came from, it says so
    assert ("origin", "ancestor.safetensors at 79.6 kimg") in provenance_lines(provenance(renamed))

    small = convert_network(dst, tmp_path / "small.safetensors", keep=["G_ema", "D"], half=True)
    small_nets, small_meta = load_checkpoint(small)
    assert list(small_nets) == ["G_ema", "D"] and small_meta["storage"] == "float16"
    assert small.stat().st_size < 0.4 * dst.stat().st_size  # a third of the networks, half the bytes each
    with torch.no_grad():
        img = small_nets["G_ema"].synthesis(torch.from_numpy(expected["ws_psi0.7"]), noise_mode="const",
                                            force_fp32=True)
    assert rel_error(img, expected["img_psi0.7"]) < 1e-2  # float16 weights: close, not exact
    with pytest.raises(StyleDeckError, match="no G_raw"):
        convert_network(dst, tmp_path / "bad.safetensors", keep=["G_raw"])
    assert not (tmp_path / "bad.safetensors").exists()


def test_network_info(nets):
    info = network_info(nets["G_ema"])
    assert {k: info[k] for k in ("family", "resolution", "z_dim", "w_dim", "c_dim", "num_ws", "img_channels")} == \
        {"family": "stylegan2", "resolution": 16, "z_dim": 16, "w_dim": 16, "c_dim": 3, "num_ws": 6,
         "img_channels": 3}
    assert info["num_params"] == sum(p.numel() for p in nets["G_ema"].parameters())
    info3 = network_info(nets["G3"])
    assert (info3["family"], info3["config"], info3["num_ws"]) == ("stylegan3", "T", nets["G3"].num_ws)
    assert network_info(nets["D"])["family"] == "discriminator"


def test_load_reports_progress_and_can_be_cancelled(tmp_path, nets):
    from engine.errors import Cancelled
    from engine.jobs import CancelToken
    path = save_checkpoint(tmp_path / "g.safetensors", {"G_ema": nets["G_ema"]})
    events = []
    load_network(path, progress=events.append)
    assert [(e.step, e.total) for e in events] == [(0, 2), (1, 2), (2, 2)]
    assert events[0].message == "reading g.safetensors"
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        load_network(path, cancel=token)
