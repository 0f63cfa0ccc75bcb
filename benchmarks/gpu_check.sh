#!/usr/bin/env bash
# The GPU checks of the scan path, as one prepared run for a lent GPU machine
# (the `device` tool's `run`; see benchmarks/README.md, "The GPU path").
#
#   bash benchmarks/gpu_check.sh part     # stage one carried piece of the onnxruntime-gpu wheel
#   bash benchmarks/gpu_check.sh run      # install it, run the CUDA tests, then bench_gpu.py
#
# Why pieces: the machine's image has torch, torchvision and plain onnxruntime
# (1.30.0, seen on 2026-12-04: a CPU build, no CUDA provider;
# the run prints its providers), and no registry; the onnxruntime-gpu wheel (256 MB for 1.31.1,
# cp312) is over the 64 MiB a call may carry. Note: each call also carries the whole
# tracked tree (about 50 MB now), so 60 MB pieces no longer fit; pieces would have to
# be under ~14 MB (19 calls). So, here (with the registry):
#
#   echo /.ort/ >> .git/info/exclude; mkdir -p .ort
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 -d .ort onnxruntime-gpu==1.31.1
#   (cd .ort && sha256sum *.whl > wheel.sha256 && split -b 60M -d *.whl piece. && rm *.whl)
#
# then one `run` per piece, back to back while the machine stays warm (30 s),
# each carrying only its piece, e.g. carry [".ort/piece.00", ".ort/wheel.sha256"]
# and command `bash benchmarks/gpu_check.sh part`; the pieces gather in /tmp/ort
# on the machine. Last, `bash benchmarks/gpu_check.sh run` with timeout_s 600.
# If the image's own onnxruntime already lists CUDAExecutionProvider, skip the
# pieces: `run` uses it as it is.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/mai-gpu-check}"
mkdir -p "$OUT" /tmp/ort
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

case "${1:-run}" in
part)
    cp -v .ort/piece.* .ort/wheel.sha256 /tmp/ort/ 2>&1
    ls -la /tmp/ort
    exit 0
    ;;
run) ;;
*)
    echo "usage: $0 part|run" >&2
    exit 2
    ;;
esac

if ls /tmp/ort/piece.* >/dev/null 2>&1; then
    wheel="/tmp/ort/$(cut -d' ' -f3 /tmp/ort/wheel.sha256)"
    cat /tmp/ort/piece.* > "$wheel"
    (cd /tmp/ort && sha256sum -c wheel.sha256) || { echo "the wheel's pieces do not add up" >&2; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheel" \
        || exit 1
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 - <<'PY'
import onnxruntime as ort, torch, torchvision
print("onnxruntime", ort.__version__, ort.get_available_providers())
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "torchvision", torchvision.__version__)
PY
} 2>&1 | tee "$OUT/versions.txt"

# The CUDA tests and the GPU stage's CPU tests, then the benchmark.
timeout 240 python3 -m pytest -q -p no:cacheprovider -rs -s tests/test_scan_gpu.py 2>&1 | tail -40 | tee "$OUT/tests.txt"
timeout 420 python3 benchmarks/bench_gpu.py --files "${MAI_BENCH_FILES:-1000}" --seconds 2 \
    --batch-sizes "${MAI_BENCH_BATCHES:-32,256,1024,4096}" 2>&1 | tee "$OUT/bench_gpu.md"
