#!/usr/bin/env bash
# The GPU checks of issue 9 in ONE command, for a session that has the device machine (an H200).
#
# Before the call, on the dev machine (once; the reference vectors must travel with the repo, and
# ../shared does not travel):
#     mkdir -p .git/info && grep -qx '/shared/' .git/info/exclude 2>/dev/null || echo '/shared/' >> .git/info/exclude
#     mkdir -p shared && cp -r ../shared/reference shared/
#     mkdir -p .whl && grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
#     pip download --no-deps -d .whl lpips==0.1.4        # the machine's image has no lpips (projection)
# The call (device tool):  run(command="bash bench/device_check.sh", carry=[".whl"], timeout_s=600)
# (mp4 export needs imageio-ffmpeg, absent there and its wheel, 68 MB, over the 64 MiB a call carries:
# export_speed times gif and PNG frames there, the other two encoders are measured on CPUs.)
#
# What it does, each step under its own `timeout` (build 150 s, pytest 180 s, projection_target 60 s,
# projection_speed 75 s, export_speed 45 s, then gpu_speed what is left less 10 s but at most 240 s), all
# within DEVICE_CHECK_BUDGET_S (default 540 s; with the machine's start, about 11-12 of a session's 15
# device minutes):
#   env         GPU, driver, nvcc, python3 and torch versions                        -> $OUT/summary.txt
#   build       cuda_ops' CPU and CUDA kernels (JIT, sm_90), then cuda_ops.status()  -> $OUT/build.log
#   pytest      every gpu-marked test outside tests/app (the app needs PySide6, absent there), -v so
#               that a run cut short still shows which tests passed
#                                                                                     -> $OUT/pytest_gpu.log
#   projection_target, projection_speed, export_speed: the device numbers of issues 7 and 8
#                                                                                     -> $OUT/<name>.log
#   gpu_speed   bench/gpu_speed.py: ops kernel vs reference, generators fast vs reference, targets
#                                                                                     -> $OUT/gpu_speed.log, .json
# $OUT/summary.txt ends with one line per step (exit code, seconds) and the key result lines; the
# reply's output_tail shows the same. Nothing is installed: the machine's python3 has torch, numpy,
# pytest, safetensors, imageio, opencv, pillow, tqdm, ninja and nvcc, which is all this needs
# (pip install -e . is not possible offline there, so the repo goes on PYTHONPATH instead).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_check_out}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
BUDGET=${DEVICE_CHECK_BUDGET_S:-540}
START=$(date +%s)
PY=${PYTHON:-python3}

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}   # the H200: build sm_90 only (faster build)
export MAX_JOBS=${MAX_JOBS:-16}
export STYLEDECK_KERNEL_CACHE=${STYLEDECK_KERNEL_CACHE:-/tmp/styledeck-kernels}
if [ -z "${STYLEDECK_REFERENCE:-}" ]; then
    for d in ../shared/reference shared/reference; do
        if [ -f "$d/sg2_uncond_config.json" ]; then export STYLEDECK_REFERENCE="$(cd "$d" && pwd)"; break; fi
    done
fi

