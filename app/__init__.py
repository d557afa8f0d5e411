"""StyleDeck's window (PySide6 + pyqtgraph): what a person sees and touches. No tensor maths here.

`run_app(argv)` is what `python main.py` (no command) runs.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)


# Flags main.py routes to the app rather than the command line.
APP_FLAGS = ("--network", "--device", "--seeds", "--screenshot", "--screenshot-panel", "--screenshot-timeout", "--session")
PANELS = ("mixing", "truncation", "noise", "model", "finetune", "projection", "animation")  # the window's docks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py", description="Open the StyleDeck editing window.")
    p.add_argument("--network", metavar="PATH", help="network to open (default: the bundled one in models/)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--session", metavar="FILE", help="a saved session to open")
    p.add_argument("--seeds", default="0", metavar="BASE[,STYLE...]",
                   help="seeds to start with: the base, then style sources for the Mixing sliders (e.g. 0,7)")
    p.add_argument("--screenshot", metavar="FILE.png",
                   help="wait for the first image, save a PNG of the whole window and exit")
    p.add_argument("--screenshot-panel", choices=PANELS, default="mixing",
                   help="the dock to raise before the screenshot (default: mixing)")
    p.add_argument("--screenshot-timeout", type=float, default=300.0, metavar="S",
                   help="give up on the first image after this many seconds (exit 1)")
    return p


def _has_display() -> bool:
    """Whether Qt can open a window: a display server, or a platform chosen explicitly."""
    return bool(os.environ.get("QT_QPA_PLATFORM") or os.environ.get("DISPLAY")
                or os.environ.get("WAYLAND_DISPLAY") or sys.platform in ("win32", "darwin"))


def run_app(argv: Sequence[str]) -> int:
    """Open the window; returns the exit status."""
    args = build_parser().parse_args(list(argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    if not _has_display():
        if not args.screenshot:
            print("error: no display to open the window on (DISPLAY and WAYLAND_DISPLAY are not set). Run it on "
                  "a desktop, or under a virtual one (xvfb-run python main.py); `python main.py --help` lists "
                  "the commands that need no window.", file=sys.stderr)
            return 1
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # a screenshot needs no screen
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    import engine
    from app.main_window import MainWindow

    try:
        device = str(engine.resolve_device(args.device))
    except engine.StyleDeckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("StyleDeck")
    app.setOrganizationName("StyleDeck")
    from app.main_thread_gc import install as collect_garbage_on_the_gui_thread
    collect_garbage_on_the_gui_thread()    # job threads must never run Qt destructors (see the module)
    network, problem = args.network, None
    if network is None:
        try:
            network = str(engine.default_network())
        except engine.StyleDeckError as exc:
            problem = str(exc)
    window = MainWindow(device=device)
    _install_excepthook(window)
    try:
        window.initial_seeds = tuple(engine.parse_range_list(args.seeds)) or (0,)
    except engine.StyleDeckError as exc:
        print(f"error: --seeds: {exc}", file=sys.stderr)
        window.close()
        return 2
    window.show()
    if problem is not None:
        window.show_error(problem)
    if args.session:
        window.open_session(args.session)
    elif network:
        window.open_network(network)

    if args.screenshot:
        if problem is not None or not (network or args.session):
            print(f"error: nothing to show for the screenshot: {problem or 'no network'}", file=sys.stderr)
            window.close()  # stops the render thread
            return 1
        status = {"code": 1}
        window.show_panel(args.screenshot_panel)

        def save(_result: object = None) -> None:
            window.render_controller.shown.disconnect(on_shown)
            app.processEvents()  # let the canvas paint the image before grabbing
            ok = window.grab().save(args.screenshot, "PNG")
            if ok:
                status["code"] = 0
                docks = [d.windowTitle().replace("&&", "&") for d in window.docks.values() if d.isVisible()]
                print(f"saved {args.screenshot} ({window.width()}x{window.height()}; "
                      f"network {Path(window.network_path or '').name}; docks: {', '.join(docks)})")
            else:
                print(f"error: could not write {args.screenshot}", file=sys.stderr)
            window.close()
            app.quit()

        def on_shown(_result: object) -> None:
            QTimer.singleShot(50, save)  # one more event-loop turn: layouts settle, the item repaints

        def failed(message: str) -> None:
            print(f"error: {message}", file=sys.stderr)
            window.close()
            app.quit()

        def timed_out() -> None:
            failed(f"no image within {args.screenshot_timeout:g} s")

        window.render_controller.shown.connect(on_shown)
        window.loader.failed.connect(failed)
        window.render_controller.failed.connect(failed)
        QTimer.singleShot(int(args.screenshot_timeout * 1000), timed_out)
        app.exec()
        return status["code"]
    code = app.exec()
    return int(code)


def _install_excepthook(window: object) -> None:
    """The app's top-level boundary: an exception no slot caught is logged with its traceback and
    shown in the window, and the app keeps running (Qt would otherwise abort in some versions)."""
    previous = sys.excepthook

    def hook(exc_type, exc, tb) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            previous(exc_type, exc, tb)
            return
        log.error("unexpected error", exc_info=(exc_type, exc, tb))
        try:
            window.show_error(f"Unexpected error ({exc_type.__name__}: {exc}); the log has the details.")
        except Exception:  # the window itself may be what broke
            previous(exc_type, exc, tb)

    sys.excepthook = hook
