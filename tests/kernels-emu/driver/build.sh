#!/usr/bin/env bash
# Builds libcuda.so.1, the CPU emulation of the CUDA driver (cuda_driver_emu.cpp + kernels/kernels.cu on the host
# emulation), into OUT (default build/kernels-emu/driver). Run a process with LD_LIBRARY_PATH=OUT and its CUDA backend
# runs on the CPU. Exit 2 without a C++ compiler.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-$root/build/kernels-emu/driver}"
mkdir -p "$out"
cxx="${CXX:-$(command -v g++ || command -v clang++ || command -v clang++-14 || true)}"
[ -n "$cxx" ] || { echo "kernels-emu driver: no C++ compiler (g++ or clang++) found"; exit 2; }
# The kernel table: one KERNEL(name) per export.
grep -v '^\s*#' "$root/kernels/exports.txt" | sed -e 's/\s*$//' -e '/^$/d' -e 's/.*/KERNEL(&)/' > "$out/kernel_list.inc"
"$cxx" -std=c++20 -O2 -fno-strict-aliasing -mf16c -w -fPIC -shared -include "$here/../include/cuda_emu.h" -I "$out" -I "$here/../include" \
  -I "$root/kernels/include" -I "$root/kernels" -x c++ "$here/cuda_driver_emu.cpp" -o "$out/libcuda.so.1.tmp"
mv "$out/libcuda.so.1.tmp" "$out/libcuda.so.1"
echo "$out/libcuda.so.1"
