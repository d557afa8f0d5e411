"""The fast render path on a CUDA device (skipped elsewhere): its images against the reference path and
NVIDIA's reference vectors, at 64 px and on full-size 1024 px networks, and CUDA-graph replay against
eager runs. Run with `pytest -m gpu` on the device machine (bench/device_check.sh does).

Tolerances, as ||out - ref|| / ||ref|| over the batch (METHOD.md: float32 far under 1e-3, TF32 near
3e-4, bf16 operands 1e-3..1e-2 per product; a network compounds its layers' rounding):
- reference path on CUDA (float32, TF32 off) against NVIDIA's CPU float32 vectors: 1e-4;
- fast path without half precision (TF32 convolutions allowed): 1e-3;
- fast path in float16 (the top layers, as the network was trained): 2e-2, as the float16 test of
  test_stylegan2_reference.py;
- fast path in bfloat16 (8-bit mantissa instead of 11): 5e-2;
- CUDA-graph replay against an eager call of the same plan: 1e-3 (the same kernels; library
  heuristics may pick another algorithm while capturing, which changes half-precision rounding).
NaN never passes (a NaN error compares False).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.edit_state import initial_state
from engine.fast_path import GraphCache, RenderOptions, Synthesizer
from engine.networks import stylegan2, stylegan3
from engine.renderer import Renderer
from reference_data import load_reference, rel_error, state_of

pytestmark = pytest.mark.gpu

TOL = {"reference": 1e-4, "float32": 1e-3, "float16": 2e-2, "bfloat16": 5e-2}
GRAPH_TOL = 1e-3
FAMILIES = {"sg2_uncond": ("stylegan2", stylegan2.Generator), "sg3t": ("stylegan3", stylegan3.Generator)}


def _options(half: str, **kwargs) -> RenderOptions:
    return RenderOptions(path="reference") if half == "reference" else RenderOptions(half=half, **kwargs)


@pytest.fixture(scope="module", params=list(FAMILIES))
def reference_net(request):
    config, weights, expected = load_reference(request.param)
    family, cls = FAMILIES[request.param]
    G = cls(**config["G_ema"]["init_kwargs"]).eval().requires_grad_(False)
    G.load_state_dict(state_of(weights, "G_ema"), strict=True)
    return family, G.cuda(), expected


@pytest.mark.parametrize("half", list(TOL))
@pytest.mark.parametrize("batch", [1, 4])
def test_reference_networks_on_each_path_match_nvidias_vectors(reference_net, half, batch):
    family, G, expected = reference_net
    synth = Synthesizer(G, family, _options(half))
    ws = torch.from_numpy(expected["ws_psi0.7"][:batch]).cuda()
    img = synth(ws, "const").cpu()
    assert img.dtype == torch.float32
    err = rel_error(img, expected["img_psi0.7"][:batch])
    assert err < TOL[half], (synth.status, err)
    if half != "reference":
        assert "CUDA graph" in synth.status, synth.status
        assert ("grouped" if batch == 1 else "scaled") in synth.status


# --- full-size networks (NVIDIA's 1024 px configurations, random weights) -----------------------

def _full_size(arch: str, resolution: int = 1024) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=resolution, img_channels=3, num_fp16_res=4,
                  conv_clamp=256, channel_base=32768, channel_max=512)
    if arch == "sg2":
        G = stylegan2.Generator(**common, mapping_kwargs=dict(num_layers=8))
    else:
        G = stylegan3.Generator(**common, mapping_kwargs=dict(num_layers=2))
    with torch.no_grad():   # fresh networks have w_avg 0 and noise off: give both something to do
        G.mapping.w_avg.normal_()
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)
    return G.eval().requires_grad_(False).cuda()


@pytest.fixture(scope="module", params=["sg2", "sg3t"])
def full_size(request):
    G = _full_size(request.param)
    with torch.no_grad():
        ws = G.mapping(torch.randn(4, G.z_dim, device="cuda"), None, truncation_psi=0.7)
    return ("stylegan2" if request.param == "sg2" else "stylegan3"), G, ws


@pytest.mark.parametrize("half, batch", [("float16", 1), ("float16", 4), ("bfloat16", 1), ("bfloat16", 4),
                                         ("float32", 4)])
def test_full_size_fast_path_matches_the_reference_path(full_size, half, batch):
    family, G, ws = full_size
    with torch.no_grad():
        ref = Synthesizer(G, family, RenderOptions(path="reference"))(ws[:batch], "const")
        synth = Synthesizer(G, family, _options(half))
        fast = synth(ws[:batch], "const")
    assert fast.shape == ref.shape == (batch, 3, 1024, 1024)
    err = rel_error(fast.cpu(), ref.cpu())
    assert err < TOL[half], (synth.status, err)


def test_graph_replay_equals_eager_and_recaptures_on_a_new_batch(full_size):
    family, G, ws = full_size
    graphed = Synthesizer(G, family, RenderOptions())
    eager = Synthesizer(G, family, RenderOptions(cuda_graphs=False))
    with torch.no_grad():
        for w in (ws[:1], ws[1:2], ws[2:3]):               # the first call captures, the others replay
            out = graphed(w, "const")
            assert graphed.status.endswith("CUDA graph"), graphed.status
            assert rel_error(out.cpu(), eager(w, "const").cpu()) < GRAPH_TOL
        assert graphed.graphs.captures == 1
        out = graphed(ws[:2], "const")                     # another batch: another graph
        assert graphed.graphs.captures == 2
        assert rel_error(out.cpu(), eager(ws[:2], "const").cpu()) < GRAPH_TOL
        noisy = graphed(ws[:1], "random")                  # random noise runs eagerly
        assert "eager (random noise)" in graphed.status and torch.isfinite(noisy).all()


def test_renderer_on_cuda_replays_graphs_with_new_transforms_and_previews():
    """A StyleGAN3 transform changes a buffer the graph reads; a StyleGAN2 preview is a graph of its own."""
    config, weights, _ = load_reference("sg3t")
    G = stylegan3.Generator(**config["G_ema"]["init_kwargs"]).eval()
    G.load_state_dict(state_of(weights, "G_ema"))
    fast = Renderer(G, "cuda")
    eager = Renderer(G, "cuda", RenderOptions(cuda_graphs=False))
    state = initial_state("sg3t", fast.num_ws, seeds=(1,))
    for transform in ((0.0, 0.0, 0.0), (15.0, 0.1, -0.05), (-30.0, 0.0, 0.2)):
        s = dataclasses.replace(state, transform=transform)
        a, b = fast.render(s), eager.render(s)
        assert a.path.endswith("CUDA graph") and b.path.endswith("eager")
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1, transform
    assert fast._synth.graphs.captures == 1

    sg2 = _full_size("sg2")
    fast, ref = Renderer(sg2, "cuda"), Renderer(sg2, "cuda", RenderOptions(path="reference"))
    state = initial_state("sg2", fast.num_ws, seeds=(5,))
    for preview in (True, False):
        a, b = fast.render(state, preview=preview), ref.render(state, preview=preview)
        assert a.preview == preview and a.path.endswith("CUDA graph")
        assert np.abs(a.image.astype(float) - b.image.astype(float)).mean() < 2.0  # uint8 levels
    assert fast._synth.graphs.captures == 2


def test_video_frames_run_on_the_fast_path_and_match_the_editor():
    """Animation frames go through the renderer's path: per-frame transforms eager, a fixed one as a graph."""
    from engine.video import AnimationSpec, Motion, render_frames
    config, weights, _ = load_reference("sg3t")
    G = stylegan3.Generator(**config["G_ema"]["init_kwargs"]).eval()
    G.load_state_dict(state_of(weights, "G_ema"))
    fast = Renderer(G, "cuda")
    state = initial_state("sg3t", fast.num_ws, seeds=(1,))
    turning = AnimationSpec(keyframes=((state.base,),), num_frames=4, motion=Motion(rotate=90.0), psi=state.psi)
    frames = list(render_frames(fast, turning, batch=4))
    assert fast.path_status().startswith("fast: float") and "eager" in fast.path_status()
    first = fast.render(state).image                       # frame 0: no rotation yet
    # batch 4 runs the scaled modconv, batch 1 the grouped one: float16 rounding differs a little
    assert np.abs(frames[0].astype(float) - first.astype(float)).mean() < 2.0
    still = AnimationSpec(keyframes=((state.base,),), num_frames=2, psi=state.psi)
    frames = list(render_frames(fast, still, batch=2))
    assert fast.path_status().endswith("CUDA graph")
    assert np.abs(frames[1].astype(float) - first.astype(float)).mean() < 2.0


