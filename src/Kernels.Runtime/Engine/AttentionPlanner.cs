// Groups a step's sequences by the KV blocks they share (the prefix tree as it stands in their block tables) into
// Hydragen levels: each maximal run of blocks shared by the same set of sequences becomes one level.
using Kernels.Runtime.Backends;
using Kernels.Runtime.KvCache;

namespace Kernels.Runtime.Engine;

internal static class AttentionPlanner
{
    private sealed class TrieNode
    {
        public readonly Dictionary<int, TrieNode> Children = new();
        public readonly List<int> Sequences = new();
    }

    /// <summary>
    /// Builds the plan for a batch: a trie over each sequence's full, already-written blocks (by physical block id);
    /// a chain of trie nodes walked by the same k >= <paramref name="minShare"/> sequences is one level. Sharing is
    /// a property of the block tables, so n samples of a prompt, common system prompts and few-shot headers all
    /// group the same way, with levels nested as deep as the sharing goes.
    /// </summary>
    /// <remarks>
    /// minShare 2 is measured, not guessed: on the 2-core CPU a group of two already gains 1.05-1.13x per decode step
    /// (synthetic:small, prefix 256-1024, kernels-bench prefix --batch 2). The GPU crossover is for its kernels to set.
    /// </remarks>
    public static AttentionPlan Build(IReadOnlyList<SequenceStep> batch, int minShare = 2)
    {
        var suffixStart = new int[batch.Count];
        var levels = new List<SharedLevel>();
        if (batch.Count < minShare) return new AttentionPlan(levels, suffixStart);
        var root = new TrieNode();
        int blockSize = 0;
        for (int s = 0; s < batch.Count; s++)
        {
            if (batch[s].Cache is not KvSequence seq) return AttentionPlan.None(batch.Count);
            blockSize = seq.Pool.BlockSize;
            int full = seq.Length / blockSize; // blocks entirely written before this step
            var node = root;
            for (int b = 0; b < full; b++)
            {
                if (!node.Children.TryGetValue(seq.Blocks[b], out var child)) node.Children[seq.Blocks[b]] = child = new TrieNode();
                child.Sequences.Add(s);
                node = child;
            }
        }

        void Expand(TrieNode first, int depth)
        {
            var members = first.Sequences;
            var node = first;
            int end = depth + 1;
            while (node.Children.Count == 1 && node.Children.Values.First().Sequences.Count == members.Count)
            {
                node = node.Children.Values.First();
                end++;
            }
            levels.Add(new SharedLevel(depth * blockSize, end * blockSize, members.ToArray()));
            foreach (int s in members) suffixStart[s] = end * blockSize;
            foreach (var child in node.Children.Values)
                if (child.Sequences.Count >= minShare) Expand(child, end);
        }
        foreach (var child in root.Children.Values)
            if (child.Sequences.Count >= minShare) Expand(child, 0);
        return new AttentionPlan(levels, suffixStart);
    }
}
