// The CUDA backend's weights on the device: which dtype each tensor takes there, their places in one arena, the upload.
using Kernels.Interop;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Quantization.SqueezeLlm;
using Kernels.Runtime.Quantization.W4A8;

namespace Kernels.Runtime.Backends.Cuda;

/// <summary>
/// One arena for every weight, uploaded once: F16 matrices as stored, BF16 ones as F16 when that is exact, F32 and GGML
/// block (Q4_0..Q8_0, Q2_K..Q6_K) matrices converted to F16, or to BF16 when a value exceeds F16's range
/// (<see cref="MatrixTarget"/>); norm vectors and the embedding F32/F16/BF16 as stored (<see cref="VectorTarget"/>); a
/// bias in its matrix's dtype; W4A8 layers' codes, scales and zeros byte for byte in the kernel's layout. Two phases, because the memory plan needs the arena's size before anything is
/// allocated: <see cref="Place"/> decides dtypes and offsets (no driver call), <see cref="Upload"/> allocates the
/// arena, binds each tensor's typed view and copies the data.
/// </summary>
internal sealed unsafe class DeviceWeights : IDisposable
{
    private readonly List<(WeightTensor Source, TensorDType Target, long Offset)> _uploads;
    private readonly Dictionary<(WeightTensor, TensorDType), GpuTensor> _placed;
    private readonly List<GpuTensor> _joined;
    private DeviceBuffer<byte>? _arena;

    public GpuTensor Embedding { get; }
    public GpuTensor LmHead { get; }
    public GpuTensor FinalNorm { get; }
    public IReadOnlyList<GpuLayer> Layers { get; }
    /// <summary>Bytes the arena takes (each tensor aligned to <see cref="CudaMemoryPlan.Alignment"/>).</summary>
    public long ArenaBytes { get; }
    /// <summary>The weight dtypes on the device, e.g. "F16 x 225" (what was converted shows here).</summary>
    public string Formats { get; }
    /// <summary>The widest padded input of the W4A8 layers (0: none): the int8 activations' row in the step's scratch.</summary>
    public int MaxW4A8PaddedIn => Layers.SelectMany(l => new[] { l.Wq, l.Wk, l.Wv, l.Wo, l.Gate, l.Up, l.Down }).OfType<GpuW4A8>().Select(q => q.PaddedIn).DefaultIfEmpty(0).Max();

    /// <summary>The most output channels of a W4A8 layer (0: none): the split-K partial sums' row.</summary>
    public int MaxW4A8Out => Layers.SelectMany(l => new[] { l.Wq, l.Wk, l.Wv, l.Wo, l.Gate, l.Up, l.Down }).OfType<GpuW4A8>().Select(q => q.OutFeatures).DefaultIfEmpty(0).Max();

    /// <summary>Ints of the split-K decode GEMM's partial sums: every split of 16 rows of the widest W4A8 layer.</summary>
    public long W4A8SplitKInts => (long)OpsLaunchPlans.W4A8MaxSplits * OpsLaunchPlans.W4A8SmallMMax * MaxW4A8Out;

    /// <summary>Bytes of the W4A8 activation scratch for <paramref name="maxTokens"/> rows (codes, scales, sums) and the split-K partials.</summary>
    public long W4A8ScratchBytes(int maxTokens) =>
        MaxW4A8PaddedIn == 0 ? 0 : (long)maxTokens * (MaxW4A8PaddedIn + 8) + W4A8SplitKInts * sizeof(int) + 4 * CudaMemoryPlan.Alignment;

    private DeviceWeights(List<(WeightTensor, TensorDType, long)> uploads, Dictionary<(WeightTensor, TensorDType), GpuTensor> placed, List<GpuTensor> joined,
        long arenaBytes, GpuTensor embedding, GpuTensor lmHead, GpuTensor finalNorm, GpuLayer[] layers)
    {
        _uploads = uploads;
        _placed = placed;
        _joined = joined;
        ArenaBytes = arenaBytes;
        (Embedding, LmHead, FinalNorm, Layers) = (embedding, lmHead, finalNorm, layers);
        Formats = string.Join(", ", placed.Values.GroupBy(g => g.DType).Select(g => $"{g.Key.Name()} x {g.Count()}"));
    }

