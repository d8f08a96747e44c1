// Reader for Hugging Face tokenizer.json (byte-level BPE) and the sibling configs that name BOS, EOS and add_bos.
using System.Text.Json;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Tokenization;

/// <summary>
/// Reads the parts of a <c>tokenizer.json</c> that define a byte-level BPE: <c>model.vocab</c>, <c>model.merges</c>
/// ("a b" strings or ["a", "b"] pairs, both occur in the wild), <c>model.ignore_merges</c>, <c>added_tokens</c>, the
/// Split regex and ByteLevel step of <c>pre_tokenizer</c>, and an NFC <c>normalizer</c>. Special ids come from the
/// sibling files, most specific first: tokenizer_config.json (bos_token, eos_token, add_bos_token), then
/// generation_config.json and config.json (bos_token_id, eos_token_id, which may be a list), then the
/// TemplateProcessing post-processor (which is how Llama 3's tokenizer.json alone says "prepend BOS").
/// </summary>
internal static class HfTokenizerJson
{
    /// <summary>True when the file is a BPE model with a ByteLevel pre-tokenizer or decoder.</summary>
    public static bool IsByteLevelBpe(string path)
    {
        using JsonDocument doc = Parse(path);
        JsonElement root = doc.RootElement;
        return ModelType(root) == "BPE" && (ContainsType(Property(root, "pre_tokenizer"), "ByteLevel")
                                          || ContainsType(Property(root, "decoder"), "ByteLevel"));
    }

    public static ByteLevelBpeVocabulary Read(string path)
    {
        using JsonDocument doc = Parse(path);
        JsonElement root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException(path, "tokenizer.json is not a JSON object");

        string? type = ModelType(root);
        if (type != "BPE")
            throw new ModelFormatException(path, $"model.type is '{type ?? "(missing)"}'; only BPE is supported");
        JsonElement model = root.GetProperty("model");
        JsonElement? preTokenizer = Property(root, "pre_tokenizer");
        if (!ContainsType(preTokenizer, "ByteLevel") && !ContainsType(Property(root, "decoder"), "ByteLevel"))
            throw new ModelFormatException(path,
                "not a byte-level BPE (no ByteLevel pre-tokenizer or decoder); a sentencepiece-style tokenizer.json " +
                "should be loaded from its tokenizer.model");

        // ---------------------------------------------------------------- vocabulary, merges, added tokens
        if (Property(model, "vocab") is not { ValueKind: JsonValueKind.Object } vocabJson)
            throw new ModelFormatException(path, "model.vocab is missing or not an object");
        var byId = new Dictionary<int, string>();
        foreach (JsonProperty entry in vocabJson.EnumerateObject())
        {
            // Ids index the token table, which is sized by the largest: bounded before anything is allocated by it.
            if (entry.Value.ValueKind != JsonValueKind.Number || !entry.Value.TryGetInt32(out int id) || id < 0 || id >= ITextTokenizer.MaxVocab)
                throw new ModelFormatException(path, $"model.vocab['{entry.Name}'] = {entry.Value.GetRawText()} is not a token id in 0..{ITextTokenizer.MaxVocab - 1}");
            if (!byId.TryAdd(id, entry.Name))
                throw new ModelFormatException(path, $"model.vocab gives id {id} to both '{byId[id]}' and '{entry.Name}'");
        }

        var merges = new List<(string, string)>();
        if (Property(model, "merges") is { ValueKind: JsonValueKind.Array } mergesJson)
        {
            foreach (JsonElement m in mergesJson.EnumerateArray())
                merges.Add(ParseMerge(m, merges.Count, path));
        }

        var added = new List<AddedToken>();
        if (Property(root, "added_tokens") is { ValueKind: JsonValueKind.Array } addedJson)
        {
            foreach (JsonElement t in addedJson.EnumerateArray())
            {
                if (Property(t, "id") is not { ValueKind: JsonValueKind.Number } idJson || !idJson.TryGetInt32(out int id)
                    || Property(t, "content") is not { ValueKind: JsonValueKind.String } contentJson)
                    throw new ModelFormatException(path, $"added_tokens[{added.Count}] lacks an integer id or a string content");
                if (id < 0 || id >= ITextTokenizer.MaxVocab)
                    throw new ModelFormatException(path, $"added_tokens[{added.Count}].id = {id} is not a token id in 0..{ITextTokenizer.MaxVocab - 1}");
                bool special = Property(t, "special") is { ValueKind: JsonValueKind.True };
                added.Add(new AddedToken(id, contentJson.GetString()!, special));
            }
        }

        int count = Math.Max(byId.Count == 0 ? 0 : byId.Keys.Max() + 1, added.Count == 0 ? 0 : added.Max(t => t.Id) + 1);
        var tokens = new string?[count];
        foreach (var (id, token) in byId) tokens[id] = token;

        // ---------------------------------------------------------------- pre-tokenizer and normalizer
        string regex = FindSplitRegex(preTokenizer, path)
            ?? (ByteLevelUsesRegex(preTokenizer) ? PreTokenizerPattern.Gpt2
                : throw new ModelFormatException(path, "pre_tokenizer has no Split regex and its ByteLevel step has use_regex false"));
        bool addPrefixSpace = FindByType(preTokenizer, "ByteLevel") is { } byteLevel
                              && Property(byteLevel, "add_prefix_space") is { ValueKind: JsonValueKind.True };
        bool nfc = ParseNormalizer(Property(root, "normalizer"), path);
        bool ignoreMerges = Property(model, "ignore_merges") is { ValueKind: JsonValueKind.True };

        // ---------------------------------------------------------------- special ids from the siblings
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        using JsonDocument? tokenizerConfig = ParseOptional(Path.Combine(dir, "tokenizer_config.json"));
        using JsonDocument? generationConfig = ParseOptional(Path.Combine(dir, "generation_config.json"));
        using JsonDocument? modelConfig = ParseOptional(Path.Combine(dir, "config.json"));

        var lookup = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var (id, token) in byId) lookup.TryAdd(token, id);
        foreach (AddedToken t in added) lookup[t.Content] = t.Id;
        int? IdOf(string? content, string where) => content is null ? null
            : lookup.TryGetValue(content, out int id) ? id
            : throw new ModelFormatException(path, $"{where} names '{content}', which is not in the vocabulary");

