"""Every CUDA source compiles with nvcc for sm_80 and sm_90 (object files only; no GPU needed).

CI sets CUDA_HOME (and TORCH_CUDA_ARCH_LIST) where /usr/local/cuda exists, so a kernel that does not
compile never lands. Skipped, with the reason, where there is no CUDA toolkit.
"""
from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

from cuda_ops import build

ARCHS = ("80", "90")
CU_SOURCES = build.sources("cuda")


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return str(Path(home) / "bin" / "nvcc")
    return None


def _nvcc_command(nvcc: str, source: Path, out: Path) -> list[str]:
    from torch.utils import cpp_extension

    includes = cpp_extension.include_paths("cuda") + [sysconfig.get_paths()["include"], str(build.CSRC)]
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    return [nvcc, "-c", str(source), "-o", str(out), "-std=c++20", "-O3", "--use_fast_math",
            *cpp_extension.COMMON_NVCC_FLAGS, *gencode, "-Xcompiler", "-fPIC", abi,
            "-DTORCH_EXTENSION_NAME=styledeck_kernels_cuda", "-DTORCH_API_INCLUDE_EXTENSION_H",
            *[f"-I{p}" for p in includes]]


def test_there_are_cuda_sources():
    assert {p.name for p in CU_SOURCES} >= {"bias_act_cuda.cu", "upfirdn2d_cuda.cu"}


needs_nvcc = [
    pytest.mark.skipif(_nvcc() is None, reason="no CUDA toolkit: CUDA_HOME is unset or has no bin/nvcc"),
    pytest.mark.skipif(torch.version.cuda is None, reason="this torch is a CPU-only build (no CUDA headers)"),
]


@pytest.fixture(scope="module")
def compiles(tmp_path_factory):
    """Start nvcc on every source at once (a few minutes each; CI has several cores), keyed by name."""
    out_dir = tmp_path_factory.mktemp("nvcc")
    procs = {}
    for source in CU_SOURCES:
        out = out_dir / (source.stem + ".o")
        procs[source.name] = (out, subprocess.Popen(_nvcc_command(_nvcc(), source, out), stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT, text=True))
    yield procs
    for _, proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("source", CU_SOURCES, ids=[p.name for p in CU_SOURCES])
@needs_nvcc[0]
@needs_nvcc[1]
def test_cuda_source_compiles_for_sm80_and_sm90(source, compiles):
    out, proc = compiles[source.name]
    output, _ = proc.communicate(timeout=1800)
    errors = [line for line in output.splitlines() if "error" in line]
    assert proc.returncode == 0, "\n".join(errors[:20]) or output[-3000:]
    assert out.stat().st_size > 0
    # Both architectures' machine code is in the object (cuobjdump lists the embedded ELF files).
    cuobjdump = Path(_nvcc()).with_name("cuobjdump")
    if cuobjdump.is_file():
        listing = subprocess.run([str(cuobjdump), "--list-elf", str(out)], capture_output=True, text=True).stdout
        for arch in ARCHS:
            assert f"sm_{arch}" in listing, listing