def test_compiled_fast_path_matches_eager():
    torch.manual_seed(0)                # small: compiling takes time per op, not per pixel
    G = stylegan2.Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=32, img_channels=3, channel_base=1024,
                            channel_max=64, num_fp16_res=2, conv_clamp=256).eval().requires_grad_(False).cuda()
    ws = G.mapping(torch.randn(1, G.z_dim, device="cuda"), None)
    compiled = Synthesizer(G, "stylegan2", RenderOptions(compile=True))
    with torch.no_grad():
        out = compiled(ws, "const")
        ref = Synthesizer(G, "stylegan2", RenderOptions(cuda_graphs=False))(ws, "const")
    assert "compiled" in compiled.status and "compile failed" not in compiled.status, compiled.status
    assert rel_error(out.cpu(), ref.cpu()) < TOL["float16"]


def test_a_capture_that_fails_on_cuda_falls_back_to_eager():
    """A host sync inside the function cannot be captured; the cache runs it eagerly, and CUDA still works."""
    x = torch.randn(64, 64, device="cuda")

    def with_sync(t: torch.Tensor) -> torch.Tensor:
        return t * float(t.abs().max().item())          # .item() syncs: illegal while capturing

    cache = GraphCache()
    out, how = cache.run("sync", with_sync, x)
    assert how.startswith("eager (CUDA graph capture failed"), how
    assert torch.equal(out, with_sync(x)) and cache.captures == 0
    assert torch.equal((x + 1).cpu(), x.cpu() + 1)      # the device is usable after the failed capture
