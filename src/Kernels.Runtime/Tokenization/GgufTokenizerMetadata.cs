// Builds a tokenizer from GGUF metadata (tokenizer.ggml.*), for both "llama" and "gpt2" vocabularies.
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Tokenization;

/// <summary>
/// Reads the <c>tokenizer.ggml.*</c> keys of a GGUF file's metadata. Values arrive as the GGUF reader produced them:
/// integer scalars as their exact .NET type, float32/float64 as float/double, arrays as typed .NET arrays. The
/// accessors here accept any integer width, because writers differ (token_type is int32 in llama.cpp's files, some
/// tools write uint32; ids are uint32 or int32).
/// </summary>
internal static class GgufTokenizerMetadata
{
    public const string ModelKey = "tokenizer.ggml.model";
    public const string TokensKey = "tokenizer.ggml.tokens";
    public const string ScoresKey = "tokenizer.ggml.scores";
    public const string TokenTypeKey = "tokenizer.ggml.token_type";
    public const string MergesKey = "tokenizer.ggml.merges";
    public const string BosKey = "tokenizer.ggml.bos_token_id";
    public const string EosKey = "tokenizer.ggml.eos_token_id";
    public const string EotKey = "tokenizer.ggml.eot_token_id";
    public const string EomKey = "tokenizer.ggml.eom_token_id";
    public const string UnknownKey = "tokenizer.ggml.unknown_token_id";
    public const string AddBosKey = "tokenizer.ggml.add_bos_token";
    public const string AddSpacePrefixKey = "tokenizer.ggml.add_space_prefix";
    public const string PreKey = "tokenizer.ggml.pre";

    public static ITextTokenizer CreateTokenizer(IReadOnlyDictionary<string, object> metadata, string source)
    {
        ArgumentNullException.ThrowIfNull(metadata);
        string kind = GetString(metadata, ModelKey, source)
                      ?? throw new ModelFormatException(source, $"{ModelKey} is missing: the file has no tokenizer");
        return kind switch
        {
            "llama" => SentencePieceTextTokenizer.FromVocabulary(ReadSentencePiece(metadata, source), source,
                GetBool(metadata, AddBosKey, source) ?? true, ExtraEndIds(metadata, source)),
            "gpt2" => ByteLevelBpeTextTokenizer.Create(ReadByteLevelBpe(metadata, source), source),
            _ => throw new ModelFormatException(source, $"{ModelKey} '{kind}' is not supported (expected 'llama' or 'gpt2')"),
        };
    }

    /// <summary>A "llama" vocabulary: sentencepiece pieces, scores and types.</summary>
    public static SentencePieceVocabulary ReadSentencePiece(IReadOnlyDictionary<string, object> metadata, string source)
    {
        string[] tokens = RequireTokens(metadata, source);
        float[] scores = GetFloats(metadata, ScoresKey, source) ?? new float[tokens.Length];
        SentencePieceTokenType[] types = GetTypes(metadata, tokens.Length, source);
        if (scores.Length != tokens.Length)
            throw new ModelFormatException(source, $"{ScoresKey} has {scores.Length} entries for {tokens.Length} tokens");
        var vocabulary = new SentencePieceVocabulary(tokens, scores, types,
            UnknownId: GetInt(metadata, UnknownKey, source) ?? 0,
            BosId: GetInt(metadata, BosKey, source) ?? 1,
            EosId: GetInt(metadata, EosKey, source) ?? 2,
            AddDummyPrefix: GetBool(metadata, AddSpacePrefixKey, source) ?? true,
            ByteFallback: types.Contains(SentencePieceTokenType.Byte));
        vocabulary.Validate(source);
        return vocabulary;
    }

    /// <summary>A "gpt2" vocabulary: byte-level tokens, merges, and the pre-tokenizer named by tokenizer.ggml.pre.</summary>
    public static ByteLevelBpeVocabulary ReadByteLevelBpe(IReadOnlyDictionary<string, object> metadata, string source)
    {
        string[] tokens = RequireTokens(metadata, source);
        SentencePieceTokenType[] types = GetTypes(metadata, tokens.Length, source);
        string? pre = GetString(metadata, PreKey, source);
        string regex = PreTokenizerPattern.FromGgufName(pre, source);

        string[] mergeStrings = Get(metadata, MergesKey) switch
        {
            null => throw new ModelFormatException(source, $"{MergesKey} is missing; a gpt2 vocabulary needs its merges"),
            string[] m => m,
            var other => throw WrongType(source, MergesKey, other, "string array"),
        };
        var merges = new List<(string, string)>(mergeStrings.Length);
        foreach (string m in mergeStrings)
        {
            int space = m.IndexOf(' ');
            if (space <= 0 || space == m.Length - 1 || m.IndexOf(' ', space + 1) >= 0)
                throw new ModelFormatException(source, $"{MergesKey}[{merges.Count}] '{m}' is not two symbols separated by one space");
            merges.Add((m[..space], m[(space + 1)..]));
        }

        // Control and user-defined entries are matched verbatim in the text (llama.cpp stores them as plain text,
        // not byte-level symbols); control ones are markers that decode to nothing.
        var added = new List<AddedToken>();
        var vocabTokens = new string?[tokens.Length];
        for (int id = 0; id < tokens.Length; id++)
        {
            switch (types[id])
            {
                case SentencePieceTokenType.Control:
                case SentencePieceTokenType.UserDefined:
                    added.Add(new AddedToken(id, tokens[id], types[id] == SentencePieceTokenType.Control));
                    break;
                case SentencePieceTokenType.Unused:
                case SentencePieceTokenType.Unknown:
                    break;
                default:
                    vocabTokens[id] = tokens[id];
                    break;
            }
        }

        int? bos = GetInt(metadata, BosKey, source);
        var eos = new List<int>();
        if (GetInt(metadata, EosKey, source) is int e) eos.Add(e);
        foreach (int id in ExtraEndIds(metadata, source))
            if (!eos.Contains(id)) eos.Add(id);
        // llama.cpp's defaults per pre-tokenizer: Llama 3 prepends BOS and takes whole-word vocabulary hits before
        // merging (ignore_merges); Qwen2 has neither.
        bool llama3 = pre is "llama-bpe" or "llama3";
        bool addBos = GetBool(metadata, AddBosKey, source) ?? llama3;
        var vocabulary = new ByteLevelBpeVocabulary(vocabTokens, merges, added, regex, bos, eos, addBos,
            IgnoreMerges: llama3);
        vocabulary.Validate(source);
        return vocabulary;
    }

