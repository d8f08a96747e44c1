// SqueezeLLM's sensitivity without gradients: E[x_k^2] of every linear layer's inputs over calibration tokens.
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Models;

namespace Kernels.Runtime.Quantization.SqueezeLlm;

/// <summary>
/// Why this is the sensitivity: a layer's output error for a weight error dW is e = x . dW^T, and
/// E[e_n^2] = dW_n . E[x x^T] . dW_n^T ~ sum_k E[x_k^2] dW[n,k]^2 when the off-diagonal terms are dropped. So E[x_k^2]
/// is the diagonal of the layer's own Hessian (what GPTQ and AWQ use) and weights every element of column k alike;
/// SqueezeLLM's Fisher diagonal (squared loss gradients) needs a backward pass an inference engine does not have.
/// Collected through the CPU backend's <see cref="ILinearInputObserver"/> hook, keyed by layer name.
/// </summary>
public sealed class InputSecondMoments : ILinearInputObserver
{
    /// <summary>Default calibration: this many sequences of up to <see cref="SampledTokens"/> tokens sampled from the model.</summary>
    public const int SampledSequences = 4;
    public const int SampledTokens = 128;
    /// <summary>Most tokens of a --calib file that are run (in windows of the model's context).</summary>
    public const int MaxFileTokens = 4096;

    private readonly Dictionary<string, (double[] Sum, long Rows)> _layers = new(StringComparer.Ordinal);

    /// <summary>Tokens whose activations were observed.</summary>
    public long Tokens { get; private set; }

    /// <summary>A description of where the statistics came from, for quantization_config.</summary>
    public string Source { get; private init; } = "";

    public void Observe(LinearWeight weight, ReadOnlySpan<float> input, int rows)
    {
        int k = weight.InFeatures;
        lock (_layers)
        {
            if (!_layers.TryGetValue(weight.Name, out var s)) s = (new double[k], 0);
            for (int r = 0; r < rows; r++)
            {
                var x = input.Slice(r * k, k);
                for (int i = 0; i < k; i++) s.Sum[i] += (double)x[i] * x[i];
            }
            _layers[weight.Name] = (s.Sum, s.Rows + rows);
        }
    }

    /// <summary>E[x_k^2] of layer <paramref name="name"/>'s inputs, or null when it never ran.</summary>
    public float[]? For(string name)
    {
        lock (_layers)
        {
            if (!_layers.TryGetValue(name, out var s) || s.Rows == 0) return null;
            return s.Sum.Select(v => (float)(v / s.Rows)).ToArray();
        }
    }

    /// <summary>
    /// Runs <paramref name="calibrationFile"/>'s text (up to <see cref="MaxFileTokens"/> tokens) through the model, or
    /// without one, text the model samples itself (temperature 1 from BOS, <paramref name="seed"/>). Why sampled text
    /// by default: it needs no corpus shipped with the engine, suits any model and language (and synthetic models,
    /// whose tokenizer has no natural text), and its activations are the ones the model meets when it generates;
    /// greedy text would repeat one loop, sampling at temperature 1 follows the model's own distribution.
    /// </summary>
    public static InputSecondMoments Collect(LoadedModel model, string? calibrationFile, int seed, Action<string>? progress = null)
    {
        var stats = new InputSecondMoments
        {
            Source = calibrationFile is null
                ? $"model samples: {SampledSequences} x {SampledTokens} tokens, temperature 1, seed {seed}"
                : $"file {Path.GetFileName(calibrationFile)}",
        };
        using var backend = new CpuBackend(model, new CpuBackendOptions { LinearInputs = stats });
        int context = model.Config.MaxPositions;
        if (calibrationFile is not null)
        {
            var ids = model.Tokenizer.Encode(File.ReadAllText(calibrationFile), addBos: true);
            if (ids.Length > MaxFileTokens) ids = ids[..MaxFileTokens];
            if (ids.Length == 0) throw new ArgumentException($"--calib: {calibrationFile} has no tokens");
            for (int start = 0; start < ids.Length; start += context)
            {
                using var cache = backend.CreateCache();
                backend.Forward([new SequenceStep(cache, ids.AsMemory(start, Math.Min(context, ids.Length - start)))]);
            }
            stats.Tokens = ids.Length;
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
                    stats.Tokens++;
                    token = Sampler.Sample(logits, sampling, null, rng.NextDouble());
                    if (eos.Contains(token)) break;
                }
            }
        }
        progress?.Invoke($"calibration: {stats.Tokens} tokens ({stats.Source})");
        return stats;
    }
}
