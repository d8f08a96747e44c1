// The CUDA backend end to end without a GPU: `kernels-bench e2e-emulated` in a child process whose libcuda.so.1 is the
// CPU emulation of the driver (tests/kernels-emu/driver). It compares the CUDA backend with the CPU backend on small
// synthetic models through the real launch plans, argument lists, scratch layouts, graphs and kernel sources, for the
// kernel paths that have not yet run on a GPU (tensor-core attention with Hydragen levels, tiled decode, radix
// sampling, the split-K W4A8 GEMM, the SqueezeLLM GEMV, the KIVI cache). Slow (minutes), so it runs in the default CI leg only.
using System.Diagnostics;

namespace Kernels.Tests.Backends.Cuda;

public class EmulatedCudaBackendTests
{
    private static readonly string DriverDirectory = Path.Combine(Path.GetTempPath(), $"kernels-emu-driver-{Environment.ProcessId}");

    /// <summary>The emulated driver, built once per test run.</summary>
    private static readonly Lazy<(int Code, string Output)> Driver = new(() =>
        Run("bash", [Path.Combine(TestPaths.RepoRoot(), "tests", "kernels-emu", "driver", "build.sh"), DriverDirectory], TestPaths.RepoRoot(), null, 300));

    [TestCase("synthetic:mini, new kernels, no graphs")]      // tensor-core prefill attention, tiled decode, radix sampling
    [TestCase("synthetic:mini w4a8, new kernels, no graphs")] // the split-K W4A8 GEMM
    [TestCase("synthetic:mini hydragen")]                     // shared-prefix levels through paged_attention_mma
    [TestCase("synthetic:tiny, default kernels")]             // decode steps as CUDA graphs (captured and replayed)
    [TestCase("synthetic:mini squeezellm, default kernels")]  // SqueezeLLM: squeezellm_gemv (LUT codes + CSR outliers) in prefill, decode and graphs
    [TestCase("synthetic:mini kivi2 (G=32, R=16) forks")]     // KIVI: forks of a quantized prompt; blocks quantized inside a prefill and before steps and graphs
    public void TheCudaBackendMatchesTheCpuBackendOnTheEmulatedDriver(string check)
    {
        foreach (string leg in new[] { "DOTNET_EnableAVX2", "DOTNET_EnableHWIntrinsic" })
            if (Environment.GetEnvironmentVariable(leg) == "0")
                Assert.Ignore($"{leg}=0: the emulated CUDA backend runs in the default leg only (minutes per check; the CPU paths it compares with are the default leg's)");
        string root = TestPaths.RepoRoot();
        var build = Driver.Value;
        if (build.Code == 2) Assert.Ignore("no C++ compiler (g++ or clang++): " + build.Output.Trim());
        Assert.That(build.Code, Is.EqualTo(0), "building the emulated driver failed:\n" + build.Output);
        string bench = Path.Combine(TestContext.CurrentContext.TestDirectory, "kernels-bench.dll");
        Assert.That(File.Exists(bench), Is.True, $"{bench} is not beside the tests");
        var run = Run("dotnet", [bench, "e2e-emulated", "--only", check], root, DriverDirectory, 1200);
        TestContext.Out.WriteLine(run.Output);
        Assert.That(run.Code, Is.EqualTo(0), $"e2e-emulated --only \"{check}\" failed:\n{run.Output}");
        Assert.That(run.Output, Does.Contain("PASS  " + check), "the check did not run");
    }

    private static (int Code, string Output) Run(string file, string[] args, string directory, string? libraryPath, int seconds)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = directory };
        foreach (string a in args) start.ArgumentList.Add(a);
        if (libraryPath != null) start.Environment["LD_LIBRARY_PATH"] = libraryPath;
        using var p = Process.Start(start)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(seconds * 1000))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{file} {string.Join(' ', args)} ran past {seconds} s");
        }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }
}
