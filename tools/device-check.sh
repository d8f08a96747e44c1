#!/usr/bin/env bash
# One command on the GPU machine (see ../shared/GPU.md): build the kernels with the local nvcc, then verify every GPU
# kernel against the CPU reference, twice: the fatbin embedded in the published bench (built where it was published,
# nvcc 11.8 here) and the fatbin this machine's nvcc just built (--fatbin). Results go to $OUT (default
# ./device-check-out): verify*.json, e2e.json (CUDA backend parity, leak check, llama3-8b decode), shared-gpu.json
# (shared-prompt decode with and without Hydragen levels, prefill), torch_decode.json
# (the PyTorch decode baseline of the same shapes), kernels.json (timings + PyTorch baselines from tools/kernel_baselines.py), logs,
# the kernels manifest, nvidia-smi, and device-check.tar.gz with all of them.
#
#   prepare (on the dev machine):  ./build.sh publish-device        -> .device/bench/kernels-bench
#   run (on the GPU machine):      tools/device-check.sh            (from the repository root; needs .device/bench)
#
# Exit status: 0 when both verifications pass; otherwise the first failing step's status (verify: 1 = a kernel
# FAILed, 2 = CUDA or the kernels unavailable).
# QUICK=1 (a first look on a tight device budget): e2e and the timings on their --quick shapes, e2e capped at 240 s
# (e2e writes its JSON after parity and after each throughput table, so a cut-off run keeps what it measured).
# E2E_QUICK=0 with QUICK=1: the timings stay quick but e2e runs in full (the decode table for batch 1..256).
# LOCAL_NVCC=0: skip the build with this machine's nvcc (only the bench's embedded fatbin is verified and timed).
# SHARED=0: skip the shared-prompt stage (SHARED_TIMEOUT: its limit, 150 s with QUICK=1, else 240 s).
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=${QUICK:-0}
QUICK_ARG=""; E2E_TIMEOUT=420
if [ "$QUICK" = 1 ]; then QUICK_ARG="--quick"; E2E_TIMEOUT=240; fi
E2E_ARG=$QUICK_ARG
if [ "${E2E_QUICK:-$QUICK}" = 0 ]; then E2E_ARG=""; E2E_TIMEOUT=${E2E_TIMEOUT_FULL:-300}; fi
OUT=${OUT:-$PWD/device-check-out}
mkdir -p "$OUT"
rm -f "$OUT/summary.txt" "$OUT/device-check.tar.gz"
BENCH=.device/bench/kernels-bench
status=0
note() { echo "==> $*" | tee -a "$OUT/summary.txt"; }

note "device-check $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)') on $(hostname) at $(date -u +%FT%TZ)"
(nvidia-smi || echo "nvidia-smi failed") > "$OUT/nvidia-smi.txt" 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee -a "$OUT/summary.txt"

# ---- kernels with the local nvcc ----------------------------------------------------------------------------------
FATBIN=""
if [ "${LOCAL_NVCC:-1}" = 0 ]; then
  note "LOCAL_NVCC=0: the embedded fatbin only"
elif command -v nvcc >/dev/null 2>&1; then
  note "nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'): kernels for sm_90a"
  if { cmake -S . -B /tmp/kb -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a && cmake --build /tmp/kb -j16; } \
       > "$OUT/kernels-build.log" 2>&1; then
    FATBIN=/tmp/kb/kernels.fatbin
  else
    note "the sm_90a build failed (see kernels-build.log); trying the default architectures"
    if { cmake -S . -B /tmp/kb-default -DCMAKE_BUILD_TYPE=Release && cmake --build /tmp/kb-default -j16; } \
         >> "$OUT/kernels-build.log" 2>&1; then
      FATBIN=/tmp/kb-default/kernels.fatbin
    else
      note "FAIL: the kernels did not build with the local nvcc (see kernels-build.log)"
      status=1
    fi
  fi
  if [ -n "$FATBIN" ]; then
    cp "$(dirname "$FATBIN")/kernels.manifest.json" "$OUT/kernels.manifest.json" 2>/dev/null
    note "built $FATBIN ($(stat -c %s "$FATBIN") bytes)"
  fi
else
  note "nvcc not on PATH: only the embedded fatbin is verified"
fi

# ---- verify -------------------------------------------------------------------------------------------------------
if [ ! -x "$BENCH" ]; then
  note "FAIL: $BENCH is missing: run ./build.sh publish-device first and carry .device/bench"
  [ "$status" -eq 0 ] && status=2
