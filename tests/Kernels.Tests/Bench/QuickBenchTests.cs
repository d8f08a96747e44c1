// `kernels-bench quick` (every suite on tiny shapes, CPU) writes a document that validates against its documented schema.
using System.Text.Json;
using Kernels.Bench;

namespace Kernels.Tests.Bench;

public class QuickBenchTests
{
    [Test]
    public async Task QuickRunValidatesAgainstTheSchema()
    {
        string path = Path.Combine(Path.GetTempPath(), $"kernels-quick-{Guid.NewGuid():N}.json");
        try
        {
            var output = Console.Out;
            Console.SetOut(TextWriter.Null); // the suites print their tables; the document is what is checked
            int code;
            try
            {
                code = await Quick.Run(path);
            }
            finally
            {
                Console.SetOut(output);
            }
            Assert.That(code, Is.EqualTo(0));
            using var schema = JsonDocument.Parse(File.ReadAllText(Path.Combine(TestContext.CurrentContext.TestDirectory, "bench-results.schema.json")));
            using var document = JsonDocument.Parse(File.ReadAllText(path));
            var errors = new List<string>();
            SchemaCheck.Validate(document.RootElement, schema.RootElement, schema.RootElement, "$", errors);
            Assert.That(errors, Is.Empty, string.Join("\n", errors));
            Assert.That(document.RootElement.GetProperty("suites").GetProperty("throughput").GetProperty("results").GetArrayLength(), Is.EqualTo(8), "4 workloads x sharing on/off");
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Test]
    public void TheValidatorRejectsWhatTheSchemaForbids()
    {
        using var schema = JsonDocument.Parse("""{"type":"object","required":["a"],"properties":{"a":{"type":"integer","minimum":1},"b":{"type":"array","minItems":1,"items":{"type":"string","enum":["x"]}}}}""");
        foreach (var (json, expected) in new[] { ("""{"a":0}""", "minimum"), ("""{}""", "required"), ("""{"a":1,"b":[]}""", "minItems"), ("""{"a":1,"b":["y"]}""", "enum"), ("""{"a":1.5}""", "integer") })
        {
            using var doc = JsonDocument.Parse(json);
            var errors = new List<string>();
            SchemaCheck.Validate(doc.RootElement, schema.RootElement, schema.RootElement, "$", errors);
            Assert.That(errors, Has.Some.Contains(expected), json);
        }
    }
}

/// <summary>The subset of JSON Schema that bench-results.schema.json uses: type, const, enum, required, properties, items, minItems, minimum, $ref.</summary>
public static class SchemaCheck
{
    public static void Validate(JsonElement value, JsonElement schema, JsonElement root, string path, List<string> errors)
    {
        if (schema.TryGetProperty("$ref", out var reference))
        {
            var target = root;
            foreach (var part in reference.GetString()!.TrimStart('#', '/').Split('/')) target = target.GetProperty(part);
            Validate(value, target, root, path, errors);
            return;
        }
        if (schema.TryGetProperty("type", out var type))
        {
            bool ok = type.GetString() switch
            {
                "object" => value.ValueKind == JsonValueKind.Object,
                "array" => value.ValueKind == JsonValueKind.Array,
                "string" => value.ValueKind == JsonValueKind.String,
                "boolean" => value.ValueKind is JsonValueKind.True or JsonValueKind.False,
                "number" => value.ValueKind == JsonValueKind.Number,
                "integer" => value.ValueKind == JsonValueKind.Number && value.TryGetInt64(out _),
                _ => false,
            };
            if (!ok)
            {
                errors.Add($"{path}: expected {type.GetString()}, got {value.ValueKind}");
                return;
            }
        }
        if (schema.TryGetProperty("const", out var constant) && value.GetRawText() != constant.GetRawText()) errors.Add($"{path}: expected const {constant.GetRawText()}");
        if (schema.TryGetProperty("enum", out var options) && !options.EnumerateArray().Any(o => o.GetRawText() == value.GetRawText()))
            errors.Add($"{path}: {value.GetRawText()} is not in enum {options.GetRawText()}");
        if (schema.TryGetProperty("minimum", out var minimum) && value.ValueKind == JsonValueKind.Number && value.GetDouble() < minimum.GetDouble())
            errors.Add($"{path}: {value.GetDouble()} is below the minimum {minimum.GetDouble()}");
        if (value.ValueKind == JsonValueKind.Object)
        {
            if (schema.TryGetProperty("required", out var required))
                foreach (var name in required.EnumerateArray())
                    if (!value.TryGetProperty(name.GetString()!, out _)) errors.Add($"{path}: required property '{name.GetString()}' is missing");
            if (schema.TryGetProperty("properties", out var properties))
                foreach (var p in properties.EnumerateObject())
                    if (value.TryGetProperty(p.Name, out var child)) Validate(child, p.Value, root, $"{path}.{p.Name}", errors);
        }
        if (value.ValueKind == JsonValueKind.Array)
        {
            if (schema.TryGetProperty("minItems", out var minItems) && value.GetArrayLength() < minItems.GetInt32())
                errors.Add($"{path}: {value.GetArrayLength()} items, minItems {minItems.GetInt32()}");
            if (schema.TryGetProperty("items", out var items))
            {
                int i = 0;
                foreach (var item in value.EnumerateArray()) Validate(item, items, root, $"{path}[{i++}]", errors);
            }
        }
    }
}