    /// <summary>Decides every tensor's device dtype and place in the arena (reads the weights; no driver call).</summary>
    public static DeviceWeights Place(LoadedModel model)
    {
        var c = model.Config;
        var uploads = new List<(WeightTensor Source, TensorDType Target, long Offset)>();
        var placed = new Dictionary<(WeightTensor, TensorDType), GpuTensor>(ReferenceEqualityPair.Instance);
        var joined = new List<GpuTensor>();
        long arena = 0;
        GpuTensor Place(WeightTensor t, TensorDType target)
        {
            if (placed.TryGetValue((t, target), out var g)) return g;
            // An empty tensor (a SqueezeLLM layer without outliers) gets a one-element slot and no upload: its view is a
            // valid pointer that nothing reads.
            g = new GpuTensor(t.Name, target, arena, Math.Max(1, t.ElementCount));
            if (t.ElementCount > 0) uploads.Add((t, target, arena));
            arena += CudaMemoryPlan.Align(target.ByteCount(Math.Max(1, t.ElementCount)));
            placed[(t, target)] = g;
            return g;
        }
        var w = model.Weights;
        var embedding = Place(w.Embedding, VectorTarget(w.Embedding));
        var layers = new GpuLayer[c.NumLayers];
        for (int l = 0; l < c.NumLayers; l++)
        {
            var lw = w.Layers[l];
            GpuLinear M(LinearWeight lin) => lin switch
            {
                DenseLinear d => new GpuDense(Place(d.Weight, MatrixTarget(d.Weight))),
                W4A8Linear q => new GpuW4A8(q.Name, q.OutFeatures, q.InFeatures, q.GroupSize, q.PaddedIn, Place(q.Codes, q.Codes.DType), Place(q.Scales, q.Scales.DType),
                    q.GroupScaleTensor is { } s2 ? Place(s2, s2.DType) : null, Place(q.ZeroTensor!, q.ZeroTensor!.DType)),
                SqueezeLlmLinear s => new GpuSqueeze(s.Name, s.OutFeatures, s.InFeatures, s.Bits, Place(s.Codes, s.Codes.DType), Place(s.LookupTable, s.LookupTable.DType),
                    Place(s.OutlierRows, s.OutlierRows.DType), Place(s.OutlierCols, s.OutlierCols.DType), Place(s.OutlierValues, s.OutlierValues.DType)),
                _ => throw new NotSupportedException($"{lin.Name} is {lin.Format}: not a format the CUDA backend runs (CudaBackend.WhyUnsupported)"),
            };
            // q, k, v (and below gate, up) placed one after the other: dense in one dtype with nothing padding between
            // them, their rows are one matrix, the fused projection's weight (GpuLayer.Qkv, GateUp).
            var wq = M(lw.Wq);
            var wk = M(lw.Wk);
            var wv = M(lw.Wv);
            var qkv = GpuTensor.Joined($"{lw.Wq.Name}|k|v", wq, wk, wv);
            if (qkv != null) joined.Add(qkv);
            TensorDType BiasType(GpuLinear m) => m is GpuDense d ? d.Weight.DType : TensorDType.F32;
            var wo = M(lw.Wo);
            var ffnNorm = Place(lw.FfnNorm, VectorTarget(lw.FfnNorm));
            var gate = M(lw.Gate);
            var up = M(lw.Up);
            var gateUp = GpuTensor.Joined($"{lw.Gate.Name}|up", gate, up);
            if (gateUp != null) joined.Add(gateUp);
            // The norms also in fp32 (the same tensor when stored so): the fused decode GEMVs fold them in from fp32.
            var attentionNorm32 = Place(lw.AttentionNorm, TensorDType.F32);
            var ffnNorm32 = Place(lw.FfnNorm, TensorDType.F32);
            layers[l] = new GpuLayer(Place(lw.AttentionNorm, VectorTarget(lw.AttentionNorm)), wq, wk, wv,
                lw.Bq == null ? null : Place(lw.Bq, BiasType(wq)), lw.Bk == null ? null : Place(lw.Bk, BiasType(wk)), lw.Bv == null ? null : Place(lw.Bv, BiasType(wv)),
                wo, ffnNorm, gate, up, M(lw.Down), qkv == null ? null : new GpuDense(qkv), gateUp == null ? null : new GpuDense(gateUp),
                attentionNorm32, ffnNorm32);
        }
        var finalNorm = Place(w.FinalNorm, VectorTarget(w.FinalNorm));
        var lmHead = Place(w.LmHead, MatrixTarget(w.LmHead));
        return new DeviceWeights(uploads, placed, joined, arena, embedding, lmHead, finalNorm, layers);
    }

    /// <summary>Allocates the arena on <paramref name="device"/>, binds every tensor's view and copies the weights (converted where placed so).</summary>
    public void Upload(CudaDevice device)
    {
        if (_arena != null) throw new InvalidOperationException("the weights are already on the device");
        _arena = DeviceBuffer<byte>.Allocate(device, Math.Max(ArenaBytes, CudaMemoryPlan.Alignment));
        foreach (var g in _placed.Values.Concat(_joined)) g.Bind(_arena);
        foreach (var (source, target, offset) in _uploads) Upload(device, source, target, _arena.Pointer + (ulong)offset);
    }

