// How a quantization method gets a model run for calibration without depending on a backend: it asks a runner, which
// the caller passes in (Calibration/CpuCalibrationRunner runs the CPU backend and the sampler).
using Kernels.Runtime.Models;

namespace Kernels.Runtime.Quantization;

/// <summary>
/// Runs calibration tokens through a model with every linear layer's inputs handed to an observer. Formats and
/// quantizers sit below the backends and the engine (README.md, Layout), so the step that executes the model lives
/// above them and comes in through this interface.
/// </summary>
internal interface ICalibrationRunner
{
    /// <summary>
    /// Runs <paramref name="calibrationFile"/>'s text through <paramref name="model"/>, or without one, text the
    /// model samples itself (<paramref name="seed"/>), calling <paramref name="observer"/> for every linear layer's
    /// input rows. A file without tokens is an ArgumentException naming it.
    /// </summary>
    CalibrationRun Run(LoadedModel model, string? calibrationFile, int seed, ILinearInputObserver observer, Action<string>? progress = null);
}

/// <summary>What a calibration ran: <paramref name="Tokens"/> tokens observed, from <paramref name="Source"/> (for quantization_config).</summary>
internal sealed record CalibrationRun(long Tokens, string Source);