say() { echo "$*" | tee -a "$SUMMARY"; }
if ls .whl/*.whl > /dev/null 2>&1; then       # carried wheels of packages the image lacks
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PYTHONPATH" || echo "carried wheels did not install"
fi
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME CAP_SECONDS COMMAND...: runs COMMAND with at most min(CAP, time left) seconds into $OUT/NAME.log.
step() {
    local name=$1 cap=$2; shift 2
    local t; t=$(left)
    [ "$cap" -lt "$t" ] && t=$cap
    if [ "$t" -lt 15 ]; then say "STEP $name: skipped (budget spent)"; return; fi
    echo "=== $name (at most ${t}s) ==="
    local s; s=$(date +%s)
    timeout -k 5 "$t" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local note=""; [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && note=" (timed out)"
    say "STEP $name: rc=$rc$note, $(( $(date +%s) - s ))s"
    tail -n 25 "$OUT/$name.log"
}

say "# device_check $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET}s, git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader 2>&1
  nvcc --version 2>&1 | tail -n 1
  $PY -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0), "cc", torch.cuda.get_device_capability(0))' 2>&1
  echo "STYLEDECK_REFERENCE=${STYLEDECK_REFERENCE:-not found: the reference-vector tests will fail (see the top of this script)}"
} | tee -a "$SUMMARY"

step build 150 $PY -c '
import logging, time
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from cuda_ops import build
import cuda_ops
for kind in ("cpu", "cuda"):
    t = time.time()
    reason = build.load_kernels(kind)
    print(f"{kind} kernels:", "loaded" if reason is None else f"NOT loaded: {reason}", f"({time.time() - t:.0f}s)")
for op, how in cuda_ops.status().items():
    print(f"status {op}: {how}")
'

GPU_TESTS=$(grep -rlE "pytest\.mark\.gpu" tests --include='*.py' | grep -v '^tests/app/' | sort | tr '\n' ' ')
TIMEOUT_ARGS=""; $PY -c "import pytest_timeout" 2>/dev/null && TIMEOUT_ARGS="--timeout 150"   # one hung test must not eat the rest
step pytest_gpu 180 $PY -m pytest -m gpu -v -p no:cacheprovider -o addopts="" -rfEs $TIMEOUT_ARGS $GPU_TESTS

# Issues 7 and 8 before gpu_speed: their device numbers are all that is left of them, and each step
# is sized to finish inside its cap (encoding 60 frames of 1024 px took 12 s for gif + PNG on a
# 2-core CPU). PROJECTION_TARGET_ARGS / PROJECTION_ARGS / EXPORT_ARGS replace the flags for a dry run
# without a GPU (e.g. "--device cpu --sizes 32 --steps 3").
#   projection_target  the issue-7 target, measured: 1000 W-mode LPIPS steps of a 1024 px StyleGAN2
#   projection_speed   every row (SG2 and SG3-T, 256 and 1024 px, W / W+, LPIPS / pixel) and the
#                      NVIDIA-style loop as baseline: one step timed over 50, 1000 steps extrapolated
#   export_speed       render and encode frames/s at 256 and 1024 px (gif, the slowest encoder, and PNG)
step projection_target 60 $PY bench/projection_speed.py ${PROJECTION_TARGET_ARGS:---sizes 1024 --archs sg2 --steps 1000 --configs w:lpips --no-baseline}
step projection_speed 75 $PY bench/projection_speed.py ${PROJECTION_ARGS:---steps 50 --extrapolate}
step export_speed 45 $PY bench/export_speed.py ${EXPORT_ARGS:---formats gif,png}

SPEED_CAP=$(( $(left) - 10 ))
[ "$SPEED_CAP" -gt 240 ] && SPEED_CAP=240
SPEED_BUDGET=$(( SPEED_CAP > 80 ? SPEED_CAP - 40 : SPEED_CAP / 2 ))   # its own stop, before the hard one
# GPU_SPEED_ARGS: extra flags, e.g. "--device cpu --quick --sizes 16" for a dry run of this script without a GPU.
step gpu_speed "$SPEED_CAP" $PY bench/gpu_speed.py --json "$OUT/gpu_speed.json" --budget-s $SPEED_BUDGET ${GPU_SPEED_ARGS:-}

{ echo "--- results ---"
  grep -E "^(cpu|cuda) kernels:|^status " "$OUT/build.log" 2>/dev/null
  tail -n 1 "$OUT/pytest_gpu.log" 2>/dev/null
  grep -E "^(FAILED|ERROR) " "$OUT/pytest_gpu.log" 2>/dev/null | head -n 20
  grep -E "^StyleGAN" "$OUT/projection_target.log" 2>/dev/null | sed 's/^/projection target: /'
  sed -n '/^## targets/,$p' "$OUT/gpu_speed.log" 2>/dev/null
  echo "total $(( $(date +%s) - START ))s"
} | tee -a "$SUMMARY"