    public void Dispose() => _arena?.Dispose();

    // ---- dtype policy -----------------------------------------------------------------------------------------------

    /// <summary>
    /// F16 matrices as stored. BF16 matrices become F16 when every value converts exactly (BF16's 8-bit significand fits
    /// F16's 11 bits inside F16's range): the weights are unchanged, but the tensor-core GEMM rounds x to the weight's
    /// dtype, and f16 rounding (2^-11) is 8x finer than bf16 (2^-8). F32 and GGML blocks (dequantized) become F16 when every value fits F16's
    /// range (|w| &lt;= 65504), else BF16.
    /// </summary>
    internal static TensorDType MatrixTarget(WeightTensor t)
    {
        if (t.DType == TensorDType.F16) return t.DType;
        if (!t.DType.IsNumeric()) throw new NotSupportedException($"{t.Name} is {t.DType.Name()}: not a floating-point weight");
        bool exact = t.DType == TensorDType.BF16;
        float max = 0;
        var row = new float[t.Columns];
        for (int r = 0; r < t.Rows; r++)
        {
            t.ReadRow(r, row);
            foreach (float v in row)
            {
                max = Math.Max(max, Math.Abs(v));
                if (exact && (float)(Half)v != v) return TensorDType.BF16;
            }
        }
        return max <= (float)Half.MaxValue ? TensorDType.F16 : TensorDType.BF16;
    }

    /// <summary>Norm weights and the embedding table: F32/F16/BF16 as stored (kernels exist for all three); GGML blocks as a matrix.</summary>
    internal static TensorDType VectorTarget(WeightTensor t) =>
        t.DType is TensorDType.F32 or TensorDType.F16 or TensorDType.BF16 ? t.DType : MatrixTarget(t);

    // ---- upload -----------------------------------------------------------------------------------------------------

    private static void Upload(CudaDevice device, WeightTensor t, TensorDType target, ulong destination)
    {
        const long Chunk = 64L << 20;
        device.MakeCurrent();
        if (t.DType == target)
        {
            long bytes = t.ByteLength;
            for (long at = 0; at < bytes; at += Chunk)
                Cu.Check(CuApi.cuMemcpyHtoD(destination + (ulong)at, t.Data + at, (nuint)Math.Min(Chunk, bytes - at)), device.Ordinal);
            return;
        }
        int cols = t.Columns, rowBytes = checked((int)target.ByteCount(cols));
        int rowsPerChunk = Math.Max(1, (int)(Chunk / rowBytes));
        var row = new float[cols];
        var staging = new byte[(long)rowsPerChunk * rowBytes];
        for (int r0 = 0; r0 < t.Rows; r0 += rowsPerChunk)
        {
            int n = Math.Min(rowsPerChunk, t.Rows - r0);
            for (int i = 0; i < n; i++)
            {
                t.ReadRow(r0 + i, row);
                var dst = staging.AsSpan(i * rowBytes, rowBytes);
                switch (target)
                {
                    case TensorDType.F32:
                        System.Runtime.InteropServices.MemoryMarshal.AsBytes(row.AsSpan()).CopyTo(dst);
                        break;
                    case TensorDType.F16:
                        var h = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(dst);
                        for (int j = 0; j < cols; j++) h[j] = (Half)row[j];
                        break;
                    case TensorDType.BF16:
                        var b = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(dst);
                        for (int j = 0; j < cols; j++) b[j] = DTypeConvert.SingleToBFloat16(row[j]);
                        break;
                    default:
                        throw new NotSupportedException($"{t.Name}: no conversion to {target.Name()}");
                }
            }
            fixed (byte* p = staging)
                Cu.Check(CuApi.cuMemcpyHtoD(destination + (ulong)((long)r0 * rowBytes), p, (nuint)((long)n * rowBytes)), device.Ordinal);
        }
    }

    /// <summary>Tensors are keyed by identity (the tied LM head is the embedding object) and target dtype.</summary>
    private sealed class ReferenceEqualityPair : IEqualityComparer<(WeightTensor, TensorDType)>
    {
        public static readonly ReferenceEqualityPair Instance = new();
        public bool Equals((WeightTensor, TensorDType) a, (WeightTensor, TensorDType) b) => ReferenceEquals(a.Item1, b.Item1) && a.Item2 == b.Item2;
        public int GetHashCode((WeightTensor, TensorDType) k) => HashCode.Combine(System.Runtime.CompilerServices.RuntimeHelpers.GetHashCode(k.Item1), k.Item2);
    }
}

/// <summary>A weight in the arena: its device dtype and, once bound, the typed view the launchers take.</summary>
internal sealed class GpuTensor(string name, TensorDType dtype, long offset, long elements)
{
    private readonly long _offset = offset, _elements = elements;
    private object? _view;

