// Chooses the compute backend for a model and says why the others are not in use.
//
// How "cannot run" is said, everywhere (interop, backends, bench, tests): a pure query named Why... returns null when
// the thing can run and otherwise one sentence in library terms (CudaDriverProbe.WhyUnavailable,
// CudaDevice.WhyUnavailable, CudaBackend.WhyUnsupported). Callers decide on it and show it: fall back to the CPU, skip
// a test or a bench case, exit 2. The acting call (CudaDevice.Open, the CudaBackend constructor, Create below with an
// explicit kind) runs the same checks and throws a documented exception carrying that sentence
// (InvalidOperationException "CUDA unavailable: ...", NotSupportedException, BackendUnavailableException). Chosen
// because every caller wants the reason as data before it acts, and only an explicit request that cannot be honoured
// is exceptional; no Try...(out why) pairs.
using Kernels.Interop;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Models;

namespace Kernels.Runtime.Backends;

public enum BackendKind
{
    /// <summary>
    /// The best backend present: CUDA when <see cref="BackendSelector.AutoPicksCuda"/>, a device opens, the kernels load
    /// and the model is supported, else the CPU.
    /// </summary>
    Auto,
    Cpu,
    /// <summary>CUDA or an exception saying why not.</summary>
    Cuda,
}

/// <summary>An explicitly chosen backend cannot run here; the message says why (no device, no kernels, unsupported model).</summary>
public sealed class BackendUnavailableException(string message, Exception? inner = null) : Exception(message, inner);

internal static class BackendSelector
{
    /// <summary>
    /// Whether Auto may choose the CUDA backend. False until the backend has passed `kernels-bench verify` and `e2e` on
    /// a GPU (issue 3): an unverified backend must not become every user's default; `--backend cuda` opts in.
    /// </summary>
    public const bool AutoPicksCuda = false;

    /// <summary>Parses a backend's name (cpu, cuda, auto), naming the accepted values when it is none of them.</summary>
    public static BackendKind Parse(string value) => value.Trim().ToLowerInvariant() switch
    {
        "auto" => BackendKind.Auto,
        "cpu" => BackendKind.Cpu,
        "cuda" or "gpu" => BackendKind.Cuda,
        _ => throw new ArgumentException($"unknown backend '{value}': expected auto, cpu or cuda", nameof(value)),
    };

    /// <remarks>
    /// A KIVI format in <paramref name="cpu"/>'s KvCache is the CUDA backend's too unless <paramref name="cuda"/> names its
    /// own (the fp32/fp16 formats are the CPU's: the GPU keeps <see cref="CudaBackendOptions.KvDType"/> rows).
    /// </remarks>
    public static (IBackend Backend, string Description) Create(LoadedModel model, CpuBackendOptions? cpu = null, BackendKind kind = BackendKind.Auto,
        CudaBackendOptions? cuda = null)
    {
        if (cpu?.KvCache is { IsKivi: true } kivi && cuda?.Kivi == null) cuda = (cuda ?? new CudaBackendOptions()) with { Kivi = kivi };
        string cudaNote;
        if (kind == BackendKind.Cpu)
        {
            cudaNote = "CUDA not tried (the CPU backend was asked for)";
        }
        else if (kind == BackendKind.Auto && !AutoPicksCuda)
        {
            cudaNote = CudaDriverProbe.WhyUnavailable(out int found, out _) is { } none
                ? $"CUDA unavailable: {none}"
                : $"CUDA: {found} device(s); the CUDA backend is opt-in (BackendKind.Cuda) until it has been verified on a GPU";
        }
        else if (CudaDriverProbe.WhyUnavailable(out int devices, out _) is { } why)
        {
            if (kind == BackendKind.Cuda) throw new BackendUnavailableException($"CUDA unavailable: {why}");
            cudaNote = $"CUDA unavailable: {why}";
        }
        else if (KernelImage.Load() == null && cuda?.KernelImage == null)
        {
            if (kind == BackendKind.Cuda) throw new BackendUnavailableException($"{devices} device(s), but no kernels: {KernelImage.Describe()}");
            cudaNote = $"CUDA: {devices} device(s), but no kernels: {KernelImage.Describe()}";
        }
        else if ((CudaBackend.WhyUnsupported(model) ?? CudaBackend.WhyUnsupported(model.Config, cuda?.Kivi, cuda?.KvDType ?? Numerics.TensorDType.F16)) is { } unsupported)
        {
            if (kind == BackendKind.Cuda) throw new BackendUnavailableException(unsupported);
            cudaNote = $"CUDA not used: {unsupported}";
        }
        else
        {
            try
            {
                var gpu = new CudaBackend(model, cuda);
                return (gpu, gpu.ToString());
            }
            catch (Exception e) when (kind == BackendKind.Auto && e is CudaException or InvalidOperationException or NotSupportedException)
            {
                cudaNote = $"CUDA backend failed to start: {e.Message}";
            }
        }
        var backend = new CpuBackend(model, cpu);
        return (backend, $"cpu ({Environment.ProcessorCount} cores; {CpuBackend.InstructionPaths}); {cudaNote}; GPU kernels {KernelImage.Describe()}");
    }
}
