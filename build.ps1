# The Windows mirror of build.sh: restore, build (CUDA kernels too when nvcc is present), test, run, benchmark, publish.
#   ./build.ps1 run [kernels args] | test | build | kernels | bench [args] | publish | publish-device | pack | sample [model]
param([Parameter(Position = 0)][string]$Command = "build", [Parameter(ValueFromRemainingArguments = $true)][string[]]$Rest)
$ErrorActionPreference = "Stop"
Set-Location $PSScriptRoot
$Config = if ($env:CONFIG) { $env:CONFIG } else { "Release" }
$env:DOTNET_CLI_TELEMETRY_OPTOUT = "1"; $env:DOTNET_NOLOGO = "1"

function Invoke-Checked([string]$exe, [string[]]$arguments) {
    & $exe @arguments
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
}

function Build-Kernels {
    if (Get-Command nvcc -ErrorAction SilentlyContinue) {
        Write-Host "==> CUDA kernels"
        Invoke-Checked cmake @("-S", ".", "-B", "build/kernels", "-DCMAKE_BUILD_TYPE=Release")
        Invoke-Checked cmake @("--build", "build/kernels")
    } else {
        Write-Host "==> nvcc not found: GPU kernels were not built (the CPU backend is complete without them)"
    }
}

function Build-All {
    Build-Kernels
    Write-Host "==> dotnet build ($Config)"
    Invoke-Checked dotnet @("build", "Kernels.sln", "-c", $Config, "-v", "quiet", "-nologo", "-clp:NoSummary")
}

# NuGet packages Kernels.Runtime + Kernels.Interop in artifacts/packages (old ones removed first).
function Pack-Runtime {
    Build-Kernels
    Write-Host "==> dotnet pack -> artifacts/packages"
    Remove-Item -Force -ErrorAction SilentlyContinue artifacts/packages/Kernels.*.nupkg
    Invoke-Checked dotnet @("pack", "src/Kernels.Runtime", "-c", "Release", "-o", "artifacts/packages", "-v", "quiet", "-nologo")
}

switch ($Command) {
    "build" { Build-All }
    "kernels" { Build-Kernels }
    "test" {
        Build-All
        $summary = "tests/Kernels.Tests/bin/$Config/net10.0/fuzz-summary.txt" # the model-file fuzz suite's case counts
        Remove-Item -Force -ErrorAction SilentlyContinue $summary
        try { Invoke-Checked dotnet (@("test", "tests/Kernels.Tests", "-c", $Config, "--no-build") + $Rest) }
        finally { if (Test-Path $summary) { Get-Content $summary } }
    }
    "run" {
        Build-All
        if (-not $Rest) { $Rest = @("generate", "--model", "synthetic:small", "--n", "2", "--max-tokens", "32", "--temperature", "0.8", "--top-p", "0.95", "--seed", "7") }
        Invoke-Checked dotnet (@("tools/Kernels.Cli/bin/$Config/net10.0/kernels.dll") + $Rest)
    }
    "bench" {
        Build-All
        if (-not $Rest) { $Rest = @("decode") }
        Invoke-Checked dotnet (@("tools/Kernels.Bench/bin/$Config/net10.0/kernels-bench.dll") + $Rest)
    }
    "publish" {
        Build-Kernels
        Invoke-Checked dotnet @("publish", "tools/Kernels.Cli", "-c", "Release", "--self-contained", "-p:PublishSingleFile=true", "-o", "artifacts/kernels")
    }
    "publish-device" {
        Build-Kernels
        Invoke-Checked dotnet @("publish", "tools/Kernels.Bench", "-c", "Release", "-r", "linux-x64", "--self-contained", "-p:PublishSingleFile=true",
            "-p:DeviceBundle=true", "-p:EnableCompressionInSingleFile=true", "-p:IncludeNativeLibrariesForSelfExtract=true", "-o", ".device/bench")
    }
    "pack" { Pack-Runtime }
    "sample" {
        Pack-Runtime
        # A repacked 0.1.0 has the same version as the copy restored last time: drop that copy (see build.sh).
        Remove-Item -Recurse -Force -ErrorAction SilentlyContinue artifacts/sample-packages/kernels.runtime, artifacts/sample-packages/kernels.interop
        Write-Host "==> tools/Kernels.Sample (Kernels.Runtime 0.1.0 from artifacts/packages)"
        Invoke-Checked dotnet @("restore", "tools/Kernels.Sample", "--force", "-v", "quiet")
        Invoke-Checked dotnet (@("run", "--project", "tools/Kernels.Sample", "-c", "Release", "--no-restore", "--") + $Rest)
    }
    default { Write-Error "unknown command '$Command'; use: run, test, build, kernels, bench, publish, publish-device, pack, sample"; exit 2 }
}