    public string Name { get; } = name;
    public TensorDType DType { get; } = dtype;
    /// <summary>Byte offset in the arena.</summary>
    public long Offset => _offset;

    /// <summary>
    /// One view over dense matrices of one dtype that lie back to back in the arena (rows of the first, then of the
    /// second, ...), or null when they do not (another format or dtype, or alignment padding between them).
    /// </summary>
    public static GpuTensor? Joined(string name, params GpuLinear[] parts)
    {
        if (parts.Length == 0 || parts[0] is not GpuDense first) return null;
        long end = first.Weight.Offset + first.Weight.DType.ByteCount(first.Weight.Elements), elements = first.Weight.Elements;
        for (int i = 1; i < parts.Length; i++)
        {
            if (parts[i] is not GpuDense d || d.Weight.DType != first.Weight.DType || d.Weight.Offset != end) return null;
            end += d.Weight.DType.ByteCount(d.Weight.Elements);
            elements += d.Weight.Elements;
        }
        return new GpuTensor(name, first.Weight.DType, first.Weight.Offset, elements);
    }
    /// <summary>Elements of the tensor (an empty one is placed as one element).</summary>
    public long Elements => _elements;

    /// <summary>The bound view as <typeparamref name="T"/>, the element type of <see cref="DType"/> (<see cref="DeviceElement{T}"/>).</summary>
    public DeviceBuffer<T> View<T>() where T : unmanaged => (DeviceBuffer<T>)(_view ?? throw new InvalidOperationException($"{Name} is not on the device yet"));

    /// <summary>The bytes of a tensor kept as stored (W4A8's codes, zeros and group scales).</summary>
    public DeviceBuffer<byte> Bytes() => _view as DeviceBuffer<byte> ?? throw new InvalidOperationException($"{Name} is not a byte tensor on the device");

    public void Bind(DeviceBuffer<byte> arena)
    {
        if (DType is TensorDType.I8 or TensorDType.U8)
        {
            _view = arena.View<byte>(_offset, _elements);
            return;
        }
        if (DType == TensorDType.I32)
        {
            _view = arena.View<int>(_offset, _elements);
            return;
        }
        var bind = new BindView(this, arena);
        DeviceDType.Dispatch(DType, ref bind, Name, "device dtype");
    }

    private readonly struct BindView(GpuTensor tensor, DeviceBuffer<byte> arena) : IDeviceDTypeAction
    {
        public void Run<T>() where T : unmanaged => tensor._view = arena.View<T>(tensor._offset, tensor._elements);
    }
}

/// <summary>
/// A layer's tensors on the device. <see cref="Qkv"/>: q's, k's and v's rows as one [q_dim + 2 kv_dim, H] matrix, and
/// <see cref="GateUp"/>: gate's and up's as one [2 I, H], where they are dense in one dtype and adjacent (else null);
/// <see cref="AttentionNormF32"/>, <see cref="FfnNormF32"/>: the norm weights in fp32 (the fused decode GEMVs').
/// </summary>
internal sealed record GpuLayer(GpuTensor AttentionNorm, GpuLinear Wq, GpuLinear Wk, GpuLinear Wv, GpuTensor? Bq, GpuTensor? Bk, GpuTensor? Bv,
    GpuLinear Wo, GpuTensor FfnNorm, GpuLinear Gate, GpuLinear Up, GpuLinear Down, GpuDense? Qkv = null, GpuDense? GateUp = null,
    GpuTensor? AttentionNormF32 = null, GpuTensor? FfnNormF32 = null);

/// <summary>A linear layer on the device: a dense matrix, or W4A8's packed codes and scales.</summary>
internal abstract record GpuLinear;

internal sealed record GpuDense(GpuTensor Weight) : GpuLinear;

/// <summary>SqueezeLlmLinear's tensors as stored: packed codes (I32), the fp16 lookup table, the CSR outliers.</summary>
internal sealed record GpuSqueeze(string Name, int OutFeatures, int InFeatures, int Bits, GpuTensor Codes, GpuTensor Table, GpuTensor OutlierRows,
    GpuTensor OutlierCols, GpuTensor OutlierValues) : GpuLinear;

/// <summary>
/// W4A8Linear's tensors as stored: codes [Npad, Kpad/2] in the tile layout, the fp16 channel scales, the per-group
/// scales (null per channel) and zeros; the input is quantized per token to [M, PaddedIn] int8 first.
/// </summary>
internal sealed record GpuW4A8(string Name, int OutFeatures, int InFeatures, int GroupSize, int PaddedIn, GpuTensor Codes, GpuTensor Scales,
    GpuTensor? GroupScales, GpuTensor Zeros) : GpuLinear;
