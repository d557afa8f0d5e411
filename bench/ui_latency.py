"""UI latency: time from a slider value change to the new image shown, against the bare engine.

The real window runs offscreen; the script drags a Mixing group slider of one style source
through --steps values, one step per shown image (it sets the value, then turns the event loop
until that request's image is on screen). Two passes: 'drag' (slider held down: the controller
asks for previews) and 'steps' (slider up, e.g. arrow keys: full images). A bare engine
Renderer, made the same way the app makes it, renders the very same state (preview or full, as
the window showed it) right after each step; the table gives median and p95 of both and their
ratio. The issue's target is UI p95 < 1.5x bare p95.

    python bench/ui_latency.py                     # the default network (models/ or $STYLEDECK_MODELS)
    python bench/ui_latency.py --network x.pkl --device cuda --steps 200
    python bench/ui_latency.py --tiny              # a small random StyleGAN2 (no files needed)

CUDA is synchronised inside the renderer by its copy of the image to the CPU before each clock read.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QEventLoop, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

import engine  # noqa: E402
from app.main_window import MainWindow  # noqa: E402
from engine.bundled import default_network  # noqa: E402


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def tiny_network(folder: Path, resolution: int) -> Path:
    """A random StyleGAN2 at `resolution` px (NVIDIA's layout, few channels)."""
    import torch
    from engine.networks import stylegan2
    torch.manual_seed(0)
    G = stylegan2.Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=resolution, img_channels=3,
                            channel_base=4096, channel_max=128, num_fp16_res=0,
                            mapping_kwargs=dict(num_layers=4)).eval()
    return engine.save_checkpoint(folder / f"tiny_sg2_{resolution}.safetensors", {"G_ema": G})


def wait_until(window: MainWindow, predicate, timeout_s: float = 600.0) -> None:
    """Run the event loop (idle, not spinning: a spin would hold the GIL the render thread needs)
    until predicate() holds, checking after every shown image, failure or finished load."""
    if predicate():
        return
    loop = QEventLoop()
    controller = window.render_controller

    def check(*_args) -> None:
        if predicate():
            loop.quit()

    signals = (controller.shown, controller.failed, window.loader.finished, window.loader.failed)
    for signal in signals:
        signal.connect(check)
    timer = QTimer(singleShot=True, interval=int(timeout_s * 1000))
    timer.timeout.connect(loop.quit)
    timer.start()
    loop.exec()
    timer.stop()
    for signal in signals:
        signal.disconnect(check)
    if not predicate():
        raise TimeoutError("no image within the timeout")


def drag(window: MainWindow, bare: engine.Renderer, group: str, steps: int,
         held: bool) -> tuple[list[float], list[float], int]:
    """Step the slider through `steps` values; (UI latencies ms, bare render ms, previews shown).

    Each step's bare render runs right after its UI step (the window idle meanwhile), so both
    see the same machine load: on a shared machine, timing them in two separate phases lets a
    change of load pass for UI overhead."""
    controller = window.render_controller
    slider = window.mixing_panel.group_slider(1, group)
    shown_at: list[float] = []
    controller.shown.connect(lambda _r: shown_at.append(time.perf_counter()))
    latencies, bare_ms, previews = [], [], 0
    if held:
        slider.setSliderDown(True)  # press: the session's drag starts, the controller asks for previews
    for i in range(steps):
        value = round(1000 * (i + 1) / steps) if i % 2 == 0 else round(1000 * (steps - i) / steps)
        if value == slider.value():
            value = (value + 1) % 1001
        start = time.perf_counter()
        slider.setValue(value)
        wait_until(window, lambda: controller.idle)
        latencies.append((shown_at[-1] - start) * 1000.0)
        preview = controller.last_result.preview
        previews += preview
        start = time.perf_counter()
        bare.render(window.session.state, preview=preview)  # ends with the image on the CPU: synchronised
        bare_ms.append((time.perf_counter() - start) * 1000.0)
    if held:
        slider.setSliderDown(False)
        wait_until(window, lambda: controller.idle)
    return latencies, bare_ms, previews


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", help="network file (default: the bundled default network)")
    p.add_argument("--tiny", type=int, nargs="?", const=128, metavar="RES",
                   help="use a small random StyleGAN2 of RES px (default 128) instead of a file")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--group", default="coarse", help="which group slider to drag (coarse, middle, fine)")
    p.add_argument("--passes", default="drag,steps", help="drag (previews), steps (full images), or both")
    args = p.parse_args(argv)

    tmp = tempfile.TemporaryDirectory()
    from PySide6.QtCore import QSettings
    QSettings.setPath(QSettings.NativeFormat, QSettings.UserScope, tmp.name)  # keep the user's recent list clean
    path = str(tiny_network(Path(tmp.name), args.tiny) if args.tiny else (args.network or default_network()))
    app = QApplication.instance() or QApplication([])
    window = MainWindow(device=args.device)
    window.show()
    window.open_network(path)
    wait_until(window, lambda: window.render_controller.last_result is not None or window.last_error is not None)
    if window.render_controller.last_result is None:
        print(f"error: {window.last_error}", file=sys.stderr)
        return 1
    window.source_strip.add_style_source(seed=1)
    wait_until(window, lambda: window.render_controller.idle)
    groups = [g.name for g in window.groups]
    if args.group not in groups:
        print(f"error: this network has no {args.group} group ({', '.join(groups)})", file=sys.stderr)
        return 2

    bare = engine.Renderer(engine.load_network(path, device=args.device), args.device)  # made as the app makes it
    for preview in (False, True, False, True):
        bare.render(window.session.state, preview=preview)  # warm-up, as the window's renderer is warm
    rows = []
    for name in args.passes.split(","):
        ui, bare_ms, previews = drag(window, bare, args.group, args.steps, held=(name == "drag"))
        rows.append((name, previews, ui, bare_ms))
    window.close()

    res = window.render_controller.last_result.image.shape
    print(f"# {Path(path).name} ({res[1]}x{res[0]} px), device {args.device}, {args.steps} steps of the "
          f"{args.group} slider; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'pass':<7} {'previews':>8} {'UI median':>10} {'UI p95':>8} {'bare median':>12} {'bare p95':>9} "
          f"{'p95 ratio':>10} {'median ratio':>13}")
    for name, previews, ui, bare in rows:
        print(f"{name:<7} {previews:>8} {statistics.median(ui):>10.1f} {p95(ui):>8.1f} "
              f"{statistics.median(bare):>12.1f} {p95(bare):>9.1f} {p95(ui) / p95(bare):>9.2f}x "
              f"{statistics.median(ui) / statistics.median(bare):>12.2f}x")
    print("times in ms; target: UI p95 < 1.5x bare p95")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