    // ------------------------------------------------------------------------------------------------ accessors

    private static IEnumerable<int> ExtraEndIds(IReadOnlyDictionary<string, object> metadata, string source)
    {
        // End-of-turn and end-of-message also end generation (Llama 3 instruct emits <|eot_id|>, not EOS).
        if (GetInt(metadata, EotKey, source) is int eot) yield return eot;
        if (GetInt(metadata, EomKey, source) is int eom) yield return eom;
    }

    private static string[] RequireTokens(IReadOnlyDictionary<string, object> metadata, string source) =>
        Get(metadata, TokensKey) switch
        {
            null => throw new ModelFormatException(source, $"{TokensKey} is missing"),
            string[] { Length: 0 } => throw new ModelFormatException(source, $"{TokensKey} is empty"),
            string[] t => t,
            var other => throw WrongType(source, TokensKey, other, "string array"),
        };

    private static SentencePieceTokenType[] GetTypes(IReadOnlyDictionary<string, object> metadata, int count, string source)
    {
        object? value = Get(metadata, TokenTypeKey);
        if (value is null)
            return Enumerable.Repeat(SentencePieceTokenType.Normal, count).ToArray();
        long[] raw = ToLongs(value) ?? throw WrongType(source, TokenTypeKey, value, "integer array");
        if (raw.Length != count)
            throw new ModelFormatException(source, $"{TokenTypeKey} has {raw.Length} entries for {count} tokens");
        var types = new SentencePieceTokenType[count];
        for (int i = 0; i < count; i++)
        {
            if (raw[i] is < 1 or > 6)
                throw new ModelFormatException(source, $"{TokenTypeKey}[{i}] is {raw[i]}, not a token type 1..6");
            types[i] = (SentencePieceTokenType)raw[i];
        }
        return types;
    }

    private static float[]? GetFloats(IReadOnlyDictionary<string, object> metadata, string key, string source) =>
        Get(metadata, key) switch
        {
            null => null,
            float[] f => f,
            double[] d => Array.ConvertAll(d, x => (float)x),
            var other => throw WrongType(source, key, other, "float array"),
        };

    private static string? GetString(IReadOnlyDictionary<string, object> metadata, string key, string source) =>
        Get(metadata, key) switch
        {
            null => null,
            string s => s,
            var other => throw WrongType(source, key, other, "string"),
        };

    private static bool? GetBool(IReadOnlyDictionary<string, object> metadata, string key, string source) =>
        Get(metadata, key) switch
        {
            null => null,
            bool b => b,
            var other => throw WrongType(source, key, other, "bool"),
        };

    private static int? GetInt(IReadOnlyDictionary<string, object> metadata, string key, string source)
    {
        object? value = Get(metadata, key);
        if (value is null) return null;
        long? v = value switch
        {
            byte x => x, sbyte x => x, ushort x => x, short x => x, uint x => x, int x => x, long x => x,
            ulong x => x <= int.MaxValue ? (long)x : long.MaxValue,
            _ => null,
        };
        if (v is null) throw WrongType(source, key, value, "integer");
        if (v is < int.MinValue or > int.MaxValue)
            throw new ModelFormatException(source, $"{key} = {v} does not fit a token id");
        return (int)v.Value;
    }

    private static long[]? ToLongs(object value) => value switch
    {
        int[] a => Array.ConvertAll(a, x => (long)x),
        uint[] a => Array.ConvertAll(a, x => (long)x),
        long[] a => a,
        ulong[] a => Array.ConvertAll(a, x => x > long.MaxValue ? -1 : (long)x),
        short[] a => Array.ConvertAll(a, x => (long)x),
        ushort[] a => Array.ConvertAll(a, x => (long)x),
        sbyte[] a => Array.ConvertAll(a, x => (long)x),
        byte[] a => Array.ConvertAll(a, x => (long)x),
        _ => null,
    };

    private static object? Get(IReadOnlyDictionary<string, object> metadata, string key) =>
        metadata.TryGetValue(key, out object? value) ? value : null;

    private static ModelFormatException WrongType(string source, string key, object value, string expected) =>
        new(source, $"{key} is a {value.GetType().Name}, expected {expected}");
}
