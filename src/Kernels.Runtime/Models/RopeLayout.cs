// The one place that converts adjacent-pair RoPE weights (llama2.c, GGUF llama) to Hugging Face's rotate-half order.
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

internal static unsafe class RopeLayout
{
    /// <summary>
    /// llama2.c and GGML rotate pairs (2i, 2i+1) of each head; transformers rotates (i, i + d/2). Reordering the rows
    /// of Wq/Wk (and their bias) within each head from [0,1,2,3,...] to [0,2,4,...,1,3,5,...] makes one compute
    /// exactly what the other does (q.k is unchanged because both sides are permuted the same way). Rows are copied
    /// byte for byte in the stored dtype (a row of a GGML block type is whole blocks) into new owned storage.
    /// </summary>
    public static WeightTensor AdjacentPairsToHalves(WeightTensor w, int heads, int headDim, List<IDisposable> owners)
    {
        bool vector = w.Shape.Length == 1;
        int rows = vector ? (int)w.ElementCount : w.Rows;
        if ((long)rows != (long)heads * headDim)
            throw new ModelFormatException(w.Name, $"has {rows} rows, expected heads*head_dim = {(long)heads * headDim}");
        if (vector && w.DType.IsBlockQuantized())
            throw new ModelFormatException(w.Name, $"a {w.DType.Name()} bias vector cannot be reordered element by element");
        long rowBytes = w.DType.ByteCount(vector ? 1 : w.Columns);
        var storage = new OwnedStorage(rowBytes * rows);
        owners.Add(storage);
        int half = headDim / 2;
        for (int h = 0; h < heads; h++)
        {
            for (int i = 0; i < headDim; i++)
            {
                // destination row i takes source row 2i (first half) or 2(i - half) + 1 (second half)
                int srcRow = h * headDim + (i < half ? 2 * i : 2 * (i - half) + 1);
                int dstRow = h * headDim + i;
                Buffer.MemoryCopy(w.Data + srcRow * rowBytes, storage.Pointer + dstRow * rowBytes, rowBytes, rowBytes);
            }
        }
        return new WeightTensor(w.Name, w.DType, w.Shape, storage.Pointer);
    }
}
