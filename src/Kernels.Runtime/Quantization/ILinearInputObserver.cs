// What a quantizer that calibrates sees of a running model: the input rows of every transformer linear layer.
using Kernels.Runtime.Models;

namespace Kernels.Runtime.Quantization;

/// <summary>
/// Handed to an <see cref="ICalibrationRunner"/> (which sets it as the CPU backend's CpuBackendOptions.LinearInputs)
/// to watch x[rows, InFeatures] of each q/k/v/o/gate/up/down multiply (not the LM head). Quantizers collect activation
/// statistics through it (SqueezeLLM's input second moments); it must not keep the span, which the backend reuses.
/// </summary>
internal interface ILinearInputObserver
{
    void Observe(LinearWeight weight, ReadOnlySpan<float> input, int rows);
}
