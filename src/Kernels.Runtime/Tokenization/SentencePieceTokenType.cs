// The kind of each vocabulary entry, numbered as in sentencepiece_model.proto and GGUF's tokenizer.ggml.token_type.
namespace Kernels.Runtime.Tokenization;

/// <summary>
/// Token kinds. The values are the wire values of sentencepiece's <c>SentencePiece.Type</c>, which GGUF reuses for
/// <c>tokenizer.ggml.token_type</c> for every vocabulary kind, so one enum serves both formats without a mapping table.
/// </summary>
internal enum SentencePieceTokenType
{
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}
