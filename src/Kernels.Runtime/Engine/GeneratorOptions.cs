// What the scheduler may do in one step (prefill budget, batch size) and whether it shares prompt prefixes.
namespace Kernels.Runtime.Engine;

public sealed record GeneratorOptions
{
    /// <summary>Most prompt tokens run through one forward step (bounds activation memory; longer prompts are chunked).</summary>
    public int PrefillTokenBudget { get; init; } = 2048;

    /// <summary>
    /// Share KV blocks of common prompt prefixes (prefill once, cached across requests) and attend to them once per
    /// step for all sharers (Hydragen). Off: every sequence holds and attends to its own copy (the baseline).
    /// </summary>
    public bool PrefixSharing { get; init; } = true;

    /// <summary>
    /// Most sequences (samples, prefills) in one step, as vLLM's max_num_seqs: bounds a step's time, and is what
    /// admission shares fairly between groups of requests (see <see cref="Scheduler"/>).
    /// </summary>
    public int MaxBatchSequences { get; init; } = 256;
}
