"""The render paths on the CPU: the fast path is the float32 reference there, the CUDA plan's network
arguments compute the reference image, the mapping cache, the graph fallback and the options."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import engine
from engine.edit_state import initial_state, set_group_amount
from engine.errors import StyleDeckError
from engine.fast_path import GraphCache, Plan, RenderOptions, Synthesizer, make_plan
from engine.networks import stylegan2, stylegan3
from engine.renderer import Renderer
from reference_data import load_reference, rel_error, state_of

TOL = 1e-4  # reference/README.md: float32 arithmetic lands far under this

FAMILIES = {"sg2_uncond": ("stylegan2", stylegan2.Generator), "sg3t": ("stylegan3", stylegan3.Generator)}


@pytest.fixture(scope="module", params=list(FAMILIES))
def reference(request):
    """(name, family, G, expected) for one of NVIDIA's reference networks, on the CPU."""
    config, weights, expected = load_reference(request.param)
    family, cls = FAMILIES[request.param]
    G = cls(**config["G_ema"]["init_kwargs"]).eval().requires_grad_(False)
    G.load_state_dict(state_of(weights, "G_ema"), strict=True)
    return request.param, family, G, expected


def _ws(expected, name="ws_psi0.7", n=2) -> torch.Tensor:
    """The first n samples of a reference W+ batch (two keep StyleGAN3's CPU reference ops quick)."""
    return torch.from_numpy(np.asarray(expected[name][:n]))


def _img(expected, name, n=2) -> np.ndarray:
    return np.asarray(expected[name][:n])


# --- the fast path is the reference path on the CPU --------------------------------------------

def test_fast_and_reference_paths_give_the_reference_image_on_cpu(reference):
    _, family, G, expected = reference
    ws = _ws(expected)                                                      # [2, num_ws, w_dim]
    fast = Synthesizer(G, family, RenderOptions())
    ref = Synthesizer(G, family, RenderOptions(path="reference"))
    img_fast, img_ref = fast(ws, "const"), ref(ws, "const")
    assert img_fast.dtype == torch.float32 and img_fast.shape == (2, 3, 64, 64)
    assert torch.equal(img_fast, img_ref)                                   # the same computation
    assert rel_error(img_fast, _img(expected, "img_psi0.7")) < TOL
    assert rel_error(fast(_ws(expected, "ws_psi0.5", 1), "none"), _img(expected, "img_noise_none", 1)) < TOL
    assert fast.status == "fast (= reference on cpu): float32, eager"
    assert ref.status == "reference: float32, eager"
    assert len(fast.graphs) == 0 and not fast.graphs.failures              # no graphs on the CPU


def test_the_cuda_plans_network_arguments_compute_the_reference_image(reference):
    """What the fast path hands the networks on CUDA (scaled or grouped modconv, a half dtype, channels-last)
    is accepted by them and, in float32 on the CPU, computes NVIDIA's image: the scaled form is the same
    function as the grouped one."""
    _, family, G, expected = reference
    ws = _ws(expected)
    for fused in (True, False):
        plan = Plan("fast", "cuda", torch.bfloat16, True, fused, True, False)
        kwargs = plan.synthesis_kwargs(family)
        assert kwargs["half_dtype"] == torch.bfloat16 and kwargs["fused_modconv"] is fused
        assert ("channels_last" in kwargs) == (family == "stylegan2")
        img = G.synthesis(ws, noise_mode="const", **kwargs)                 # CPU: half layers stay float32
        assert img.dtype == torch.float32
        assert rel_error(img, _img(expected, "img_psi0.7")) < TOL, fused


def test_plans_pick_half_precision_layout_and_modconv_form_per_batch():
    fast = RenderOptions()
    b1, b16 = make_plan(fast, "cuda", True, 1), make_plan(fast, "cuda", True, 16)
    assert (b1.half, b1.fused_modconv, b1.graph, b1.channels_last) == (torch.float16, True, True, True)
    assert (b16.half, b16.fused_modconv) == (torch.float16, False)
    assert b1.describe() == "fast: float16 + float32, channels-last, grouped modconv, CUDA graph"
    assert b16.describe() == "fast: float16 + float32, channels-last, scaled modconv, CUDA graph"
    # a network trained without half-precision layers stays float32
    assert make_plan(fast, "cuda", False, 1).half is None
    assert make_plan(fast, "cuda", False, 1).synthesis_kwargs("stylegan2") == {"force_fp32": True,
                                                                               "fused_modconv": True}
    bf16 = make_plan(RenderOptions(half="bfloat16", modconv="scaled", cuda_graphs=False, compile=True), "cuda", True, 1)
    assert bf16.describe() == "fast: bfloat16 + float32, channels-last, scaled modconv, compiled, eager"
    assert not make_plan(RenderOptions(compile=True), "cuda", True, 1, compile_ok=False).compile
    # the reference path and the CPU: float32, eager, each layer's own form
    for plan in (make_plan(RenderOptions(path="reference"), "cuda", True, 8), make_plan(fast, "cpu", True, 8)):
        assert (plan.half, plan.fused_modconv, plan.graph, plan.compile) == (None, None, False, False)
        assert plan.synthesis_kwargs("stylegan3") == {"force_fp32": True}
    assert make_plan(RenderOptions(path="reference"), "cuda", True, 1).describe() == \
        "reference: float32, eager, no TF32"


