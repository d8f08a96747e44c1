// How one step's attention is split: shared prefix levels (keys read once for many sequences) plus each suffix.
namespace Kernels.Runtime.Backends;

/// <summary>
/// Keys at positions [Start, End) held in the same physical KV blocks by every sequence in <see cref="Sequences"/>
/// (indices into the step's batch), all of them before the step's new tokens: every member's query rows attend to
/// them without a causal mask.
/// </summary>
internal sealed record SharedLevel(int Start, int End, int[] Sequences);

/// <summary>
/// Levels of a prefix tree, parents before children; for each sequence the levels it belongs to tile [0,
/// SuffixStart[s]), and its own keys from SuffixStart[s] to its end are attended causally per sequence. The partial
/// results are merged exactly through their log-sum-exp (natural log).
/// </summary>
internal sealed record AttentionPlan(IReadOnlyList<SharedLevel> Levels, int[] SuffixStart)
{
    public static AttentionPlan None(int sequences) => new([], new int[sequences]);
}
