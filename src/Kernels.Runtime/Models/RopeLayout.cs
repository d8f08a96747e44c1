// The one place that converts adjacent-pair RoPE weights (llama2.c, GGUF llama) to Hugging Face's rotate-half order.
namespace Kernels.Runtime.Models;

public static unsafe class RopeLayout
{
    /// <summary>
    /// llama2.c and GGML rotate pairs (2i, 2i+1) of each head; transformers rotates (i, i + d/2). Rotating the rows
    /// of Wq/Wk (and bias) within each head from order [0,1,2,3,...] to [0,2,4,...,1,3,5,...] makes one follow the
    /// other exactly (the dot products q.k are unchanged because both sides are permuted the same way). Writes the
    /// permuted copy as F32 into new owned storage.
    /// </summary>
    public static WeightTensor AdjacentPairsToHalves(WeightTensor w, int heads, int headDim, List<IDisposable> owners)
    {
        int cols = w.Shape.Length == 1 ? 1 : w.Columns;
        int rows = w.Shape.Length == 1 ? (int)w.ElementCount : w.Rows;
        if (rows != heads * headDim)
            throw new ModelFormatException(w.Name, $"has {rows} rows, expected heads*head_dim = {heads * headDim}");
        var storage = new OwnedStorage((long)rows * cols * sizeof(float));
        owners.Add(storage);
        var dst = new Span<float>(storage.Pointer, rows * cols);
        var row = new float[cols];
        int half = headDim / 2;
        var src = w.Shape.Length == 1 ? w.ToFloatArray() : null;
        for (int h = 0; h < heads; h++)
        {
            for (int i = 0; i < headDim; i++)
            {
                // destination row j takes source row 2j (first half) or 2(j-half)+1 (second half)
                int srcRow = h * headDim + (i < half ? 2 * i : 2 * (i - half) + 1);
                int dstRow = h * headDim + i;
                if (src != null) dst[dstRow] = src[srcRow];
                else
                {
                    w.ReadRow(srcRow, row);
                    row.CopyTo(dst.Slice(dstRow * cols, cols));
                }
            }
        }
        return new WeightTensor(w.Name, TensorDType.F32, w.Shape, storage.Pointer);
    }
}
