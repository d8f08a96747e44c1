// The per-kernel GPU-vs-CPU cases of `kernels-bench verify` as NUnit cases, so `./build.sh test` on a GPU machine
// compares every kernel of the shipped fatbin with its CPU reference, not only whole-model logits. Each case skips with
// a message where there is no CUDA device or no fatbin.
using System.Reflection;
using Kernels.Interop;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cuda;

namespace Kernels.Tests.Backends.Cuda;

/// <summary>
/// The harness's own case list (kernels-bench's Verify.Verifier.Cases: kernel, shape, tolerance with its source, guard
/// regions), read by reflection because the harness is internal to the bench tool; KernelAbiTests checks that the list
/// covers every exported kernel. Building the list touches no device; a case runs only when invoked.
/// </summary>
internal static class VerifyHarness
{
    /// <summary>The seed `kernels-bench verify` uses by default; every test case starts a fresh harness from it.</summary>
    public const int Seed = 1234;

    private static Type VerifierType()
    {
        var verifier = typeof(Kernels.Bench.Quick).Assembly.GetType("Kernels.Bench.Verify+Verifier");
        Assert.That(verifier, Is.Not.Null, "kernels-bench's Verify.Verifier moved: point VerifyHarness at the verify harness's case list");
        return verifier!;
    }

    /// <summary>The cases of a harness on <paramref name="device"/> and <paramref name="ops"/> (null to only list them).</summary>
    public static IReadOnlyList<(string Kernel, string Shape, Func<object> Run)> Cases(CudaDevice? device, OpsLauncher? ops)
    {
        var type = VerifierType();
        var harness = Activator.CreateInstance(type, [device, ops, new Random(Seed)])!;
        var cases = (System.Collections.IEnumerable)type.GetMethod("Cases")!.Invoke(harness, null)!;
        var list = new List<(string, string, Func<object>)>();
        foreach (var c in cases)
        {
            var t = c.GetType();
            var run = (Delegate)t.GetProperty("Run")!.GetValue(c)!;
            list.Add(((string)t.GetProperty("Kernel")!.GetValue(c)!, (string)t.GetProperty("Shape")!.GetValue(c)!, () => run.DynamicInvoke()!));
        }
        return list;
    }

    /// <summary>A CaseResult's property by name (Pass, Error, MaxAbsError, Tolerance, ...).</summary>
    public static T Get<T>(object result, string property) => (T)result.GetType().GetProperty(property)!.GetValue(result)!;
}

[NonParallelizable]
public class KernelVerifyTests
{
    private CudaDevice? _device;
    private KernelModule? _module;
    private string? _why;

    public static IEnumerable<TestCaseData> Cases() =>
        VerifyHarness.Cases(null, null).Select((c, i) => new TestCaseData(i, c.Kernel, c.Shape).SetName($"Verify {c.Kernel} {c.Shape} (#{i})"));

    [OneTimeSetUp]
    public void OpenDeviceAndFatbin()
    {
        if (CudaDevice.WhyUnavailable(0) is { } why)
        {
            _why = $"no CUDA device ({why}): the kernels are compared with their CPU references on a GPU machine";
            return;
        }
        _device = CudaDevice.Open(0);
        var image = KernelImage.Load();
        if (image == null)
        {
            _why = $"no fatbin in this build ({KernelImage.Describe()}): build with nvcc present (./build.sh builds it)";
            return;
        }
        _module = KernelModule.Load(_device, image, "embedded");
    }

    [OneTimeTearDown]
    public void Close()
    {
        _module?.Dispose();
        _device?.Dispose();
    }

    [TestCaseSource(nameof(Cases))]
    public void KernelMatchesItsCpuReference(int index, string kernel, string shape)
    {
        if (_module == null) Assert.Ignore(_why ?? throw new InvalidOperationException("no kernel module and no reason recorded"));
        // A fresh harness from the fixed seed for each case: its inputs do not depend on which cases ran before (they
        // differ from a whole `kernels-bench verify` run, which draws every case's inputs from one stream).
        var cases = VerifyHarness.Cases(_device, new OpsLauncher(_module!));
        Assert.That(cases[index].Kernel + " " + cases[index].Shape, Is.EqualTo(kernel + " " + shape), "the case list is deterministic");
        object result;
        try
        {
            result = cases[index].Run();
        }
        catch (TargetInvocationException e) when (e.InnerException != null)
        {
            throw e.InnerException;
        }
        string? error = VerifyHarness.Get<string?>(result, "Error");
        Assert.That(error, Is.Null, $"{kernel} {shape}: the case failed to run");
        Assert.That(VerifyHarness.Get<bool>(result, "GuardIntact"), Is.True, $"{kernel} {shape}: the kernel wrote past an output buffer");
        Assert.That(VerifyHarness.Get<bool>(result, "Pass"), Is.True,
            $"{kernel} {shape}: max abs error {VerifyHarness.Get<double>(result, "MaxAbsError"):G3}, mean relative {VerifyHarness.Get<double>(result, "MeanRelativeError"):G3}, " +
            $"{VerifyHarness.Get<long>(result, "Mismatches")} elements out of tolerance {VerifyHarness.Get<double>(result, "Tolerance"):G2} " +
            $"({VerifyHarness.Get<string>(result, "ToleranceSource")}), {VerifyHarness.Get<long>(result, "NonFiniteMismatches")} NaN/inf mismatches");
    }
}
