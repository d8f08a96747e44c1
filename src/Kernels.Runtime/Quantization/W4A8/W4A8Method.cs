// The "w4a8" quantization method (QServe/QoQ): its config keys, which layers get groups, and its quantizer and loader.
using System.Text.Json.Nodes;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Quantization.W4A8;

/// <summary>
/// quantization_config: {"quant_method": "w4a8", "group_size": 128 (0 = per channel), "weight_layout": "qserve-tile32",
/// "activations": "int8 per token"}. A layer whose K is not a multiple of group_size is stored per channel (the models
/// with K = 64 or 176); loading derives each layer's form the same way, so the config needs no per-layer list.
/// </summary>
internal sealed class W4A8Method : IQuantizationMethod
{
    public const string MethodName = "w4a8";
    public const string Layout = "qserve-tile32";

    public string Name => MethodName;

    public ILinearQuantizer CreateQuantizer(QuantizeOptions options, LoadedModel model, ICalibrationRunner calibration)
    {
        if (options.Bits is { } bits && bits != 4) throw new ArgumentException($"w4a8 weights are 4-bit, got {bits}", nameof(options.Bits));
        if (options.SparsityPercent is not null) throw new ArgumentException("w4a8 keeps no sparse outliers", nameof(options.SparsityPercent));
        if (options.CalibrationFile is not null) throw new ArgumentException("w4a8 quantizes from the weights alone (no calibration)", nameof(options.CalibrationFile));
        return new QoqQuantizer(options.GroupSize ?? QoqQuantizer.DefaultGroupSize);
    }

    public LinearWeight Load(string name, int outFeatures, int inFeatures, Func<string, WeightTensor?> lookup, QuantizationConfig config, string source)
    {
        int group = config.RequireInt("group_size", source);
        if (group < 0 || group % W4A8Layout.Tile != 0)
            throw new ModelFormatException(source, $"quantization_config.group_size must be 0 (per channel) or a multiple of {W4A8Layout.Tile}, got {group}");
        if (config.Parameters["weight_layout"] is JsonValue v && v.TryGetValue(out string? layout) && layout != Layout)
            throw new ModelFormatException(source, $"quantization_config.weight_layout '{layout}' is not the supported '{Layout}'");
        return W4A8Linear.Load(name, outFeatures, inFeatures, GroupFor(group, inFeatures), lookup, source);
    }

    /// <summary>The group size a layer with <paramref name="inFeatures"/> inputs uses: the configured one if it divides K, else 0 (per channel).</summary>
    public static int GroupFor(int groupSize, int inFeatures) => groupSize > 0 && inFeatures % groupSize == 0 ? groupSize : 0;

    public static JsonObject ConfigFor(int groupSize) => new()
    {
        ["quant_method"] = MethodName,
        ["group_size"] = groupSize,
        ["weight_layout"] = Layout,
        ["activations"] = "int8 per token",
    };
}
