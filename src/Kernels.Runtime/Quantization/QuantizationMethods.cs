// The weight quantization methods the engine knows: each turns dense linear layers into its format (offline) and
// loads that format back (at model load).
using System.Text.Json.Nodes;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Quantization;

/// <summary>What `kernels quantize` was asked for; each method reads the settings it uses and rejects the rest.</summary>
public sealed record QuantizeOptions
{
    public required string Method { get; init; }
    /// <summary>Input channels per quantization group; 0 = one group per output channel (per-channel); null = the method's default.</summary>
    public int? GroupSize { get; init; }
    /// <summary>Bits per weight code (SqueezeLLM: 3 or 4).</summary>
    public int? Bits { get; init; }
    /// <summary>Fraction of weights kept as sparse full-precision outliers, in percent (SqueezeLLM).</summary>
    public double? SparsityPercent { get; init; }
    /// <summary>Text file whose tokens calibrate the quantizer; null = the method's default.</summary>
    public string? CalibrationFile { get; init; }
    public int Seed { get; init; } = 1234;
    /// <summary>Progress lines (to stderr in the CLI).</summary>
    public Action<string>? Progress { get; init; }
}

public interface IQuantizationMethod
{
    /// <summary>The "quant_method" name in config.json and the `--method` value of `kernels quantize`.</summary>
    string Name { get; }

    /// <summary>
    /// Prepares quantization of <paramref name="model"/>; a method that calibrates has <paramref name="calibration"/>
    /// run the model here (Calibration.CpuCalibrationRunner in the engine). Throws ArgumentException naming a bad option.
    /// </summary>
    ILinearQuantizer CreateQuantizer(QuantizeOptions options, LoadedModel model, ICalibrationRunner calibration);

    /// <summary>
    /// Loads layer <paramref name="name"/> (tensors named name + "." + suffix) stored by this method; missing or
    /// misshapen tensors are a <see cref="ModelFormatException"/> naming <paramref name="source"/>.
    /// </summary>
    LinearWeight Load(string name, int outFeatures, int inFeatures, Func<string, WeightTensor?> lookup, QuantizationConfig config, string source);
}

/// <summary>Quantizes one dense linear layer at a time, so a model larger than RAM streams through it.</summary>
public interface ILinearQuantizer
{
    /// <summary>The quantization_config to write into config.json ("quant_method" included).</summary>
    JsonObject Config { get; }

    /// <summary>The tensors that replace <c>weight.Name + ".weight"</c>, named <c>weight.Name + "." + suffix</c>.</summary>
    IReadOnlyList<SafetensorsWriter.Tensor> Quantize(DenseLinear weight);
}

public static class QuantizationMethods
{
    /// <summary>The methods every process knows.</summary>
    private static readonly IQuantizationMethod[] BuiltIn = [new W4A8.W4A8Method(), new SqueezeLlm.SqueezeLlmMethod()];

    private static readonly Dictionary<string, IQuantizationMethod> Known = BuiltIn.ToDictionary(m => m.Name, StringComparer.Ordinal);

    public static IReadOnlyCollection<string> Names
    {
        get { lock (Known) return Known.Keys.Order().ToArray(); }
    }

    /// <summary>Adds a method beyond the built-in ones (or replaces one of the same name).</summary>
    public static void Register(IQuantizationMethod method)
    {
        lock (Known) Known[method.Name] = method;
    }

    /// <summary>The method called <paramref name="name"/>; an unknown one is a format error naming <paramref name="source"/>.</summary>
    public static IQuantizationMethod Find(string name, string source)
    {
        lock (Known)
        {
            if (Known.TryGetValue(name, out var m)) return m;
            throw new ModelFormatException(source, $"unknown quantization method '{name}'; supported: {(Known.Count == 0 ? "none" : string.Join(", ", Known.Keys.Order()))}");
        }
    }
}
