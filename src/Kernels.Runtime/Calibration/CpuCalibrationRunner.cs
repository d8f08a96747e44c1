// Calibration runs a model, so it sits above the backends and the engine: the CPU backend with a linear-input
// observer, fed a calibration text or tokens the model samples itself.
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Models;
using Kernels.Runtime.Quantization;

namespace Kernels.Runtime.Calibration;

/// <summary>
/// The <see cref="ICalibrationRunner"/> the engine ships: the CPU backend (the only one with the
/// <see cref="CpuBackendOptions.LinearInputs"/> hook), one sequence at a time.
/// </summary>
internal sealed class CpuCalibrationRunner : ICalibrationRunner
{
    /// <summary>Default calibration: this many sequences of up to <see cref="SampledTokens"/> tokens sampled from the model.</summary>
    public const int SampledSequences = 4;
    public const int SampledTokens = 128;
    /// <summary>Most tokens of a calibration file that are run (in windows of the model's context).</summary>
    public const int MaxFileTokens = 4096;

    /// <summary>
    /// Runs <paramref name="calibrationFile"/>'s text (up to <see cref="MaxFileTokens"/> tokens) through the model, or
    /// without one, text the model samples itself (temperature 1 from BOS, <paramref name="seed"/>). Why sampled text
    /// by default: it needs no corpus shipped with the engine, suits any model and language (and synthetic models,
    /// whose tokenizer has no natural text), and its activations are the ones the model meets when it generates;
    /// greedy text would repeat one loop, sampling at temperature 1 follows the model's own distribution.
    /// </summary>
    public CalibrationRun Run(LoadedModel model, string? calibrationFile, int seed, ILinearInputObserver observer, Action<string>? progress = null)
    {
        string source = calibrationFile is null
            ? $"model samples: {SampledSequences} x {SampledTokens} tokens, temperature 1, seed {seed}"
            : $"file {Path.GetFileName(calibrationFile)}";
        long tokens = 0;
        using var backend = new CpuBackend(model, new CpuBackendOptions { LinearInputs = observer });
        int context = model.Config.MaxPositions;
        if (calibrationFile is not null)
        {
            var ids = model.Tokenizer.Encode(File.ReadAllText(calibrationFile), addBos: true);
            if (ids.Length > MaxFileTokens) ids = ids[..MaxFileTokens];
            if (ids.Length == 0) throw new ArgumentException($"{calibrationFile} has no tokens", nameof(calibrationFile));
            for (int start = 0; start < ids.Length; start += context)
            {
                using var cache = backend.CreateCache();
                backend.Forward([new SequenceStep(cache, ids.AsMemory(start, Math.Min(context, ids.Length - start)))]);
            }
            tokens = ids.Length;
        }
        else
        {
            int bos = model.Config.BosTokenId ?? 0;
            var eos = model.Config.EosTokenIds.ToHashSet();
            var sampling = new SamplingOptions { Temperature = 1f };
            int length = Math.Min(SampledTokens, context);
            for (int s = 0; s < SampledSequences; s++)
            {
                var rng = new SamplerRng((ulong)seed, (ulong)s);
                using var cache = backend.CreateCache();
                int token = bos;
                for (int t = 0; t < length; t++)
                {
                    var logits = backend.Forward([new SequenceStep(cache, new[] { token })])[0];
                    tokens++;
                    token = Sampler.Sample(logits, sampling.Choice(null, rng.NextDouble()));
                    if (eos.Contains(token)) break;
                }
            }
        }
        progress?.Invoke($"calibration: {tokens} tokens ({source})");
        return new CalibrationRun(tokens, source);
    }
}
