// The regexes byte-level BPE tokenizers split text with before merging, and the GGUF names that select them.
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Tokenization;

/// <summary>
/// Pre-tokenizer regexes. BPE merges never cross a match boundary, so the regex is part of the tokenizer's
/// definition: the wrong one silently produces different ids. Hugging Face files carry the regex itself; GGUF
/// carries only a name (<c>tokenizer.ggml.pre</c>), which <see cref="FromGgufName"/> maps to the regex llama.cpp
/// uses for it.
/// </summary>
internal static class PreTokenizerPattern
{
    /// <summary>GPT-2's (also ByteLevel's default when <c>use_regex</c> is true).</summary>
    public const string Gpt2 =
        @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>Llama 3's: digits in groups of up to three, case-insensitive contractions.</summary>
    public const string Llama3 =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>Qwen2's: as Llama 3 but every digit is its own piece.</summary>
    public const string Qwen2 =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>Maps <c>tokenizer.ggml.pre</c> to its regex; a name we have not verified is an error, not a guess.</summary>
    public static string FromGgufName(string? name, string source) => name switch
    {
        "llama-bpe" or "llama3" => Llama3,
        "qwen2" => Qwen2,
        "gpt-2" => Gpt2,
        null => throw new ModelFormatException(source,
            "tokenizer.ggml.pre is missing; a gpt2 vocabulary needs it to choose the pre-tokenizer regex"),
        _ => throw new ModelFormatException(source,
            $"tokenizer.ggml.pre '{name}' is not supported (known: llama-bpe, qwen2, gpt-2)"),
    };
}
