#!/usr/bin/env bash
# Issue 17's GPU measurements in one short run (prepared on CPU, NOT yet run on a GPU). Each block writes
# JSON under $OUT (default bench/gpu) and has its own timeout, so one slow block cannot take the others'
# time; the limits add up to 590 s (the device tool's limit per command is 600 s). Name blocks to run only
# those: `bash scripts/gpu/bench_h200.sh levers reference`. The reference code must be in bench/reference
# (ignored; fetch github assafshocher/Linearizer there) and, with the device tool, travel with
# `carry: ["bench/reference"]`.
set -u
OUT=${OUT:-bench/gpu}
PY=${PY:-python}
BLOCKS=${*:-levers cudagraphs batch reference sampling}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
run() {  # run <seconds> <name> <command...>: output to $OUT/<name>.log, rc and seconds to summary.txt
  local limit=$1 name=$2; shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $((SECONDS - started))s" | tee -a "$OUT/summary.txt"
}
for block in $BLOCKS; do
  case $block in
    levers)  # FLOPs/step, fraction of peak (67 fp32 / 989 bf16 dense TFLOP/s), CUDA kernels per step; fp32 and
             # bf16 rows; every lever against eager in one round-robin (bf16): one-graph compile, foreach and
             # fused AdamW, channels-last
      run 200 levers $PY scripts/bench.py --device cuda --presets mnist_one_step_refsize \
        --precisions 32-true bf16-mixed --no-sampling --warmup 3 --repeats 10 --out "$OUT/levers" ;;
    cudagraphs)  # the one-graph step under mode="reduce-overhead" (CUDA graphs) against eager, bf16
      run 120 cudagraphs $PY scripts/bench.py --device cuda --presets mnist_one_step_refsize \
        --precisions bf16-mixed --no-sampling --levers eager compiled compiled_fused_adamw \
        --compile-mode reduce-overhead --warmup 3 --repeats 10 --out "$OUT/cudagraphs" ;;
    batch)  # batch scaling; 1024 never finished before: each size has its own timeout and log
      for b in 512 1024; do
        run 40 "batch$b" $PY scripts/bench.py --device cuda --presets mnist_one_step_refsize \
          --precisions bf16-mixed --no-sampling --no-levers --batch-size "$b" --warmup 2 --repeats 5 \
          --out "$OUT/batch$b"
      done ;;
    reference)  # beside the reference on the same card, batch 256 (its own), equal size, ours eager/compiled
      run 150 reference $PY scripts/bench_reference.py --device cuda --batch-size 256 --compile \
        --precisions 32-true bf16-mixed --warmup 3 --repeats 10 --out "$OUT/reference" ;;
    sampling)  # one step through B against T-step Euler/RK4, end to end
      run 40 sampling $PY scripts/bench.py --device cuda --presets mnist_one_step_refsize --no-training \
        --samples 256 --out "$OUT/sampling" ;;
    *) echo "unknown block $block" ;;
  esac
done
cat "$OUT/summary.txt"
