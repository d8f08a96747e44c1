// Typed reads of the JSON files a model directory carries (config.json, tokenizer_config.json, the shard index): a
// field of the wrong kind or out of range is a ModelFormatException naming the file, the field and the value.
using System.Text.Json;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

/// <summary>
/// The fields of one JSON object in <see cref="Path"/>; <see cref="Prefix"/> names nested objects in messages
/// ("rope_scaling."). JSON null reads as absent everywhere, as transformers treats it.
/// </summary>
internal readonly struct JsonFields(JsonElement obj, string path, string prefix = "")
{
    /// <summary>Largest JSON file a model directory may carry here (real config files are kilobytes, chat templates tens of kilobytes).</summary>
    public const int MaxFileBytes = 16 << 20;

    public string Path => path;
    public string Prefix => prefix;
    public JsonElement Element => obj;

    /// <summary>Reads and parses <paramref name="file"/>, which must hold one JSON object of at most <see cref="MaxFileBytes"/>.</summary>
    public static JsonDocument ParseFile(string file)
    {
        byte[] bytes;
        try
        {
            var info = new FileInfo(file);
            if (info.Length > MaxFileBytes) throw new ModelFormatException(file, $"is {info.Length} bytes; a model's JSON file may hold at most {MaxFileBytes}");
            bytes = File.ReadAllBytes(file);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException(file, $"cannot read: {e.Message}", e);
        }
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { AllowTrailingCommas = true });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(file, $"malformed JSON: {e.Message}", e);
        }
        if (doc.RootElement.ValueKind == JsonValueKind.Object) return doc;
        doc.Dispose();
        throw new ModelFormatException(file, "expected a JSON object");
    }

    public ModelFormatException Wrong(string name, JsonElement value, string expected) =>
        new(path, $"'{prefix}{name}' is {Shown(value)}, expected {expected}");

    /// <summary>A value as an error shows it: its JSON text, shortened.</summary>
    public static string Shown(JsonElement value)
    {
        string raw = value.GetRawText();
        return raw.Length <= 40 ? raw : raw[..40] + "...";
    }

    public JsonElement? Raw(string name) =>
        obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    public string? String(string name) => Raw(name) is not { } v ? null
        : v.ValueKind == JsonValueKind.String ? Text(v, name) : throw Wrong(name, v, "a string");

    /// <summary>The text of a string element; invalid UTF-8 or a lone surrogate is an error naming the field.</summary>
    public string Text(JsonElement v, string name)
    {
        try
        {
            return v.GetString()!;
        }
        catch (InvalidOperationException)
        {
            throw new ModelFormatException(path, $"'{prefix}{name}' is not valid Unicode text (invalid UTF-8 or a lone surrogate)");
        }
    }

    public bool? Bool(string name) => Raw(name) is not { } v ? null
        : v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw Wrong(name, v, "true or false");

    /// <summary>An integer in [min, max]; absent or null reads as null.</summary>
    public int? Int(string name, int min = int.MinValue, int max = int.MaxValue) => Raw(name) is not { } v ? null : Int(v, name, min, max);

    public int Int(JsonElement v, string name, int min = int.MinValue, int max = int.MaxValue)
    {
        if (v.ValueKind != JsonValueKind.Number) throw Wrong(name, v, "an integer");
        if (!v.TryGetInt64(out long value))
            throw v.TryGetDouble(out double d) && d == Math.Floor(d)
                ? new ModelFormatException(path, $"'{prefix}{name}' = {Shown(v)} is outside {min}..{max}")
                : Wrong(name, v, "an integer");
        if (value < min || value > max) throw new ModelFormatException(path, $"'{prefix}{name}' = {Shown(v)} is outside {min}..{max}");
        return (int)value;
    }

    public int RequireInt(string name, int min, int max) =>
        Int(name, min, max) ?? throw new ModelFormatException(path, $"missing integer field '{prefix}{name}'");

    /// <summary>A finite number; absent or null reads as null.</summary>
    public double? Double(string name)
    {
        if (Raw(name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number) throw Wrong(name, v, "a number");
        if (!v.TryGetDouble(out double d) || !double.IsFinite(d)) throw new ModelFormatException(path, $"'{prefix}{name}' = {Shown(v)} is not a finite number");
        return d;
    }

    /// <summary>A positive finite number (the math divides by it or takes its logarithm); absent or null reads as null.</summary>
    public double? Positive(string name)
    {
        double? d = Double(name);
        if (d is <= 0) throw new ModelFormatException(path, $"'{prefix}{name}' = {Shown(Raw(name)!.Value)} must be positive");
        return d;
    }

    /// <summary>A nested object; absent or null reads as null.</summary>
    public JsonFields? Object(string name) => Raw(name) is not { } v ? null
        : v.ValueKind == JsonValueKind.Object ? new JsonFields(v, path, $"{prefix}{name}.") : throw Wrong(name, v, "an object");
}