        string? templateBos = TemplateBosToken(Property(root, "post_processor"));
        int? bosId;
        if (tokenizerConfig is not null && Property(tokenizerConfig.RootElement, "bos_token") is { } bosToken)
            bosId = IdOf(TokenContent(bosToken), "tokenizer_config.json bos_token"); // an explicit null means "no BOS"
        else
            bosId = IntId(generationConfig, "bos_token_id") ?? IntId(modelConfig, "bos_token_id")
                    ?? IdOf(templateBos, "post_processor");

        bool addBos = tokenizerConfig is not null && Property(tokenizerConfig.RootElement, "add_bos_token") is { } addBosJson
            ? addBosJson.ValueKind == JsonValueKind.True
            : templateBos is not null && IdOf(templateBos, "post_processor") == bosId;

        var eos = new List<int>();
        void AddEos(int id) { if (!eos.Contains(id)) eos.Add(id); }
        if (tokenizerConfig is not null && Property(tokenizerConfig.RootElement, "eos_token") is { } eosToken
            && IdOf(TokenContent(eosToken), "tokenizer_config.json eos_token") is int configEos)
            AddEos(configEos);
        foreach (int id in IntIds(generationConfig, "eos_token_id")) AddEos(id);
        foreach (int id in IntIds(modelConfig, "eos_token_id")) AddEos(id);
        if (eos.Count == 0)
        {
            // Nothing configured (a bare tokenizer.json): fall back to the end markers these families use, so that
            // generation can stop. Only special added tokens qualify, never ordinary text.
            foreach (string name in (string[])["<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "</s>"])
                if (added.Find(t => t.Special && t.Content == name) is { } t) AddEos(t.Id);
        }

        var vocabulary = new ByteLevelBpeVocabulary(tokens, merges, added, regex, bosId, eos, addBos,
            ignoreMerges, addPrefixSpace, nfc);
        vocabulary.Validate(path);
        return vocabulary;
    }

    // ------------------------------------------------------------------------------------------------ parts

    private static (string, string) ParseMerge(JsonElement m, int index, string path)
    {
        if (m.ValueKind == JsonValueKind.String)
        {
            string s = m.GetString()!;
            int space = s.IndexOf(' ');
            if (space > 0 && space < s.Length - 1 && s.IndexOf(' ', space + 1) < 0)
                return (s[..space], s[(space + 1)..]);
        }
        else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2
                 && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
        {
            return (m[0].GetString()!, m[1].GetString()!);
        }
        throw new ModelFormatException(path, $"model.merges[{index}] is neither \"a b\" nor [\"a\", \"b\"]: {m.GetRawText()}");
    }

    private static string? FindSplitRegex(JsonElement? preTokenizer, string path)
    {
        if (FindByType(preTokenizer, "Split") is not { } split) return null;
        // Only "Isolated" (every match and every gap is its own piece) is implemented; the other behaviours would
        // encode differently without any error, so they are refused here.
        string? behavior = Property(split, "behavior") is { ValueKind: JsonValueKind.String } b ? b.GetString() : "Isolated";
        if (behavior != "Isolated" || Property(split, "invert") is { ValueKind: JsonValueKind.True })
            throw new ModelFormatException(path, $"pre_tokenizer Split with behavior '{behavior}' (or invert) is not supported; only Isolated");
        if (Property(split, "pattern") is { } pattern)
        {
            if (Property(pattern, "Regex") is { ValueKind: JsonValueKind.String } regex) return regex.GetString();
            if (Property(pattern, "String") is { ValueKind: JsonValueKind.String } literal)
                return System.Text.RegularExpressions.Regex.Escape(literal.GetString()!);
        }
        throw new ModelFormatException(path, "pre_tokenizer Split step has no pattern.Regex or pattern.String");
    }

    private static bool ByteLevelUsesRegex(JsonElement? preTokenizer) =>
        FindByType(preTokenizer, "ByteLevel") is { } b && Property(b, "use_regex") is not { ValueKind: JsonValueKind.False };

    private static bool ParseNormalizer(JsonElement? normalizer, string path)
    {
        if (normalizer is null || normalizer.Value.ValueKind == JsonValueKind.Null) return false;
        string? type = StringProperty(normalizer.Value, "type");
        return type switch
        {
            "NFC" => true,
            "Sequence" when Property(normalizer.Value, "normalizers") is { ValueKind: JsonValueKind.Array } list
                && list.GetArrayLength() == 0 => false,
            _ => throw new ModelFormatException(path, $"normalizer '{type}' is not supported (only none or NFC)"),
        };
    }

    /// <summary>The first SpecialToken of a TemplateProcessing "single" template, when it precedes the text.</summary>
    private static string? TemplateBosToken(JsonElement? postProcessor)
    {
        if (FindByType(postProcessor, "TemplateProcessing") is not { } template) return null;
        if (Property(template, "single") is not { ValueKind: JsonValueKind.Array } single || single.GetArrayLength() == 0)
            return null;
        return Property(single[0], "SpecialToken") is { } special && Property(special, "id") is { ValueKind: JsonValueKind.String } id
            ? id.GetString()
            : null;
    }

    /// <summary>bos_token / eos_token are either a string or an AddedToken object with "content".</summary>
    private static string? TokenContent(JsonElement token) => token.ValueKind switch
    {
        JsonValueKind.String => token.GetString(),
        JsonValueKind.Object => StringProperty(token, "content"),
        _ => null,
    };

    private static int? IntId(JsonDocument? doc, string key) =>
        doc is not null && Property(doc.RootElement, key) is { ValueKind: JsonValueKind.Number } n && n.TryGetInt32(out int id)
            ? id
            : null;

    private static IEnumerable<int> IntIds(JsonDocument? doc, string key)
    {
        if (doc is null || Property(doc.RootElement, key) is not { } value) yield break;
        if (value.ValueKind == JsonValueKind.Number && value.TryGetInt32(out int single)) yield return single;
        if (value.ValueKind == JsonValueKind.Array)
            foreach (JsonElement e in value.EnumerateArray())
                if (e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int id)) yield return id;
    }

