// SqueezeLLM's sensitivity without gradients: E[x_k^2] of every linear layer's inputs over calibration tokens.
using Kernels.Runtime.Models;

namespace Kernels.Runtime.Quantization.SqueezeLlm;

/// <summary>
/// Why this is the sensitivity: a layer's output error for a weight error dW is e = x . dW^T, and
/// E[e_n^2] = dW_n . E[x x^T] . dW_n^T ~ sum_k E[x_k^2] dW[n,k]^2 when the off-diagonal terms are dropped. So E[x_k^2]
/// is the diagonal of the layer's own Hessian (what GPTQ and AWQ use) and weights every element of column k alike;
/// SqueezeLLM's Fisher diagonal (squared loss gradients) needs a backward pass an inference engine does not have.
/// Collected through <see cref="ILinearInputObserver"/> while an <see cref="ICalibrationRunner"/> runs the model, keyed
/// by layer name.
/// </summary>
internal sealed class InputSecondMoments : ILinearInputObserver
{
    private readonly Dictionary<string, (double[] Sum, long Rows)> _layers = new(StringComparer.Ordinal);

    /// <summary>Tokens whose activations were observed.</summary>
    public long Tokens { get; private set; }

    /// <summary>A description of where the statistics came from, for quantization_config.</summary>
    public string Source { get; private set; } = "";

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
    /// The statistics of one calibration run of <paramref name="model"/> by <paramref name="runner"/>:
    /// <paramref name="calibrationFile"/>'s text, or without one, text the model samples itself (<paramref name="seed"/>).
    /// </summary>
    public static InputSecondMoments Collect(LoadedModel model, ICalibrationRunner runner, string? calibrationFile, int seed, Action<string>? progress = null)
    {
        var stats = new InputSecondMoments();
        var run = runner.Run(model, calibrationFile, seed, stats, progress);
        stats.Tokens = run.Tokens;
        stats.Source = run.Source;
        return stats;
    }
}
