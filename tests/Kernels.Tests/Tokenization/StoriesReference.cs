// The stories260K tokenizer files and reference_vectors.json, loaded once for the tokenizer tests.
using System.Text.Json;

namespace Kernels.Tests.Tokenization;

/// <summary>Paths under ../shared/models/stories260K and the parts of reference_vectors.json the tokenizer tests use.</summary>
internal static class StoriesReference
{
    public const string Folder = "models/stories260K";

    public static string TokenizerModel => SharedData.Require($"{Folder}/tokenizer.model");
    public static string Tok512 => SharedData.Require($"{Folder}/tok512.bin");

    public sealed record EncodeCase(string Text, int[] IdsWithBos)
    {
        public override string ToString() => Text; // test names show the prompt
    }

    /// <summary>run.c's encodings of five prompts, BOS included (run.c always passes bos = 1).</summary>
    public static IEnumerable<EncodeCase> EncodeCases()
    {
        foreach (JsonElement c in Load().GetProperty("encode_runc").EnumerateArray())
            yield return new EncodeCase(c.GetProperty("text").GetString()!, Ids(c.GetProperty("ids_with_bos")));
    }

    public static (int[] Ids, string Text) Greedy256()
    {
        JsonElement g = Load().GetProperty("greedy_256");
        return (Ids(g.GetProperty("ids")), g.GetProperty("text").GetString()!);
    }

    public static (string Prompt, int[] PromptIds) PromptedGreedy()
    {
        JsonElement g = Load().GetProperty("prompted_greedy_40");
        return (g.GetProperty("prompt").GetString()!, Ids(g.GetProperty("prompt_ids")));
    }

    private static int[] Ids(JsonElement array) => array.EnumerateArray().Select(e => e.GetInt32()).ToArray();

    private static JsonElement Load()
    {
        string path = SharedData.Require($"{Folder}/reference_vectors.json");
        using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
        return doc.RootElement.Clone();
    }
}
