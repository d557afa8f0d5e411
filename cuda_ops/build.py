"""Just-in-time build and load of the compiled ops, cached on disk; a failure is a reason, never a crash.

`load_kernels("cpu")` compiles every `csrc/*.cpp` (the op schemas and the C++ CPU kernels) into one
library; `load_kernels("cuda")` loads that first (the schemas live there) and then compiles every
`csrc/*.cu` into a second one. Each library is built once into
`~/.cache/styledeck/kernels/<fingerprint>/` (fingerprint: sources, kind, torch, Python, CUDA and the
GPUs' compute capabilities) and later processes load the built file without a compiler.

STYLEDECK_KERNELS=off|cpu|cuda|auto chooses what may load: off loads nothing, cpu only the CPU
library, cuda and auto both (auto is the default). STYLEDECK_KERNEL_CACHE moves the build folder;
it is apart from STYLEDECK_CACHE (downloads and datasets), so moving that never forces a rebuild.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Literal

try:
    import fcntl
except ImportError:  # Windows: no flock; a lock file older than STALE_LOCK_S counts as left behind
    fcntl = None  # type: ignore[assignment]

import torch

log = logging.getLogger(__name__)

Kind = Literal["cpu", "cuda"]
CSRC = Path(__file__).resolve().parent / "csrc"
# Bump when the flags below change: they are part of what a cached library was built with.
_BUILD_RECIPE = "1"
_CFLAGS = ["-O3", "-fopenmp", "-march=native"]  # the C++ standard is torch's choice (C++20 for 2.14)
_CUDA_CFLAGS = ["-O3", "--use_fast_math"]

STALE_LOCK_S = 1800.0  # without flock: longer than any build of these kernels
_lock = threading.RLock()  # re-entered: "cuda" loads "cpu" first
_results: dict[str, str | None] = {}  # kind -> None (loaded) or the reason it is not


def _mode() -> str:
    mode = os.environ.get("STYLEDECK_KERNELS", "auto").strip().lower() or "auto"
    return mode if mode in ("off", "cpu", "cuda", "auto") else "auto"


def cache_root() -> Path:
    """Folder holding one build folder per fingerprint."""
    root = os.environ.get("STYLEDECK_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "styledeck" / "kernels"


def sources(kind: Kind) -> list[Path]:
    """The files compiled into `kind`'s library."""
    return sorted(CSRC.glob("*.cu" if kind == "cuda" else "*.cpp"))


def _fingerprint(kind: Kind) -> str:
    h = hashlib.sha256()
    compiled = (".cu", ".cuh") if kind == "cuda" else (".cpp",)
    for path in sorted(CSRC.iterdir()):  # headers too: a changed .h must rebuild
        if path.suffix in (".h", *compiled):
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(f"{kind}|{torch.__version__}|{sys.version_info[:2]}|{_BUILD_RECIPE}|{platform.machine()}".encode())
    if kind == "cpu":  # built with -march=native: a library from another CPU could hold illegal instructions
        h.update(_cpu_flags().encode())
    if kind == "cuda":
        caps = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
        h.update(f"|{torch.version.cuda}|{caps}|{os.environ.get('TORCH_CUDA_ARCH_LIST', '')}".encode())
    return h.hexdigest()[:16]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _first_line(exc: BaseException) -> str:
    """One line for the log: a compiler's first "error:" line if there is one, else the message's first."""
    lines = str(exc).splitlines()
    errors = [line for line in lines if "error:" in line or "error " in line.lower()[:12]]
    if errors and "Error building extension" in lines[0]:
        return f"compile error: {errors[0].strip()}"[:300]
    for line in lines:
        if line.strip():
            return f"{type(exc).__name__}: {line.strip()}"[:300]
    return type(exc).__name__


