#!/usr/bin/env bash
# Builds and runs the host-emulation kernel tests (tests/kernels-emu/*_test.cpp) with g++ or clang++ (C++20, F16C for
# the fp16 conversions). Usage: tests/kernels-emu/run.sh [--quick] [out-dir]. Exit status: the tests'.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
quick=""
if [ "${1:-}" = "--quick" ]; then quick="--quick"; shift; fi
out="${1:-$root/build/kernels-emu}"
mkdir -p "$out"
cxx="${CXX:-$(command -v g++ || command -v clang++ || command -v clang++-14 || true)}"
[ -n "$cxx" ] || { echo "kernels-emu: no C++ compiler (g++ or clang++) found"; exit 2; }
status=0
for src in "$here"/*_test.cpp; do
  name="$(basename "$src" .cpp)"
  # -fno-strict-aliasing: CUDA code reads vectors through other pointer types (a uint4 as eight halves), which nvcc
  # allows and C++'s aliasing rules do not: without it g++ -O2 miscompiles those loads.
  "$cxx" -std=c++20 -O2 -fno-strict-aliasing -mf16c -w -include "$here/include/cuda_emu.h" -I "$here/include" -I "$root/kernels/include" -I "$root/kernels" \
    "$src" -o "$out/$name"
  echo "==> $name"
  "$out/$name" $quick || status=1
done
exit "$status"
