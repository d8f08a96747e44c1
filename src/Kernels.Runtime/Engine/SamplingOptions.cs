// How the next token is chosen: greedy or sampled, with the usual filters, penalties and an optional seed.
namespace Kernels.Runtime.Engine;

public sealed record SamplingOptions
{
    /// <summary>0 picks the most likely token (greedy); otherwise logits are divided by it before sampling.</summary>
    public float Temperature { get; init; }
    /// <summary>Keep only the K most likely tokens; 0 = off.</summary>
    public int TopK { get; init; }
    /// <summary>Keep the smallest set of most likely tokens whose probability reaches P; 1 = off.</summary>
    public float TopP { get; init; } = 1f;
    /// <summary>Drop tokens less likely than MinP times the most likely one; 0 = off.</summary>
    public float MinP { get; init; }
    /// <summary>transformers' rule: seen tokens' positive logits divided by R, negative multiplied; 1 = off.</summary>
    public float RepetitionPenalty { get; init; } = 1f;
    /// <summary>Same seed, same tokens, whatever else runs in the batch; null = a fresh random seed.</summary>
    public ulong? Seed { get; init; }

    public static SamplingOptions Greedy { get; } = new();

    public bool IsGreedy => Temperature <= 0f;

    /// <summary>This step's draw for a backend: these options with the coin, the penalized tokens and what to score.</summary>
    internal Backends.TokenChoice Choice(IReadOnlySet<int>? seen, double coin, int vocab = 0, int logprobs = -1) => new()
    {
        Temperature = Temperature, TopK = TopK, TopP = TopP, MinP = MinP, RepetitionPenalty = RepetitionPenalty,
        Seen = seen, Coin = coin, Vocab = vocab, Logprobs = logprobs,
    };

    /// <summary>Throws RequestValidationException naming the option when a value is out of range.</summary>
    public void Validate()
    {
        if (!(Temperature >= 0) || float.IsInfinity(Temperature)) throw new RequestValidationException(nameof(Temperature), $"must be >= 0, got {Temperature}");
        if (TopK < 0) throw new RequestValidationException(nameof(TopK), $"must be >= 0, got {TopK}");
        if (!(TopP > 0 && TopP <= 1)) throw new RequestValidationException(nameof(TopP), $"must be in (0, 1], got {TopP}");
        if (!(MinP >= 0 && MinP <= 1)) throw new RequestValidationException(nameof(MinP), $"must be in [0, 1], got {MinP}");
        if (!(RepetitionPenalty > 0) || float.IsInfinity(RepetitionPenalty)) throw new RequestValidationException(nameof(RepetitionPenalty), $"must be > 0, got {RepetitionPenalty}");
    }
}
