// Embedding gather, reference for kernels/ops embedding_gather: out[t, :] = table[ids[t], :] as fp32.
using System.Runtime.CompilerServices;
using Kernels.Runtime.Models;

namespace Kernels.Runtime.Backends.Cpu;

internal static class Embedding
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Gather(WeightTensor table, ReadOnlySpan<int> ids, Span<float> output)
    {
        int d = table.Columns;
        for (int t = 0; t < ids.Length; t++)
        {
            if ((uint)ids[t] >= (uint)table.Rows)
                throw new ArgumentOutOfRangeException(nameof(ids), ids[t], $"token id outside the vocabulary of {table.Rows}");
            table.ReadRow(ids[t], output.Slice(t * d, d));
        }
    }
}