    // ------------------------------------------------------------------------------------------------ JSON plumbing

    private static string? ModelType(JsonElement root)
    {
        if (Property(root, "model") is not { ValueKind: JsonValueKind.Object } model) return null;
        if (Property(model, "type") is { ValueKind: JsonValueKind.String } t) return t.GetString();
        // Older files omit model.type; vocab plus merges can only be BPE.
        return Property(model, "merges") is not null && Property(model, "vocab") is not null ? "BPE" : null;
    }

    /// <summary>A step of the given type: the element itself or one inside a Sequence (pretokenizers/processors).</summary>
    private static JsonElement? FindByType(JsonElement? element, string type)
    {
        if (element is not { ValueKind: JsonValueKind.Object } e) return null;
        if (Property(e, "type") is { ValueKind: JsonValueKind.String } t && t.GetString() == type) return e;
        foreach (string listName in (string[])["pretokenizers", "processors", "decoders"])
            if (Property(e, listName) is { ValueKind: JsonValueKind.Array } list)
                foreach (JsonElement child in list.EnumerateArray())
                    if (FindByType(child, type) is { } found) return found;
        return null;
    }

    private static string? StringProperty(JsonElement element, string name) =>
        Property(element, name) is { ValueKind: JsonValueKind.String } value ? value.GetString() : null;

    private static bool ContainsType(JsonElement? element, string type) => FindByType(element, type) is not null;

    private static JsonElement? Property(JsonElement element, string name) =>
        element.ValueKind == JsonValueKind.Object && element.TryGetProperty(name, out JsonElement value) ? value : null;

    private static JsonElement? Property(JsonElement? element, string name) =>
        element is { } e ? Property(e, name) : null;

    private static JsonDocument Parse(string path)
    {
        byte[] bytes = TokenizerLoader.ReadFile(path, "tokenizer JSON");
        try
        {
            return JsonDocument.Parse(bytes, new JsonDocumentOptions { AllowTrailingCommas = true });
        }
        catch (JsonException ex)
        {
            throw new ModelFormatException(path, $"malformed JSON: {ex.Message}", ex);
        }
    }

    private static JsonDocument? ParseOptional(string path)
    {
        if (!File.Exists(path)) return null;
        JsonDocument doc = Parse(path);
        if (doc.RootElement.ValueKind == JsonValueKind.Object) return doc;
        doc.Dispose();
        throw new ModelFormatException(path, "expected a JSON object");
    }
}
