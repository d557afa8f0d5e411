"""Run `python main.py ...` as a user does, in a subprocess, and check how it ended."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path, models: Path | None = None) -> subprocess.CompletedProcess:
    """`models`: the bundled-models folder the run sees; by default an empty one, never models/."""
    env = {**os.environ, "STYLEDECK_MODELS": str(models or cwd / "no-models")}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def ok(result: subprocess.CompletedProcess) -> str:
    """stdout of a run that must have succeeded."""
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def failed(result: subprocess.CompletedProcess, code: int = 1) -> str:
    """stderr of a run that must have failed with `code` and a message, not a traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr
