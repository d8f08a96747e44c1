// Synthetic models in the quantized formats with random but valid stored tensors: GPU decode throughput at the 8B shape
// (issue 18's W4A8 / SqueezeLLM vs fp16 tables), where running the real quantizers over 8B weights would take long and
// the values do not change the kernels' speed. Correctness is checked on really quantized models elsewhere.
using System.Text.Json.Nodes;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Quantization.SqueezeLlm;
using Kernels.Runtime.Quantization.W4A8;

namespace Kernels.Runtime.Quantization;

internal static unsafe class SyntheticQuantizedModels
{
    /// <summary>SqueezeLLM's default outlier share (the paper's 0.45 %), per row here.</summary>
    public const double OutlierPercent = SqueezeLlmSettings.DefaultSparsityPercent;

    /// <summary><paramref name="model"/> ("synthetic:llama3-8b") with W4A8 projections (group <paramref name="groupSize"/>, 0 = per channel).</summary>
    public static LoadedModel W4A8(string model, int groupSize = QoqQuantizer.DefaultGroupSize, int seed = 1234) =>
        SyntheticModels.Create(model, seed, (W4A8Writer(groupSize), Config(W4A8Method.MethodName, ("group_size", groupSize)), groupSize > 0 ? $"W4A8 g{groupSize}" : "W4A8 per-channel"));

    /// <summary><paramref name="model"/> with SqueezeLLM <paramref name="bits"/>-bit projections and 0.45 % outliers per row.</summary>
    public static LoadedModel SqueezeLlm(string model, int bits, int seed = 1234) =>
        SyntheticModels.Create(model, seed, (SqueezeWriter(bits), Config(SqueezeLlmMethod.MethodName, ("bits", bits)), $"SqueezeLLM {bits}-bit"));

    /// <summary>One random SqueezeLLM layer's stored tensors (also the squeeze-gpu timings' layers).</summary>
    public static IReadOnlyList<WeightTensor> SqueezeLlmLayer(string name, int n, int k, int bits, Random rng, List<IDisposable> owners) =>
        SqueezeWriter(bits)(name, n, k, rng, owners);

    private static QuantizationConfig Config(string method, (string Key, int Value) parameter) =>
        new(new JsonObject { ["quant_method"] = method, [parameter.Key] = parameter.Value }, "synthetic");

    private static WeightTensor Tensor(string name, TensorDType dtype, long[] shape, List<IDisposable> owners, out byte* data)
    {
        long bytes = dtype.ByteCount(shape.Aggregate(1L, (a, b) => a * b));
        var storage = new OwnedStorage(Math.Max(1, bytes));
        owners.Add(storage);
        data = storage.Pointer;
        return new WeightTensor(name, dtype, shape, storage.Pointer);
    }

    private static SyntheticLinearWriter W4A8Writer(int groupSize) => (name, n, k, rng, owners) =>
    {
        int nPad = W4A8Layout.Padded(n), kPad = W4A8Layout.Padded(k), group = W4A8Method.GroupFor(groupSize, k);
        var result = new List<WeightTensor>();
        result.Add(Tensor($"{name}.{W4A8Linear.QWeight}", TensorDType.I8, [nPad, kPad / 2], owners, out byte* codes));
        rng.NextBytes(new Span<byte>(codes, nPad * (kPad / 2)));
        result.Add(Tensor($"{name}.{W4A8Linear.ChannelScales}", TensorDType.F16, [n], owners, out byte* scales));
        for (int r = 0; r < n; r++) ((Half*)scales)[r] = (Half)(0.0005 + 0.0015 * rng.NextDouble());
        if (group > 0)
        {
            int groups = k / group;
            result.Add(Tensor($"{name}.{W4A8Linear.GroupScales}", TensorDType.I8, [groups, nPad], owners, out byte* s2));
            result.Add(Tensor($"{name}.{W4A8Linear.GroupZeros}", TensorDType.I8, [groups, nPad], owners, out byte* z2));
            for (long i = 0; i < (long)groups * nPad; i++)
            {
                int s1 = rng.Next(1, 18), z = rng.Next(0, 16);
                s2[i] = (byte)s1;
                z2[i] = (byte)(-(z * s1) & 0xFF); // stored -z*s1 modulo 256 (W4A8Linear)
            }
        }
        else
        {
            result.Add(Tensor($"{name}.{W4A8Linear.ChannelZeros}", TensorDType.U8, [n], owners, out byte* zeros));
            for (int r = 0; r < n; r++) zeros[r] = (byte)rng.Next(0, 16);
        }
        return result;
    };

    private static SyntheticLinearWriter SqueezeWriter(int bits) => (name, n, k, rng, owners) =>
    {
        SqueezeLlmCodes.CheckBits(bits);
        int words = SqueezeLlmCodes.WordsPerRow(k, bits), size = 1 << bits;
        var result = new List<WeightTensor>();
        result.Add(Tensor($"{name}.{SqueezeLlmLinear.CodesSuffix}", TensorDType.I32, [n, words], owners, out byte* codes));
        if (k % SqueezeLlmCodes.BlockCodes == 0) rng.NextBytes(new Span<byte>(codes, checked(n * words * 4)));
        else
        {
            var row = new byte[k];
            for (int r = 0; r < n; r++)
            {
                for (int c = 0; c < k; c++) row[c] = (byte)rng.Next(size);
                SqueezeLlmCodes.Pack(row, bits, new Span<int>(codes + (long)r * words * 4, words)); // padding codes 0, as Pack writes them
            }
        }
        result.Add(Tensor($"{name}.{SqueezeLlmLinear.TableSuffix}", TensorDType.F16, [n, size], owners, out byte* table));
        var entries = new float[size];
        for (int r = 0; r < n; r++)
        {
            for (int i = 0; i < size; i++) entries[i] = (float)(rng.NextDouble() * 0.2 - 0.1);
            Array.Sort(entries);
            for (int i = 0; i < size; i++) ((Half*)table)[(long)r * size + i] = (Half)entries[i];
        }
        int perRow = Math.Min(k, (int)Math.Round(k * OutlierPercent / 100));
        long nnz = (long)n * perRow;
        result.Add(Tensor($"{name}.{SqueezeLlmLinear.OutlierRowsSuffix}", TensorDType.I32, [n + 1L], owners, out byte* rowsPtr));
        result.Add(Tensor($"{name}.{SqueezeLlmLinear.OutlierColsSuffix}", TensorDType.I32, [nnz], owners, out byte* colsPtr));
        result.Add(Tensor($"{name}.{SqueezeLlmLinear.OutlierValuesSuffix}", TensorDType.F32, [nnz], owners, out byte* valuesPtr));
        int* rowStart = (int*)rowsPtr, cols = (int*)colsPtr;
        float* values = (float*)valuesPtr;
        var chosen = new SortedSet<int>();
        for (int r = 0; r < n; r++)
        {
            chosen.Clear();
            while (chosen.Count < perRow) chosen.Add(rng.Next(k));
            long e = (long)r * perRow;
            rowStart[r] = (int)e;
            foreach (int c in chosen)
            {
                cols[e] = c;
                values[e++] = (float)(rng.NextDouble() * 2 - 1);
            }
        }
        rowStart[n] = (int)nnz;
        return result;
    };
}