def _build_and_load(kind: Kind) -> None:
    """Load `kind`'s library, building it first if this fingerprint has none; raises on failure."""
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)  # its "No CUDA runtime is found" warning is noise for a CPU build
    try:
        from torch.utils import cpp_extension  # slow import: only when kernels are wanted
    finally:
        cpp_log.setLevel(level)

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device")
        if cpp_extension.CUDA_HOME is None:
            raise RuntimeError("no CUDA toolkit found (set CUDA_HOME)")
    srcs = sources(kind)
    if not srcs:
        raise RuntimeError(f"no {kind} sources in {CSRC}")
    name = f"styledeck_kernels_{kind}"
    build_dir = cache_root() / _fingerprint(kind)
    built = build_dir / f"{name}.so"
    if _load_built(built):  # built by an earlier process: no compiler or ninja needed
        return
    build_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(build_dir):
        if _load_built(built):  # another process finished the build while this one waited for the lock
            return
        log.warning("building StyleDeck %s kernels (first use, ~1 min; cached in %s)…", kind, build_dir)
        try:
            cpp_extension.load(
                name=name, sources=[str(s) for s in srcs], build_directory=str(build_dir),
                extra_cflags=_CFLAGS, extra_cuda_cflags=_CUDA_CFLAGS,
                extra_ldflags=["-fopenmp"] if kind == "cpu" else [],
                extra_include_paths=[str(CSRC)], is_python_module=False, verbose=False)
        except BaseException as exc:
            # Keep the compiler's full output beside the build for whoever reads the one-line reason.
            details = build_dir / "last_error.txt"
            details.write_text(str(exc))
            exc._styledeck_log = details  # type: ignore[attr-defined]
            raise


def _load_built(library: Path) -> bool:
    """Load an already built library; False when there is none or it is half-written (a build running)."""
    if not library.is_file():
        return False
    try:
        torch.ops.load_library(str(library))
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _build_lock(build_dir: Path) -> Iterator[None]:
    """One builder per folder, across processes, through a lock the OS drops when its holder dies.

    Before torch 2.14, cpp_extension's own lock is a plain file that a killed build (Ctrl+C, a closed
    terminal) leaves behind, and every later build then waits on it forever. Holding this lock proves
    that no other StyleDeck process is building here, so a file of cpp_extension's found meanwhile is
    stale.
    """
    with open(build_dir / "styledeck.lock", "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        stale = build_dir / "lock"
        if stale.exists() and (fcntl is not None or time.time() - stale.stat().st_mtime > STALE_LOCK_S):
            log.info("removing a stale build lock left by an interrupted build: %s", stale)
            stale.unlink(missing_ok=True)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def load_kernels(kind: Kind) -> str | None:
    """Build (first time) and load the `kind` kernels: None when loaded, else a one-line reason.

    Never raises; safe to call from several threads. The result is kept for the process.
    """
    with _lock:
        if kind in _results:
            return _results[kind]
        mode = _mode()
        reason: str | None = None
        if mode == "off":
            reason = "disabled by STYLEDECK_KERNELS=off"
        elif kind == "cuda" and mode == "cpu":
            reason = "disabled by STYLEDECK_KERNELS=cpu"
        elif kind not in ("cpu", "cuda"):
            reason = f"unknown kernel kind {kind!r}"
        if reason is not None:
            log.warning("StyleDeck %s kernels unavailable, using the reference ops: %s", kind, reason)
        if reason is None and kind == "cuda":
            cpu_reason = load_kernels("cpu")  # the CUDA library implements schemas the CPU one declares
            if cpu_reason is not None:
                reason = f"CPU library (op schemas) unavailable: {cpu_reason}"
        if reason is None:
            try:
                _build_and_load(kind)  # cuda_ops.kernels.<op> adds each op's fake and autograd on import
            except BaseException as exc:  # noqa: BLE001 - any failure leaves the reference running
                if isinstance(exc, KeyboardInterrupt):
                    raise
                reason = _first_line(exc)
                details = getattr(exc, "_styledeck_log", None)
                log.warning("StyleDeck %s kernels unavailable, using the reference ops: %s%s", kind, reason,
                            f" (compiler output: {details})" if details else "")
        _results[kind] = reason
        return reason