else
  note "verify: the bench's embedded fatbin"
  timeout 240 "$BENCH" verify --json "$OUT/verify.json" 2>&1 | tee "$OUT/verify.log"
  rc=${PIPESTATUS[0]}
  note "verify (embedded) exit $rc"
  [ "$status" -eq 0 ] && status=$rc
  if [ -n "$FATBIN" ]; then
    note "verify: $FATBIN (this machine's nvcc)"
    "$BENCH" verify --fatbin "$FATBIN" --json "$OUT/verify-local-nvcc.json" 2>&1 | tee "$OUT/verify-local-nvcc.log"
    rc=${PIPESTATUS[0]}
    note "verify (local nvcc) exit $rc"
    [ "$status" -eq 0 ] && status=$rc
  fi
fi

# ---- the CUDA backend end to end: parity with the CPU backend, leak check, llama3-8b decode throughput ------------
# Its failures count in the exit status (after verify's).
if [ -x "$BENCH" ]; then
  note "e2e: CUDA backend vs CPU, leak check, synthetic:llama3-8b decode -> e2e.json"
  timeout "$E2E_TIMEOUT" "$BENCH" e2e $E2E_ARG ${FATBIN:+--fatbin "$FATBIN"} --json "$OUT/e2e.json" 2>&1 | tee "$OUT/e2e.log"
  rc=${PIPESTATUS[0]}
  note "e2e exit $rc"
  [ "$status" -eq 0 ] && status=$rc
fi

# ---- shared prefixes, 8B (kernels-bench shared-gpu, issue 17): 64 sequences (16 with QUICK=1) sharing a 4096-token
# prompt, decode steps with Hydragen levels vs private copies, against (weights + KV read) / bandwidth; then a
# 2048-token prefill with the tensor-core and the CUDA-core attention. Reported; the exit status is unchanged.
if [ -x "$BENCH" ] && [ "${SHARED:-1}" = 1 ]; then
  note "shared-gpu: shared-prompt decode and prefill -> shared-gpu.json"
  timeout "${SHARED_TIMEOUT:-$([ "$QUICK" = 1 ] && echo 150 || echo 240)}" "$BENCH" shared-gpu $QUICK_ARG ${FATBIN:+--fatbin "$FATBIN"} \
    --json "$OUT/shared-gpu.json" 2>&1 | tee "$OUT/shared-gpu.log"
  note "shared-gpu exit ${PIPESTATUS[0]}"
  grep -E "^(shared|private|prefill|FAIL)" "$OUT/shared-gpu.log" | tee -a "$OUT/summary.txt"
fi

# ---- the PyTorch decode baseline (tools/torch_decode_baseline.py): the same 8B shapes as e2e's decode table, random
# fp16 weights, static KV cache, SDPA + cuBLAS, the step as a CUDA graph; batch 1/16/64/256 at context 1024 and the
# prefill of one 2048-token prompt. Reported; the exit status is unchanged.
if command -v python3 >/dev/null 2>&1; then
  TORCH_ARGS=""; [ "$QUICK" = 1 ] && TORCH_ARGS="--batches 1,16 --iterations 10"
  note "PyTorch decode baseline -> torch_decode.json"
  timeout 150 python3 tools/torch_decode_baseline.py $TORCH_ARGS --json "$OUT/torch_decode.json" 2>&1 | tee "$OUT/torch_decode.log"
  note "torch decode baseline exit ${PIPESTATUS[0]}"
  grep -E "^(decode|prefill)" "$OUT/torch_decode.log" | tee -a "$OUT/summary.txt"
fi

# ---- timings: our kernels, then PyTorch baselines on the same shapes -------------------------------------------
# Timed with the local nvcc's fatbin when there is one (what a GPU deployment would build), else the embedded one.
# Failures here are reported but do not change the exit status, which belongs to verify.
if [ -x "$BENCH" ]; then
  note "kernels: timings -> kernels.json"
  timeout 180 "$BENCH" kernels $QUICK_ARG ${FATBIN:+--fatbin "$FATBIN"} --json "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.log"
  note "kernels exit ${PIPESTATUS[0]}"
  if [ -f "$OUT/kernels.json" ] && command -v python3 >/dev/null 2>&1; then
    note "PyTorch baselines -> kernels.json"
    timeout 150 python3 tools/kernel_baselines.py "$OUT/kernels.json" 2>&1 | tee "$OUT/baselines.log"
    note "baselines exit ${PIPESTATUS[0]}"
  fi
