#!/usr/bin/env bash
# Installs nvcc 11.8 from Debian's non-free component (idempotent). Needs root.
# nvcc 11.8 rejects gcc 12, so the kernel build uses clang-14 as host compiler (CMakeLists.txt sets it).
set -euo pipefail
if command -v nvcc >/dev/null 2>&1; then exit 0; fi
src=/etc/apt/sources.list.d/debian.sources
if [ -f "$src" ] && ! grep -q 'non-free' "$src"; then
  sed -i 's/^Components: main$/Components: main contrib non-free non-free-firmware/' "$src"
elif [ -f /etc/apt/sources.list ] && ! grep -q 'non-free' /etc/apt/sources.list; then
  sed -i -E 's/^(deb .* main)$/\1 contrib non-free/' /etc/apt/sources.list
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends nvidia-cuda-toolkit clang-14 >/dev/null
nvcc --version | tail -n 2