@pytest.mark.parametrize("field, value", [("path", "quick"), ("half", "float8"), ("modconv", "fused"),
                                          ("max_graphs", 0)])
def test_bad_render_options_are_clear_errors(field, value):
    with pytest.raises(StyleDeckError, match=str(value)):
        RenderOptions(**{field: value})


# --- the renderer on both paths ----------------------------------------------------------------

def _tiny_sg2() -> torch.nn.Module:
    torch.manual_seed(0)
    G = stylegan2.Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                            channel_base=512, channel_max=32, num_fp16_res=2)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
        for name, p in G.named_parameters():  # NVIDIA starts noise_strength at 0: noise would do nothing
            if name.endswith("noise_strength"):
                p.fill_(0.3)
    return G.eval()


def test_renderer_paths_give_the_same_images_and_say_which_ran():
    G = _tiny_sg2()
    fast = Renderer(G)                                   # the default is the fast path
    ref = Renderer(G, options=RenderOptions(path="reference"))
    assert fast.options.path == "fast" and ref.options.path == "reference"
    state = initial_state("tiny.pkl", fast.num_ws, seeds=(3, 11))
    state = dataclasses.replace(set_group_amount(state, 1, fast.groups[0].layers, 0.6), psi=0.7)
    for preview in (False, True):
        a, b = fast.render(state, preview=preview), ref.render(state, preview=preview)
        assert a.preview == b.preview == preview
        assert np.array_equal(a.image, b.image) and np.array_equal(a.ws, b.ws)
        assert a.path == fast.path_status == "fast (= reference on cpu): float32, eager"
        assert b.path == ref.path_status == "reference: float32, eager"
    grid_fast = fast.render_grid([3], [11, 5], layers=fast.groups[0].layers, psi=0.7)
    grid_ref = ref.render_grid([3], [11, 5], layers=fast.groups[0].layers, psi=0.7)
    assert np.array_equal(grid_fast.image, grid_ref.image) and grid_fast.path == fast.path_status
    fast.set_options(RenderOptions(path="reference"))
    assert fast.options.path == "reference" and fast.path_status == "reference: float32, eager"
    assert np.array_equal(fast.render(state).image, ref.render(state).image)


def test_mapping_outputs_are_cached_per_source_and_equal_a_fresh_mapping():
    G = _tiny_sg2()
    renderer = Renderer(G)
    state = dataclasses.replace(initial_state("tiny.pkl", renderer.num_ws, seeds=(7, 8)), psi=0.5)
    first = renderer.render(state)
    misses = renderer.cache.misses
    assert misses == 2                                    # one mapping per source
    second = renderer.render(state)
    assert renderer.cache.misses == misses and renderer.cache.hits >= 2
    assert np.array_equal(first.ws, second.ws) and np.array_equal(first.image, second.image)
    z = torch.from_numpy(np.random.RandomState(7).randn(1, G.z_dim)).float()
    with torch.no_grad():
        fresh = G.mapping(z, None, truncation_psi=0.5)[0]
    assert torch.equal(renderer.cache.ws(7, 0.5), fresh)


def test_engine_exports_render_options_for_the_app():
    assert "RenderOptions" in engine.__all__ and engine.RenderOptions is RenderOptions
    renderer = engine.Renderer(_tiny_sg2(), "cpu", engine.RenderOptions(path="reference"))
    assert renderer.path_status.startswith("reference")


# --- CUDA graph fallback -----------------------------------------------------------------------

def test_a_failed_graph_capture_runs_eagerly_once_and_is_not_retried():
    """Capturing a graph of CPU work fails (there is no CUDA stream); the cache runs the function
    eagerly, says why, and does not try that key again."""
    G = _tiny_sg2()
    calls = []

    def synthesize(ws: torch.Tensor) -> torch.Tensor:
        calls.append(ws.shape[0])
        return G.synthesis(ws, noise_mode="const")

    cache = GraphCache(max_graphs=2)
    ws = G.mapping(torch.randn(2, G.z_dim), None)
    with torch.no_grad():
        expected = G.synthesis(ws, noise_mode="const")
        for _ in range(3):
            img, how = cache.run("b2", synthesize, ws)
            assert torch.equal(img, expected)
            assert how.startswith("eager (CUDA graph capture failed: ") and "cuda" in how.lower()
    assert calls == [2, 2, 2]                             # one eager call each time: no retries
    assert list(cache.failures) == ["b2"] and cache.captures == 0 and len(cache) == 0
    cache.clear()
    assert not cache.failures
