// The one entry point that turns tokenizer files or GGUF metadata into an ITextTokenizer.
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Tokenization;

/// <summary>
/// Picks the tokenizer implementation from the input's format. Every bad input (missing file, malformed content,
/// unsupported tokenizer kind) surfaces as <see cref="ModelFormatException"/> naming the file or source.
/// </summary>
internal static class TokenizerLoader
{
    /// <summary>A sentencepiece <c>tokenizer.model</c> (serialized ModelProto, BPE).</summary>
    public static ITextTokenizer FromSentencePieceModel(string path)
    {
        byte[] bytes = ReadFile(path, "sentencepiece model");
        return SentencePieceTextTokenizer.FromModelProto(bytes, path);
    }

    /// <summary>A llama2.c <c>tok*.bin</c>; encodes exactly like run.c (BOS = 1 prepended by default, EOS = 2).</summary>
    public static ITextTokenizer FromLlama2cFile(string path) =>
        SentencePieceTextTokenizer.FromVocabulary(Llama2cTokenizerFile.Read(path), path, addBosByDefault: true);

    /// <summary>
    /// A Hugging Face <c>tokenizer.json</c> with a byte-level BPE model (Llama 3, Qwen2). Sibling
    /// tokenizer_config.json, config.json and generation_config.json, when present, supply BOS/EOS and add_bos.
    /// </summary>
    public static ITextTokenizer FromHfTokenizerJson(string path) =>
        ByteLevelBpeTextTokenizer.Create(HfTokenizerJson.Read(path), path);

    /// <summary>
    /// The tokenizer stored in GGUF metadata (<c>tokenizer.ggml.*</c>): "llama" (sentencepiece) or "gpt2"
    /// (byte-level BPE). <paramref name="sourceName"/> names the GGUF file in error messages.
    /// </summary>
    public static ITextTokenizer FromGgufMetadata(IReadOnlyDictionary<string, object> metadata, string sourceName) =>
        GgufTokenizerMetadata.CreateTokenizer(metadata, sourceName);

    /// <summary>
    /// A Hugging Face model folder: tokenizer.json when it holds a byte-level BPE, else tokenizer.model. A
    /// tokenizer.json in sentencepiece style (Llama 2's Metaspace + byte fallback) defers to tokenizer.model, which
    /// encodes that vocabulary with its real scores.
    /// </summary>
    public static ITextTokenizer ForModelDirectory(string dir)
    {
        if (!Directory.Exists(dir))
            throw new ModelFormatException(dir, "model directory does not exist");
        string json = Path.Combine(dir, "tokenizer.json");
        string model = Path.Combine(dir, "tokenizer.model");
        if (File.Exists(json) && (!File.Exists(model) || HfTokenizerJson.IsByteLevelBpe(json)))
            return FromHfTokenizerJson(json);
        if (File.Exists(model))
            return FromSentencePieceModel(model);
        throw new ModelFormatException(dir, "no tokenizer found: expected tokenizer.json or tokenizer.model");
    }

    /// <summary>Largest tokenizer file read (real ones are at most tens of megabytes); a larger one is refused before it is read.</summary>
    public const long MaxFileBytes = 256L << 20;

    internal static byte[] ReadFile(string path, string what)
    {
        try
        {
            long length = new FileInfo(path).Length;
            if (length > MaxFileBytes)
                throw new ModelFormatException(path, $"the {what} is {length} bytes; at most {MaxFileBytes} are read");
            return File.ReadAllBytes(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new ModelFormatException(path, $"cannot read the {what}: {ex.Message}", ex);
        }
    }
}