fi

# ---- the GPU's kernel choices (kernels-bench tune): a variant is taken where every verify case of it passed and its
# timings beat the default's; tuning/<gpu>.json comes back, to commit under kernels/tuning/ (the runtime embeds it).
if [ -x "$BENCH" ] && [ -f "$OUT/kernels.json" ]; then
  note "tune: kernel choices for this GPU -> tuning/"
  "$BENCH" tune --results "$OUT" --out "$OUT/tuning" 2>&1 | tee "$OUT/tune.log" | tee -a "$OUT/summary.txt"
fi

# ---- SqueezeLLM LUT GEMV (ILGPU's CUDA accelerator): verify vs the CPU + timings, then fp16 cuBLAS on the same shapes
# (kernels-bench squeeze-gpu, SqueezeGpu.cs). Reported (squeeze-gpu exit 1 = a check FAILed), exit status unchanged.
if [ -x "$BENCH" ]; then
  note "squeeze-gpu: verify + timings -> squeeze.json"
  timeout 150 "$BENCH" squeeze-gpu $QUICK_ARG --json "$OUT/squeeze.json" 2>&1 | tee "$OUT/squeeze.log"
  note "squeeze-gpu exit ${PIPESTATUS[0]}"
  grep -E "^(FAIL|# verify: [0-9])" "$OUT/squeeze.log" | tee -a "$OUT/summary.txt"
  if [ -f "$OUT/squeeze.json" ] && command -v python3 >/dev/null 2>&1; then
    timeout 90 python3 tools/kernel_baselines.py "$OUT/squeeze.json" 2>&1 | tee "$OUT/squeeze-baselines.log"
    note "squeeze baselines exit ${PIPESTATUS[0]}"
  fi
fi

# ---- profile: Nsight Compute on one decode step (kernels-bench gpu-step: no graphs, inside cuProfilerStart/Stop) at
# batch 1 and 64, context 1024: per kernel DRAM throughput (SpeedOfLight, MemoryWorkloadAnalysis), achieved occupancy
# and warp stall reasons, summarised per kernel name. The first PROFILE_LAUNCHES launches of the step (embedding and
# the first layers, which repeat) bound the replay time. Text to commit under docs/profiles/. PROFILE=0 skips it
# (the default with QUICK=1).
PROFILE=${PROFILE:-$([ "$QUICK" = 1 ] && echo 0 || echo 1)} # QUICK=1 leaves the profile out unless PROFILE=1 asks for it
if [ "$PROFILE" = 1 ] && [ -x "$BENCH" ] && command -v ncu >/dev/null 2>&1; then
  for B in ${PROFILE_BATCHES:-1 64}; do
    note "ncu: decode step, batch $B, context 1024 -> profile-decode-b$B.txt"
    timeout "${PROFILE_TIMEOUT:-150}" ncu --profile-from-start off -c "${PROFILE_LAUNCHES:-60}" --section SpeedOfLight --section MemoryWorkloadAnalysis \
      --section Occupancy --section WarpStateStats --print-summary per-kernel \
      "$BENCH" gpu-step --batch "$B" --context 1024 ${FATBIN:+--fatbin "$FATBIN"} > "$OUT/profile-decode-b$B.txt" 2>&1
    note "ncu batch $B exit $?"
  done
  # The tensor-core attention's kernels (prefill and Hydragen prefix shapes of `kernels --quick`): compute and memory
  # throughput, tensor pipe utilisation, occupancy, stalls.
  note "ncu: paged_attention_mma (kernels --quick shapes) -> profile-attention-mma.txt"
  timeout "${PROFILE_TIMEOUT:-150}" ncu -k regex:paged_attention_mma -c "${PROFILE_MMA_LAUNCHES:-8}" --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats --print-summary per-kernel \
    "$BENCH" kernels --quick --iterations 1 ${FATBIN:+--fatbin "$FATBIN"} --json /tmp/kernels-ncu.json > "$OUT/profile-attention-mma.txt" 2>&1
  note "ncu attention exit $?"
fi

note "exit $status"
tar czf /tmp/device-check.tar.gz -C "$OUT" . && mv /tmp/device-check.tar.gz "$OUT/device-check.tar.gz"
exit "$status"
