// The attention kernels run on the host emulation of tests/kernels-emu (fibers for threads, the PTX ISA's fragment
// layouts for ldmatrix and mma.sync) against references written from their headers: paged_attention_mma, the tiled
// decode kernel, squeezellm_gemv_b{3,4}, both samplers, the split-K W4A8 GEMM, the split KIVI decode attention, and
// (as checks of the emulation itself) the CUDA-core decode kernel, the two-stage W4A8 GEMM and the per-block KIVI
// attention verified on an H200. A kernel that misplaces a
// fragment, a key or a mask fails here on a machine without a GPU, before a device run (the device's verify is the
// final word).
using System.Diagnostics;

namespace Kernels.Tests.Backends;

public class KernelEmulationTests
{
    [Test]
    public void KernelsMatchTheirReferencesOnTheHostEmulation()
    {
        string root = TestPaths.RepoRoot();
        string script = Path.Combine(root, "tests", "kernels-emu", "run.sh");
        string output = Path.Combine(Path.GetTempPath(), $"kernels-emu-{Environment.ProcessId}");
        var start = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = root };
        foreach (string a in new[] { script, output }) start.ArgumentList.Add(a);
        using var p = Process.Start(start)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(600_000))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail("tests/kernels-emu/run.sh ran past 10 minutes");
        }
        try { Directory.Delete(output, recursive: true); } catch (IOException) { }
        if (p.ExitCode == 2) Assert.Ignore("no C++ compiler (g++ or clang++) on this machine: " + stdout.Trim());
        TestContext.Out.WriteLine(stdout);
        Assert.That(p.ExitCode, Is.EqualTo(0), $"kernels-emu failed:\n{stdout}\n{stderr.Result}");
        foreach (string line in new[] { "ok   bf16  hd128 k64", "ok   tiled     bf16  hd128", "ok   squeezellm_gemv_b3 M 8", "ok   sample_tokens V 1500",
                     "ok   w4a8_gemm_group_splitk M 16", "ok   w4a8_gemm_channel_m16",
                     "ok   split     kivi4 hd128", "ok   per-block kivi2 hd128" })
            Assert.That(stdout, Does.Contain(line), $"the emulation did not pass the case starting \"{line}\"");
    }

}
