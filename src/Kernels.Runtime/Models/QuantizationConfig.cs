// config.json's "quantization_config" of a quantized model directory: which method, and its parameters.
using System.Text.Json;
using System.Text.Json.Nodes;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

/// <summary>
/// The method name ("quant_method", as Hugging Face spells it) and the method's own parameters (group size, bits...),
/// kept as JSON so each method owns the meaning of its keys.
/// </summary>
internal sealed class QuantizationConfig
{
    public string Method { get; }
    public JsonObject Parameters { get; }

    public QuantizationConfig(JsonObject parameters, string source)
    {
        Parameters = parameters;
        Method = parameters["quant_method"] is JsonValue v && v.TryGetValue(out string? m) && m.Length > 0
            ? m
            : throw new ModelFormatException(source, "quantization_config has no \"quant_method\"");
    }

    /// <summary>The quantization_config of <paramref name="configPath"/>, or null for a dense model.</summary>
    public static QuantizationConfig? Read(string configPath)
    {
        JsonNode? root;
        try
        {
            root = JsonNode.Parse(File.ReadAllBytes(configPath), documentOptions: new JsonDocumentOptions { AllowTrailingCommas = true });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(configPath, $"malformed JSON: {e.Message}", e);
        }
        return root?["quantization_config"] switch
        {
            null => null,
            JsonObject o => new QuantizationConfig((JsonObject)o.DeepClone(), configPath),
            _ => throw new ModelFormatException(configPath, "quantization_config must be a JSON object"),
        };
    }

    /// <summary>An integer parameter; a missing or non-integer value is a format error naming <paramref name="source"/>.</summary>
    public int RequireInt(string key, string source) =>
        Parameters[key] is JsonValue v && v.TryGetValue(out int i)
            ? i
            : throw new ModelFormatException(source, $"quantization_config.{key} must be an integer");
}
