#!/usr/bin/env bash
# One command for a session lent a CUDA GPU (one H200, 10-minute command limit); about 8 minutes:
#
#   bash scripts/gpu_check.sh            # results under $OUT (default ./gpu-out)
#
# 1. the Triton kernel tests compiled for the GPU (TRITON_INTERPRET=0): tests/kernels/test_triton_grads.py
#    runs on CUDA tensors there, at the scan's real chunk size plus a long-sequence case;
# 2. python -m effviz.bench kernels --device cuda (every op, backend and default length);
# 3. scripts/gpu_train_bench.py: forward and forward+backward of the Triton selective scan and
#    Bi-WKV against the torch backend at Vim-Ti / VRWKV-Ti shapes, the scan's chunk sizes, and
#    mamba_ssm's CUDA scan when it imports;
# 4. a Vim-Ti vs DeiT-Ti resolution sweep to 1248 px on CUDA.
#
# Every step has its own time limit, so one that hangs cannot take the others' time, and the
# script goes on after a failing step; the exit status is the number of steps that failed. The
# GPU machine has no network: Python packages its image lacks (soundfile and cffi, which effviz
# imports) are installed from wheels in ./wheels or ./shared/wheels when present, and a mamba_ssm
# wheel there (built for this torch and CUDA) adds its scan to the comparison.
set -u
OUT="${OUT:-$PWD/gpu-out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
failed=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log it, count a failure
    local name="$1" limit="$2"
    shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start))s" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

{ date -u; nvidia-smi -L; "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"; } >>"$LOG" 2>&1

for dir in wheels shared/wheels; do
    [ -d "$dir" ] || continue
    "$PY" -c "import soundfile" 2>/dev/null ||
        step "install soundfile from $dir" 60 "$PY" -m pip install --no-index --find-links "$dir" soundfile
    # mamba_ssm only as a prebuilt wheel: compiling its CUDA extension takes longer than this script.
    ls "$dir"/mamba_ssm-*.whl >/dev/null 2>&1 &&
        step "install mamba_ssm from $dir" 60 "$PY" -m pip install --no-index --no-deps --find-links "$dir" mamba_ssm
done

step "pytest (cuda)" 120 "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_triton_grads.py \
    --junitxml="$OUT/pytest.xml"
step "bench kernels" 130 sh -c "\"$PY\" -m effviz.bench kernels --device cuda --json \"$OUT/kernels.json\" > \"$OUT/kernels.md\""
step "train bench" 90 "$PY" scripts/gpu_train_bench.py --json "$OUT/train_bench.json"
step "sweep vim-tiny vs deit-tiny" 130 sh -c "\"$PY\" -m effviz.bench sweep --models vim-tiny,deit-tiny --axis resolution \
    --values 224,448,672,896,1248 --device cuda --budget 1 --timeout 60 --json \"$OUT/sweep.json\" > \"$OUT/sweep.md\""

echo "=== $failed step(s) failed; results in $OUT: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
exit "$failed"
