#!/usr/bin/env bash
# Issue 17's GPU measurements in one short run (prepared on CPU, NOT yet run). Every block writes JSON under
# $OUT (default bench/gpu) and has its own timeout, so one slow block cannot take the others' time.
# The reference code must be in bench/reference (ignored; fetch github assafshocher/Linearizer there) and,
# with the device tool, travel with `carry: ["bench/reference"]`. Budget: ~11 min of a 15 min lease.
#   bash scripts/gpu/bench_h200.sh
set -u
OUT=${OUT:-bench/gpu}
PY=${PY:-python}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
run() {  # run <seconds> <name> <command...>: the command's output to $OUT/<name>.log, its rc to the summary
  local limit=$1 name=$2; shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $((SECONDS - started))s" | tee -a "$OUT/summary.txt"
}
# 1. Counts and levers at the paper's size and the reference's size: FLOPs/step, fraction of peak (H200
#    data sheet: 67 fp32 / 989 bf16 dense TFLOP/s), CUDA kernels per step, and each lever against eager in
#    one round-robin (compiled fullgraph, foreach/fused AdamW, channels-last), fp32 and bf16.
run 240 levers $PY scripts/bench.py --device cuda --presets mnist_one_step_refsize mnist_one_step_paper \
  --precisions 32-true bf16-mixed --no-sampling --warmup 3 --repeats 10 --out "$OUT/levers"
# 2. CUDA graphs: the compiled step under mode="reduce-overhead" against eager, bf16.
run 120 cudagraphs $PY scripts/bench.py --device cuda --presets mnist_one_step_refsize --precisions bf16-mixed \
  --no-sampling --levers eager compiled compiled_fused_adamw --compile-mode reduce-overhead --warmup 3 \
  --repeats 10 --out "$OUT/cudagraphs"
# 3. Batch scaling (why 1024 never finished before: each size has its own timeout and log).
for b in 512 1024; do
  run 60 "batch$b" $PY scripts/bench.py --device cuda --presets mnist_one_step_refsize --precisions bf16-mixed \
    --no-sampling --no-levers --batch-size "$b" --warmup 2 --repeats 5 --out "$OUT/batch$b"
done
# 4. Side by side with the reference, same process and card, batch 256 (the reference's), equal size.
run 180 reference $PY scripts/bench_reference.py --device cuda --batch-size 256 --compile \
  --precisions 32-true bf16-mixed --warmup 3 --repeats 10 --out "$OUT/reference"
# 5. Sampling: one step through B against T-step samplers, end to end.
run 60 sampling $PY scripts/bench.py --device cuda --presets mnist_one_step_refsize --no-training \
  --samples 256 --out "$OUT/sampling"
cat "$OUT/summary.txt"
