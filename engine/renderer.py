"""The renderer: an EditState in, a uint8 image (and the W+ that made it) out.

A `Renderer` owns the device, the generator, its `LatentCache` and the render path (engine/fast_path.py:
"fast" by default, or "reference"), and is used from ONE thread (the app's render worker, or a script).
It hands back numpy arrays it never touches again, so a widget can keep showing an image while the next
one renders (conventions §5).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import ContextManager, Literal, Sequence

import numpy as np
import torch
from torch import nn

from engine.edit_state import EditState
from engine.errors import StyleDeckError
from engine.fast_path import RenderOptions, Synthesizer
from engine.images import image_grid, to_rgb, to_uint8
from engine.jobs import translate_oom
from engine.latents import (G_device, LatentCache, LayerGroup, Source, check_noise_mode, compose_ws, layer_groups,
                            network_family)
from engine.networks.stylegan3 import input_transform

__all__ = ["PREVIEW_MAX_RESOLUTION", "RenderOptions", "RenderResult", "Renderer", "preview_resolution"]

log = logging.getLogger(__name__)

# A preview stops at half the resolution, or a quarter when half would still be above this.
PREVIEW_MAX_RESOLUTION = 256


@dataclass(frozen=True)
class RenderResult:
    """One rendered image and the latent that made it."""
    image: np.ndarray    # uint8 [H, W, 3], owned by the receiver: the renderer never touches it again
    ws: np.ndarray       # float32 [num_ws, w_dim], the W+ sent to synthesis ([rows, cols, num_ws, w_dim] for a grid)
    render_ms: float     # wall time of the render, latents to numpy image
    preview: bool        # True when this is a cheaper preview (same size, less detail)
    path: str = ""       # how synthesis ran, e.g. "fast: float16 + float32, grouped modconv, CUDA graph"


def preview_resolution(img_resolution: int) -> int:
    """The block resolution a StyleGAN2 'skip' preview stops at: R/2, or R/4 when R/2 > 256 px."""
    res = img_resolution // 2
    if res > PREVIEW_MAX_RESOLUTION:
        res //= 2
    return res


def _translate_oom() -> ContextManager[None]:
    return translate_oom("rendering", "Close other programs that use the GPU, or open the network on the CPU.")


def _pick_generator(networks: dict[str, nn.Module] | nn.Module) -> nn.Module:
    if isinstance(networks, nn.Module):
        return networks
    G = networks.get("G_ema", networks.get("G"))
    if G is None:
        raise StyleDeckError(f"There is no generator to render with (found: {', '.join(networks) or 'nothing'}).")
    return G


class Renderer:
    """Renders EditStates with one generator on one device; not thread-safe (one thread uses it).

    It sets StyleGAN3's `synthesis.input.transform` buffer on G from `state.transform` (only when
    the transform changes), so G belongs to this renderer while it renders. `options` picks the
    render path (fast by default; on the CPU the fast path is the float32 reference).
    """

    def __init__(self, networks: dict[str, nn.Module] | nn.Module, device: str | torch.device = "cpu",
                 options: RenderOptions | None = None):
        G = _pick_generator(networks)
        self._family = network_family(G)                    # a StyleDeckError for a discriminator
        self.device = torch.device(device)
        if G_device(G) != self.device:
            G = G.to(self.device)
        self._G = G.eval()
        self._cache = LatentCache(G)
        self._groups = layer_groups(G)
        self._transform: tuple[float, float, float] | None = None  # what the buffer holds; None = unknown
        self._synth = Synthesizer(self._G, self._family, options)

    # --- what the app asks about the network ---------------------------------------------------

    @property
    def G(self) -> nn.Module:
        return self._G

    @property
    def groups(self) -> tuple[LayerGroup, ...]:
        return self._groups

    @property
    def num_ws(self) -> int:
        return int(self._G.num_ws)

    @property
    def family(self) -> Literal["stylegan2", "stylegan3"]:
        return self._family

    @property
    def resolution(self) -> int:
        return int(self._G.img_resolution)

    @property
    def cache(self) -> LatentCache:
        return self._cache

    @property
    def options(self) -> RenderOptions:
        return self._synth.options

    def set_options(self, options: RenderOptions) -> None:
        """Switch the render path or its settings; captured CUDA graphs are dropped."""
        self._synth = Synthesizer(self._G, self._family, options)

    @property
    def path_status(self) -> str:
        """How the last render ran (before any: how a batch-1 render will run), e.g. for a status bar."""
        return self._synth.status

    # --- rendering ---------------------------------------------------------------------------

    def compose(self, state: EditState) -> np.ndarray:
        """The W+ for `state`, float32 [num_ws, w_dim] (no synthesis)."""
        with torch.no_grad(), _translate_oom():
            return self._compose(state)[0].cpu().numpy().copy()

    def render(self, state: EditState, preview: bool = False) -> RenderResult:
        """The image of `state`: exact with preview=False; with preview=True possibly cheaper, same size.

        Same state -> bit-identical image (noise 'const' or 'none'); 'random' noise differs per call.
        A StyleGAN2 'skip' network previews by running its blocks only up to `preview_resolution`
        and upsampling that partial RGB as the network does; it drops the finest detail and costs about
        half (most pixels live in the last block). Other networks (StyleGAN3, 'orig'/'resnet')
        render the full image as their preview.
        """
        start = time.perf_counter()
        with torch.no_grad(), _translate_oom():
            ws = self._compose(state)                                   # [1, num_ws, w_dim]
            self._set_transform(state.transform)
            stop = self._preview_stop() if preview else None
            img = self._synth(ws, state.noise_mode, stop)                 # float32 [1, C, H, W]
            image = np.array(to_rgb(to_uint8(img)[0]), copy=True)         # [H, W, 3], owned
            ws_np = ws[0].cpu().numpy().copy()                            # [num_ws, w_dim]
        return RenderResult(image=image, ws=ws_np, render_ms=(time.perf_counter() - start) * 1000.0,
                            preview=stop is not None, path=self._synth.status)

    def synthesize(self, ws: torch.Tensor, noise_mode: str = "const",
                   transform: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 images [N, C, H, W] of ws [N, num_ws, w_dim] on this renderer's path (video batches);
        `transform` [N, 3, 3]: a StyleGAN3 input transform per sample."""
        return self._synth(ws, noise_mode, transform=transform)

    def render_grid(self, rows: Sequence[Source | int], cols: Sequence[Source | int], layers: Sequence[int],
                    psi: float = 1.0, cutoff: int | None = None, noise_mode: str = "const", *,
                    transform: tuple[float, float, float] | None = None) -> RenderResult:
        """NVIDIA's style-mixing grid: column sources across the top, row sources down the left, each
        cell the row source with the column source's ws on `layers`; the corner stays black.

        The same maths as `main.py mix` (engine/cli.py cmd_mix), so on the CPU (or the reference path)
        the pixels equal its grid.png; cells go through the renderer's path like `render`.
        result.ws is float32 [len(rows), len(cols), num_ws, w_dim], the W+ of each mixed cell.
        `transform` (StyleGAN3) None keeps the last one rendered.
        """
        start = time.perf_counter()
        rows = [s if isinstance(s, Source) else Source.from_seed(s) for s in rows]
        cols = [s if isinstance(s, Source) else Source.from_seed(s) for s in cols]
        if not rows or not cols:
            raise StyleDeckError("A mixing grid needs at least one row source and one column source.")
        layers = sorted({int(i) for i in layers})
        bad = [i for i in layers if not 0 <= i < self.num_ws]
        if bad:
            raise StyleDeckError(f"Style layer {bad[0]} does not exist: this network has layers 0-{self.num_ws - 1}.")
        check_noise_mode(noise_mode)

        def render(w: torch.Tensor) -> np.ndarray:                      # [num_ws, w_dim] -> [H, W, 3]
            return to_rgb(to_uint8(self._synth(w[None], noise_mode))[0])

        with torch.no_grad(), _translate_oom():
            if transform is not None:
                self._set_transform(tuple(transform))
            # One image at a time, as cli mix and NVIDIA's style_mixing.py: batching changes rounding.
            ws = {s: self._cache.ws(s, psi, cutoff) for s in dict.fromkeys(rows + cols)}
            alone = {s: render(w) for s, w in ws.items()}
            cells_ws = np.zeros((len(rows), len(cols), self.num_ws, self._G.w_dim), dtype=np.float32)
            mixed = {}
            for r, row in enumerate(rows):
                for c, col in enumerate(cols):
                    w = ws[row].clone()
                    w[layers] = ws[col][layers]                         # the column source's styles
                    cells_ws[r, c] = w.cpu().numpy()
                    mixed[r, c] = render(w)
        cells = [np.zeros_like(alone[rows[0]])] + [alone[col] for col in cols]
        for r, row in enumerate(rows):
            cells += [alone[row]] + [mixed[r, c] for c in range(len(cols))]
        grid = image_grid(cells, rows=len(rows) + 1, cols=len(cols) + 1)  # fresh array
        return RenderResult(image=grid, ws=cells_ws, render_ms=(time.perf_counter() - start) * 1000.0,
                            preview=False, path=self._synth.status)

    # --- internals ---------------------------------------------------------------------------

    def _compose(self, state: EditState) -> torch.Tensor:
        """W+ [1, num_ws, w_dim] of `state` on the device (truncation through the cache)."""
        if state.num_ws != self.num_ws:
            raise StyleDeckError(f"The editing state has {state.num_ws} ws layers but this network has "
                                 f"{self.num_ws}; it was made for another network.")
        return compose_ws(state.sources, state.mix, self._cache, state.psi, state.cutoff)

    def _set_transform(self, transform: tuple[float, float, float]) -> None:
        """StyleGAN3: write the input transform buffer when it differs from the last one written."""
        if self._family != "stylegan3":
            return  # StyleGAN2 has no input transform; the panel disables the controls
        if transform == self._transform:
            return
        rotate, tx, ty = transform
        buffer = self._G.synthesis.input.transform
        buffer.copy_(torch.from_numpy(input_transform(rotate, (tx, ty))).to(buffer))
        self._transform = transform

    def _preview_stop(self) -> int | None:
        """The block resolution a preview stops at, or None where a preview is the full render."""
        synthesis = self._G.synthesis
        if self._family != "stylegan2" or getattr(synthesis, f"b{self.resolution}").architecture != "skip":
            return None  # no partial RGB to stop at
        res = preview_resolution(self.resolution)
        return res if res in synthesis.block_resolutions else None
