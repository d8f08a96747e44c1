// Chooses the compute backend for a model and says why the others are not in use.
using Kernels.Interop;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Models;

namespace Kernels.Runtime.Backends;

public enum BackendKind
{
    /// <summary>The best backend present.</summary>
    Auto,
    Cpu,
}

public static class BackendSelector
{
    public static (IBackend Backend, string Description) Create(LoadedModel model, CpuBackendOptions? cpu = null, BackendKind kind = BackendKind.Auto)
    {
        string cuda = CudaDriverProbe.WhyUnavailable(out int devices, out _) is { } why
            ? $"CUDA unavailable: {why}"
            : $"CUDA: {devices} device(s) found, but the CUDA backend is not part of this build yet";
        var backend = new CpuBackend(model, cpu);
        string simd = System.Runtime.Intrinsics.X86.Avx2.IsSupported ? "AVX2" : System.Numerics.Vector.IsHardwareAccelerated ? "SIMD" : "scalar";
        return (backend, $"cpu ({Environment.ProcessorCount} cores, {simd}); {cuda}; GPU kernels {KernelImage.Describe()}");
    }
}
