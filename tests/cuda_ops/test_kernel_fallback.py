"""Where the kernels cannot load, the reference runs, one log line says why, and the program goes on."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Loads (or fails to load) the CPU kernels, then runs every op through the façade and prints status.
PROGRAM = """
import torch, cuda_ops
from cuda_ops import build
print("LOAD", build.load_kernels("cpu"))
x = torch.randn(1, 3, 8, 8)
f = cuda_ops.setup_filter([1, 3, 3, 1])
y = cuda_ops.filtered_lrelu(cuda_ops.upsample2d(cuda_ops.bias_act(x, torch.zeros(3), act="lrelu"), f), f, f,
                            up=2, down=2, padding=3)
print("SHAPE", tuple(y.shape))
for op, line in cuda_ops.status().items():
    print("STATUS", op, line)
"""


def _run(env_extra: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)


def _log_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "kernels" in line and "StyleDeck" in line]


def test_kernels_off_runs_the_reference_and_says_so_once():
    proc = _run({"STYLEDECK_KERNELS": "off"})
    assert proc.returncode == 0, proc.stderr
    assert "LOAD disabled by STYLEDECK_KERNELS=off" in proc.stdout
    assert "SHAPE (1, 3, 16, 16)" in proc.stdout
    assert len(_log_lines(proc.stderr)) == 1, proc.stderr
    for op in ("bias_act", "upfirdn2d"):
        assert f"STATUS {op} cpu: reference" in proc.stdout


def test_an_unusable_cache_folder_runs_the_reference(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    proc = _run({"STYLEDECK_KERNEL_CACHE": str(blocker / "kernels")})
    assert proc.returncode == 0, proc.stderr
    assert "LOAD " in proc.stdout and "LOAD None" not in proc.stdout
    assert "SHAPE (1, 3, 16, 16)" in proc.stdout
    lines = _log_lines(proc.stderr)
    assert len(lines) == 1 and "using the reference ops" in lines[0], proc.stderr


def test_a_missing_compiler_runs_the_reference(tmp_path):
    proc = _run({"STYLEDECK_KERNEL_CACHE": str(tmp_path / "cache"), "CXX": str(tmp_path / "no-such-compiler")})
    assert proc.returncode == 0, proc.stderr
    assert "LOAD " in proc.stdout and "LOAD None" not in proc.stdout
    assert "SHAPE (1, 3, 16, 16)" in proc.stdout
    lines = [line for line in _log_lines(proc.stderr) if "unavailable" in line]
    assert len(lines) == 1 and "using the reference ops" in lines[0], proc.stderr


def test_a_lock_left_by_a_killed_build_does_not_hang_the_next(tmp_path):
    from cuda_ops import build
    cache = tmp_path / "cache"
    # cpp_extension before torch 2.14 waits while this file exists; a killed build leaves it behind
    stale = cache / build._fingerprint("cpu") / "lock"
    stale.parent.mkdir(parents=True)
    stale.touch()
    # With the stale lock honoured the child would wait forever; the missing compiler keeps the run short.
    proc = _run({"STYLEDECK_KERNEL_CACHE": str(cache), "CXX": str(tmp_path / "no-such-compiler")}, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "SHAPE (1, 3, 16, 16)" in proc.stdout and "LOAD None" not in proc.stdout
