#!/usr/bin/env bash
# The one entry point: restore, build (CUDA kernels too when nvcc is present), test, run, benchmark, publish.
#
#   ./build.sh run [kernels args]   build, then run the CLI (no args: batched generation demo on synthetic:small)
#   ./build.sh test                 build, then run every test (tests needing ../shared skip when it is absent)
#   ./build.sh build                restore + kernels (if nvcc) + managed build
#   ./build.sh kernels              only the fatbin: build/kernels/kernels.fatbin
#   ./build.sh bench [args]         CPU decode benchmark (tokens/s for batch 1 and 16 on synthetic:small)
#   ./build.sh publish              self-contained `kernels` CLI in artifacts/kernels-linux-x64/
#   ./build.sh publish-device       self-contained benchmark runner for the GPU machine in .device/bench (see shared/GPU.md)
#   ./build.sh pack                 NuGet packages Kernels.Runtime + Kernels.Interop in artifacts/packages
#   ./build.sh sample [model]       pack, then build and run tools/Kernels.Sample against the package (not the project)
set -euo pipefail
cd "$(dirname "$0")"
CONFIG=${CONFIG:-Release}
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

kernels() {
  if command -v nvcc >/dev/null 2>&1; then
    echo "==> CUDA kernels (nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'))"
    cmake -S . -B build/kernels -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build build/kernels
  else
    echo "==> nvcc not found: GPU kernels were not built (the CPU backend is complete without them;"
    echo "    .ci/install-cuda.sh installs nvcc 11.8 from Debian non-free)"
  fi
}

build() {
  kernels
  echo "==> dotnet build ($CONFIG)"
  dotnet build Kernels.sln -c "$CONFIG" -v quiet -nologo -clp:NoSummary -p:WarningLevel=4
}

# The runtime's package, with the fatbin embedded when nvcc built it. Old packages go first so the folder holds only
# what this build made.
pack() {
  kernels
  echo "==> dotnet pack -> artifacts/packages"
  rm -f artifacts/packages/Kernels.*.nupkg
  dotnet pack src/Kernels.Runtime -c Release -o artifacts/packages -v quiet -nologo
}

cmd=${1:-build}
[ $# -gt 0 ] && shift
case "$cmd" in
  build) build ;;
  kernels) kernels ;;
  test)
    build
    echo "==> dotnet test"
    summary="tests/Kernels.Tests/bin/$CONFIG/net10.0/fuzz-summary.txt" # the model-file fuzz suite's case counts
    rm -f "$summary"
    status=0
    dotnet test tests/Kernels.Tests -c "$CONFIG" --no-build "$@" || status=$?
    if [ -f "$summary" ]; then cat "$summary"; awk -F'[:,]' '{split($2, a, " "); n += a[1]} END {print "fuzz: " n " model-file cases in all"}' "$summary"; fi
    exit $status
    ;;
  run)
    build
    if [ $# -eq 0 ]; then
      set -- generate --model synthetic:small --n 2 --max-tokens 32 --temperature 0.8 --top-p 0.95 --seed 7
    fi
    echo "==> kernels $*"
    dotnet "tools/Kernels.Cli/bin/$CONFIG/net10.0/kernels.dll" "$@"
    ;;
  bench)
    build
    dotnet "tools/Kernels.Bench/bin/$CONFIG/net10.0/kernels-bench.dll" "${@:-decode}"
    ;;
  publish)
    kernels
    dotnet publish tools/Kernels.Cli -c Release -r linux-x64 --self-contained -p:PublishSingleFile=true \
      -o artifacts/kernels-linux-x64
    ;;
  publish-device)
    kernels
    rm -rf .device/bench
    dotnet publish tools/Kernels.Bench -c Release -r linux-x64 --self-contained -p:PublishSingleFile=true -p:DeviceBundle=true \
      -p:EnableCompressionInSingleFile=true -p:IncludeNativeLibrariesForSelfExtract=true -o .device/bench
    ;;
  pack) pack ;;
  sample)
    pack
    # The sample restores into its own folder (RestorePackagesPath); a repacked 0.1.0 has the same version as the one
    # extracted there last time, so drop that copy or NuGet would keep using it.
    rm -rf artifacts/sample-packages/kernels.runtime artifacts/sample-packages/kernels.interop
    echo "==> tools/Kernels.Sample (Kernels.Runtime 0.1.0 from artifacts/packages)"
    dotnet restore tools/Kernels.Sample --force -v quiet
    dotnet run --project tools/Kernels.Sample -c Release --no-restore -- "$@"
    ;;
  *) echo "unknown command '$cmd'; use: run, test, build, kernels, bench, publish, publish-device, pack, sample" >&2; exit 2 ;;
esac
