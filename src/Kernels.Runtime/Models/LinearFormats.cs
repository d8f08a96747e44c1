// How the model readers and writers reach quantized linear layers without knowing their formats: a format
// (Quantization/W4A8, Quantization/SqueezeLlm, a host's own) registers here under its "quant_method" name, the loader
// finds it here, and the writer is handed a quantizer. Models sits below Quantization, so the formats come to it.
using System.Text.Json.Nodes;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

/// <summary>Reads back the linear layers of a model quantized by one method.</summary>
internal interface ILinearFormat
{
    /// <summary>The "quant_method" name in config.json.</summary>
    string Name { get; }

    /// <summary>
    /// Loads layer <paramref name="name"/> (tensors named name + "." + suffix) stored in this format; missing or
    /// misshapen tensors are a <see cref="ModelFormatException"/> naming <paramref name="source"/>.
    /// </summary>
    LinearWeight Load(string name, int outFeatures, int inFeatures, Func<string, WeightTensor?> lookup, QuantizationConfig config, string source);
}

/// <summary>Quantizes one dense linear layer at a time, so a model larger than RAM streams through it (<see cref="HfModelWriter"/>).</summary>
internal interface ILinearQuantizer
{
    /// <summary>The quantization_config to write into config.json ("quant_method" included).</summary>
    JsonObject Config { get; }

    /// <summary>The tensors that replace <c>weight.Name + ".weight"</c>, named <c>weight.Name + "." + suffix</c>.</summary>
    IReadOnlyList<SafetensorsWriter.Tensor> Quantize(DenseLinear weight);
}

/// <summary>
/// The linear formats this process can load, by "quant_method". Quantization.QuantizationMethods registers the built-in
/// ones when the assembly loads; a host adds its own through <see cref="Register"/>.
/// </summary>
internal static class LinearFormats
{
    private static readonly Dictionary<string, ILinearFormat> Known = new(StringComparer.Ordinal);

    /// <summary>Every registered format, by name.</summary>
    public static IReadOnlyList<ILinearFormat> All
    {
        get { lock (Known) return Known.Values.OrderBy(f => f.Name, StringComparer.Ordinal).ToArray(); }
    }

    /// <summary>Adds a format (or replaces the one of the same name).</summary>
    public static void Register(ILinearFormat format)
    {
        lock (Known) Known[format.Name] = format;
    }

    /// <summary>The format called <paramref name="name"/>; an unknown one is a format error naming <paramref name="source"/>.</summary>
    public static ILinearFormat Find(string name, string source)
    {
        lock (Known)
        {
            if (Known.TryGetValue(name, out var f)) return f;
            throw new ModelFormatException(source, $"unknown quantization method '{name}'; supported: {(Known.Count == 0 ? "none" : string.Join(", ", Known.Keys.Order()))}");
        }
    }
}
