// The shape and hyper-parameters of a Llama-family model, independent of the file format it came from.
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Tokenization;

namespace Kernels.Runtime.Models;

public enum ModelArchitecture
{
    Llama,
    Mistral,
    Qwen2,
}

public enum RopeScalingType
{
    None,
    /// <summary>Position interpolation: every inverse frequency divided by the factor.</summary>
    Linear,
    /// <summary>Llama 3.1: low frequencies divided by the factor, high kept, a smooth ramp between.</summary>
    Llama3,
}

public sealed record RopeScaling(
    RopeScalingType Type,
    double Factor = 1.0,
    double LowFreqFactor = 1.0,
    double HighFreqFactor = 4.0,
    int OriginalMaxPositions = 8192);

public sealed record ModelConfig
{
    public required ModelArchitecture Architecture { get; init; }
    public required int HiddenSize { get; init; }
    public required int IntermediateSize { get; init; }
    public required int NumLayers { get; init; }
    public required int NumHeads { get; init; }
    public required int NumKvHeads { get; init; }
    public required int HeadDim { get; init; }
    public required int VocabSize { get; init; }
    public required int MaxPositions { get; init; }
    public double RmsNormEps { get; init; } = 1e-5;
    public double RopeTheta { get; init; } = 10000.0;
    public RopeScaling RopeScaling { get; init; } = new(RopeScalingType.None);
    /// <summary>
    /// transformers keeps RoPE's inv_freq buffer in the checkpoint's dtype when it loads a bf16/f16 model, so its
    /// rotation angles are those of the rounded frequencies (logits move by ~1e-3 at 30 positions otherwise). HF
    /// checkpoints set this from config.json's dtype to reproduce transformers exactly; other formats keep fp32.
    /// </summary>
    public TensorDType RopeInvFreqDType { get; init; } = TensorDType.F32;
    /// <summary>Per-frequency divisors stored by llama.cpp for Llama 3.1 (rope_freqs.weight); applied after scaling.</summary>
    public float[]? RopeFrequencyFactors { get; init; }
    public bool TieWordEmbeddings { get; init; }
    /// <summary>Biases on the q, k and v projections (Qwen2).</summary>
    public bool AttentionBias { get; init; }
    /// <summary>Keys older than this many positions are not attended to (Mistral v0.1); null = full attention.</summary>
    public int? SlidingWindow { get; init; }
    public int? BosTokenId { get; init; }
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];

    /// <summary>
    /// Limits far above any real model, so that corrupt headers cannot overflow sizes computed from them nor make a
    /// loader allocate by a forged count (the largest real models: ~128 layers, 256K vocabulary, 10M context).
    /// </summary>
    public const int MaxHeadDim = 1024;
    public const int MaxWidth = 1 << 20;
    public const int MaxLayers = 1024;
    public const int MaxVocab = ITextTokenizer.MaxVocab;
    public const int MaxContext = 1 << 24;

    public int QueryDim => NumHeads * HeadDim;
    public int KvDim => NumKvHeads * HeadDim;
    public int GqaGroup => NumHeads / NumKvHeads;

    /// <summary>
    /// Throws a <see cref="ModelFormatException"/> naming <paramref name="source"/>, the field (by its Hugging Face
    /// name) and its value when the shape is inconsistent or a number the math needs positive and finite is not.
    /// Readers check their own fields under their own names first; this is the backstop every format shares.
    /// </summary>
    public void Validate(string source)
    {
        void Require(bool ok, string problem)
        {
            if (!ok) throw new ModelFormatException(source, problem);
        }
        void Range(string field, long value, long min, long max) =>
            Require(value >= min && value <= max, $"{field} = {value} is outside {min}..{max}");
        void PositiveFinite(string field, double value) =>
            Require(double.IsFinite(value) && value > 0, $"{field} = {FieldValues.Format(value)} must be a positive finite number");

        Range("hidden_size", HiddenSize, 1, MaxWidth);
        Range("intermediate_size", IntermediateSize, 1, MaxWidth);
        Range("num_hidden_layers", NumLayers, 1, MaxLayers);
        Range("vocab_size", VocabSize, 1, MaxVocab);
        Range("num_attention_heads", NumHeads, 1, MaxWidth);
        Range("num_key_value_heads", NumKvHeads, 1, NumHeads);
        Require(NumHeads % NumKvHeads == 0, $"num_attention_heads ({NumHeads}) is not a multiple of num_key_value_heads ({NumKvHeads})");
        Require(HeadDim > 0 && HeadDim % 2 == 0 && HeadDim <= MaxHeadDim, $"head_dim = {HeadDim} must be even, between 2 and {MaxHeadDim}");
        Require((long)NumHeads * HeadDim <= MaxWidth && (long)NumKvHeads * HeadDim <= MaxWidth,
            $"layer widths (heads x head_dim = {(long)NumHeads * HeadDim}) exceed {MaxWidth}");
        Require(SlidingWindow is null or > 0, $"sliding_window = {SlidingWindow} must be positive");
        Range("max_position_embeddings", MaxPositions, 1, MaxContext);
        PositiveFinite("rms_norm_eps", RmsNormEps);
        PositiveFinite("rope_theta", RopeTheta);
        var s = RopeScaling;
        if (s.Type != RopeScalingType.None) PositiveFinite("rope_scaling.factor", s.Factor);
        if (s.Type == RopeScalingType.Llama3)
        {
            // transformers divides by (high - low) and by both factors: each must be positive, high above low.
            PositiveFinite("rope_scaling.low_freq_factor", s.LowFreqFactor);
            PositiveFinite("rope_scaling.high_freq_factor", s.HighFreqFactor);
            Require(s.HighFreqFactor > s.LowFreqFactor,
                $"rope_scaling.high_freq_factor = {FieldValues.Format(s.HighFreqFactor)} must exceed low_freq_factor = {FieldValues.Format(s.LowFreqFactor)}");
            Range("rope_scaling.original_max_position_embeddings", s.OriginalMaxPositions, 1, MaxContext);
        }
        if (RopeFrequencyFactors is { } factors)
        {
            Require(factors.Length == HeadDim / 2, $"rope frequency factors: {factors.Length} of them, head_dim / 2 is {HeadDim / 2}");
            for (int i = 0; i < factors.Length; i++)
                Require(float.IsFinite(factors[i]) && factors[i] > 0, $"rope frequency factor [{i}] = {FieldValues.Format(factors[i])} must be a positive finite number");
        }
    }

    public long ParameterCount =>
        (long)VocabSize * HiddenSize * (TieWordEmbeddings ? 1 : 2)
        + NumLayers * ((long)HiddenSize * (QueryDim + 2 * KvDim) + (long)QueryDim * HiddenSize
                       + 3L * HiddenSize * IntermediateSize + 2L * HiddenSize)
        + HiddenSize;
}
