// The CPU forward pass's one calibration hook: sees the input rows of every transformer linear layer before it runs.
using Kernels.Runtime.Models;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>
/// Set as <see cref="CpuBackendOptions.LinearInputs"/> to watch x[rows, InFeatures] of each q/k/v/o/gate/up/down
/// multiply (not the LM head). Quantizers collect activation statistics through it (SqueezeLLM's input second
/// moments); it must not keep the span, which the backend reuses.
/// </summary>
public interface ILinearInputObserver
{
    void Observe(LinearWeight weight, ReadOnlySpan<float> input, int rows);
}
