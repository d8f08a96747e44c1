// The ILGPU SqueezeLLM kernel through ILGPU's own PTX backend and ptxas, without a GPU: the CPU-accelerator test runs the
// kernel's .NET code, so a construct the PTX backend rejects, or a spill, would otherwise first show on a GPU machine.
using System.Diagnostics;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Kernels.Runtime.Backends.Ilgpu;

namespace Kernels.Tests.Quantization;

public class SqueezeLlmPtxTests
{
    [TestCase(80, 70)]
    [TestCase(90, 78)]
    public void TheLutGemvCompilesToPtxAndAssemblesWithoutStackOrSpills(int sm, int isa)
    {
        var architecture = new CudaArchitecture(sm / 10, sm % 10);
        var instructionSet = new CudaInstructionSet(isa / 10, isa % 10);
        using var context = Context.Create(b => b.Optimize(OptimizationLevel.O2));
        var backend = new PTXBackend(context, new CudaCapabilityContext(architecture), architecture, instructionSet, null);
        // Compiled without the launch's SpecializedValue constants (M and the width stay parameters): the general form,
        // whose accumulators must stay registers too.
        var entry = EntryPointDescription.FromExplicitlyGroupedKernel(
            new Action<ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                SqueezeLlmLutGemv.Shape, SpecializedValue<int>, SpecializedValue<int>>(SqueezeLlmLutGemv.Kernel).Method);
        string ptx = ((PTXCompiledKernel)backend.Compile(entry, KernelSpecialization.Empty)).PTXAssembly;
        // ILGPU 1.5.3 writes `.target sm_80` at most (for SM_90 too); ptxas then assembles it for the architecture asked.
        Assert.That(ptx, Does.Match(@"\.target sm_\d+"));
        Assert.That(ptx, Does.Not.Contain(".local"), "a local-memory array in the PTX");

        string? ptxas = new[] { Environment.GetEnvironmentVariable("CUDA_HOME") is { } h ? Path.Combine(h, "bin") : null, "/usr/local/cuda/bin" }
            .Concat((Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator))
            .Where(d => !string.IsNullOrEmpty(d)).Select(d => Path.Combine(d!, "ptxas")).FirstOrDefault(File.Exists);
        if (ptxas == null) Assert.Ignore("ptxas not found (it comes with nvcc): the PTX was generated, not assembled");
        string file = Path.Combine(Path.GetTempPath(), $"squeeze-{sm}-{Environment.ProcessId}.ptx");
        File.WriteAllText(file, ptx);
        try
        {
            var start = new ProcessStartInfo(ptxas, [$"-arch=sm_{sm}", "-v", file, "-o", file + ".cubin"]) { RedirectStandardError = true, RedirectStandardOutput = true };
            using var process = Process.Start(start)!;
            string log = process.StandardError.ReadToEnd() + process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            TestContext.Out.WriteLine(log);
            if (process.ExitCode != 0 && log.Contains("not defined for option 'gpu-name'"))
                Assert.Ignore($"this ptxas does not know sm_{sm}: {log.Trim()}");
            Assert.That(process.ExitCode, Is.EqualTo(0), log);
            Assert.That(log, Does.Contain("0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"), log);
        }
        finally
        {
            File.Delete(file);
            File.Delete(file + ".cubin");
        }
    }
}
