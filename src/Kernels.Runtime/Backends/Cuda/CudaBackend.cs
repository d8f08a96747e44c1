// The CUDA backend: CpuBackend's Llama forward pass step for step on one GPU, one stream, device memory planned up front.
using Kernels.Interop;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;

namespace Kernels.Runtime.Backends.Cuda;

/// <summary>
/// Memory: one arena for the weights (uploaded once; F16 matrices as stored, BF16 ones as F16 when that is exact, F32 and GGML block (Q4_0..Q8_0, Q2_K..Q6_K) matrices converted to F16,
/// or to BF16 when a value exceeds F16's range; norm vectors F32/F16/BF16 as stored; a bias in its matrix's dtype), one
/// scratch arena for the activations of <see cref="CudaBackendOptions.MaxTokensPerStep"/> token rows, and the paged KV
/// pool (<see cref="CudaKvStorage"/>), sized by <see cref="CudaMemoryPlan"/> from the free memory.
/// A step: embedding gather; per layer rms_norm, q/k/v GEMM (+ Qwen2 bias), RoPE, kv_append into the paged blocks,
/// attention (paged_decode_attention with split-K when every sequence brings one token, else paged_prefill_attention),
/// o GEMM, residual, rms_norm, gate/up GEMM, SwiGLU, down GEMM, residual; then the final norm and LM head for the rows
/// whose logits are asked for, copied to pinned host memory once per step. A Hydragen <see cref="AttentionPlan"/> is
/// honoured by attending each sequence over its own block table, which holds the shared physical blocks: exact (the
/// same keys, the same softmax), without the saving of reading shared keys once. A decode step (one token per sequence,
/// every sequence's logits asked for) is captured as a CUDA graph once per (sequences, block-table width bucket) and
/// replayed after the step's inputs are copied to the device (<see cref="DecodeGraphCache"/>); other steps, and every
/// step when <see cref="CudaBackendOptions.UseCudaGraphs"/> is false or a capture failed, launch kernels one by one.
/// </summary>
public sealed unsafe class CudaBackend : IBackend
{
    /// <summary>Head dims both attention kernels are compiled for (one entry per head dim).</summary>
    public static IReadOnlyList<int> SupportedHeadDims => OpsLaunchPlans.AttentionHeadDims;

    private readonly CudaDevice _device;
    private readonly KernelModule _module;
    private readonly CuStreamHandle _stream;
    private readonly OpsLauncher _ops;
    private readonly DeviceBuffer<byte> _weights;
    private readonly DeviceBuffer<byte> _scratch;
    private readonly CudaKvStorage _kv;
    private readonly PinnedHostHandle _pinnedLogits, _pinnedInts;
    private readonly ScratchLayout _layout;
    private readonly GpuTensor _embedding, _lmHead, _finalNorm;
    private readonly GpuLayer[] _layers;
    private readonly DeviceBuffer<float> _invFreq;
    private readonly DeviceBuffer<float> _x, _xn, _q, _k, _v, _attn, _lse, _proj, _gate, _up, _selected, _selectedNorm, _logits, _workspace;
    private readonly DeviceBuffer<int> _ids, _positions, _slots, _qStarts;
    private readonly DecodeGraphCache _graphs;
    private bool _disposed;

    public string Name => "cuda";
    public ModelConfig Config { get; }
    public KvBlockPool KvPool { get; }
    public CudaDevice Device => _device;
    public CudaMemoryPlan MemoryPlan { get; }
    public CudaBackendOptions Options { get; }
    /// <summary>The weight dtypes on the device, e.g. "F16 x 225" (what was converted shows here).</summary>
    public string WeightFormats { get; }

    // ---- support ----------------------------------------------------------------------------------------------------

    /// <summary>Why this backend cannot run <paramref name="model"/> (null: it can). Pure: no driver call.</summary>
    public static string? WhyUnsupported(LoadedModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (WhyUnsupported(model.Config) is { } why) return why;
        foreach (var layer in model.Weights.Layers)
            foreach (var w in new[] { layer.Wq, layer.Wk, layer.Wv, layer.Wo, layer.Gate, layer.Up, layer.Down })
                if (w is not DenseLinear)
                    return $"{w.Name} is {w.Format}: quantized linear layers are not implemented on the CUDA backend yet (F32/F16/BF16 and GGML block types only)";
        return null;
    }

    /// <summary>The shape part of <see cref="WhyUnsupported(LoadedModel)"/>: attention head dim, GEMM alignment, sliding window.</summary>
    public static string? WhyUnsupported(ModelConfig c)
    {
        ArgumentNullException.ThrowIfNull(c);
        if (c.SlidingWindow != null)
            return $"sliding-window attention (window {c.SlidingWindow}) is not implemented on the CUDA backend";
        if (!SupportedHeadDims.Contains(c.HeadDim))
            return $"head_dim {c.HeadDim}: the CUDA attention kernels support head_dim {string.Join(", ", SupportedHeadDims)}";
        // Any K: layers whose K is not a multiple of 8 (stories260K's FFN, 172) run on dense_gemv (OpsLaunchPlans.DenseGemmKernel).
        return null;
    }

    // ---- construction -----------------------------------------------------------------------------------------------

    /// <summary>
    /// Opens the device, loads the kernels, plans and allocates device memory and uploads the weights. Throws
    /// NotSupportedException (<see cref="WhyUnsupported(LoadedModel)"/>), InvalidOperationException (CUDA unavailable, no kernels,
    /// out of memory with the sizes) or CudaException; everything allocated so far is released first.
    /// </summary>
    public CudaBackend(LoadedModel model, CudaBackendOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        options ??= new CudaBackendOptions();
        if (WhyUnsupported(model) is { } why) throw new NotSupportedException($"CUDA backend: {why}");
        Options = options;
        Config = model.Config;
        var c = Config;
        _device = CudaDevice.Open(options.Device);
        try
        {
            byte[] image = options.KernelImage ?? KernelImage.Load()
                ?? throw new InvalidOperationException($"CUDA backend: no kernels: {KernelImage.Describe()}");
            _module = KernelModule.Load(_device, image, options.KernelImage != null ? "options.KernelImage" : "embedded");
            _stream = _device.CreateStream();
            _ops = new OpsLauncher(_module, _stream);
            _graphs = new DecodeGraphCache(options.UseCudaGraphs);

            // Weights: decide every tensor's device dtype and place it in the arena.
            var uploads = new List<(WeightTensor Source, TensorDType Target, long Offset)>();
            var placed = new Dictionary<(WeightTensor, TensorDType), GpuTensor>(ReferenceEqualityPair.Instance);
            long arena = 0;
            GpuTensor Place(WeightTensor t, TensorDType target)
            {
                if (placed.TryGetValue((t, target), out var g)) return g;
                g = new GpuTensor(t.Name, target, arena, t.ElementCount);
                uploads.Add((t, target, arena));
                arena += CudaMemoryPlan.Align(target.ByteCount(t.ElementCount));
                placed[(t, target)] = g;
                return g;
            }
            var w = model.Weights;
            _embedding = Place(w.Embedding, VectorTarget(w.Embedding));
            _layers = new GpuLayer[c.NumLayers];
            for (int l = 0; l < c.NumLayers; l++)
            {
                var lw = w.Layers[l];
                GpuTensor M(LinearWeight lin) => Place(((DenseLinear)lin).Weight, MatrixTarget(((DenseLinear)lin).Weight));
                var wq = M(lw.Wq);
                var wk = M(lw.Wk);
                var wv = M(lw.Wv);
                _layers[l] = new GpuLayer(Place(lw.AttentionNorm, VectorTarget(lw.AttentionNorm)), wq, wk, wv,
                    lw.Bq == null ? null : Place(lw.Bq, wq.DType), lw.Bk == null ? null : Place(lw.Bk, wk.DType), lw.Bv == null ? null : Place(lw.Bv, wv.DType),
                    M(lw.Wo), Place(lw.FfnNorm, VectorTarget(lw.FfnNorm)), M(lw.Gate), M(lw.Up), M(lw.Down));
            }
            _finalNorm = Place(w.FinalNorm, VectorTarget(w.FinalNorm));
            _lmHead = Place(w.LmHead, MatrixTarget(w.LmHead));
            WeightFormats = string.Join(", ", placed.Values.GroupBy(g => g.DType).Select(g => $"{g.Key.Name()} x {g.Count()}"));

            var (free, _) = _device.GetMemoryInfo();
            MemoryPlan = CudaMemoryPlan.Compute(c, arena, free, options);
            _weights = DeviceBuffer<byte>.Allocate(_device, Math.Max(arena, CudaMemoryPlan.Alignment));
            foreach (var g in placed.Values) g.Bind(_weights);
            foreach (var (source, target, offset) in uploads) Upload(source, target, _weights.Pointer + (ulong)offset);
            _invFreq = DeviceBuffer<float>.From(_device, RopeFrequencies.Compute(c));

            _layout = new ScratchLayout(c, options.MaxTokensPerStep, options.KvBlockSize);
            _scratch = DeviceBuffer<byte>.Allocate(_device, _layout.Bytes);
            DeviceBuffer<float> F((long Offset, long Floats) s) => _scratch.View<float>(s.Offset, s.Floats);
            DeviceBuffer<int> I((long Offset, long Ints) s) => _scratch.View<int>(s.Offset, s.Ints);
            (_x, _xn, _q, _k, _v, _attn, _lse) = (F(_layout.X), F(_layout.Xn), F(_layout.Q), F(_layout.K), F(_layout.V), F(_layout.Attn), F(_layout.Lse));
            (_proj, _gate, _up, _selected, _selectedNorm, _logits, _workspace) =
                (F(_layout.Proj), F(_layout.Gate), F(_layout.Up), F(_layout.Selected), F(_layout.SelectedNorm), F(_layout.Logits), F(_layout.Workspace));
            (_ids, _positions, _slots, _qStarts) = (I(_layout.Ids), I(_layout.Positions), I(_layout.Slots), I(_layout.QStarts));

            _kv = new CudaKvStorage(_device, _stream, c, MemoryPlan.KvBlocks, options.KvBlockSize, options.KvDType);
            _pinnedLogits = _device.AllocatePinned((long)options.MaxTokensPerStep * c.VocabSize * sizeof(float));
            _pinnedInts = _device.AllocatePinned(_layout.IntRegionInts * sizeof(int));
            KvPool = new KvBlockPool(MemoryPlan.KvBlocks, options.KvBlockSize, _kv);
            _device.Synchronize();
        }
        catch
        {
            Dispose();
            throw;
        }
    }

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

    private void Upload(WeightTensor t, TensorDType target, ulong destination)
    {
        const long Chunk = 64L << 20;
        _device.MakeCurrent();
        if (t.DType == target)
        {
            long bytes = t.ByteLength;
            for (long at = 0; at < bytes; at += Chunk)
                Cu.Check(CuApi.cuMemcpyHtoD(destination + (ulong)at, t.Data + at, (nuint)Math.Min(Chunk, bytes - at)), _device.Ordinal);
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
                        for (int j = 0; j < cols; j++) b[j] = Numerics.DTypeConvert.SingleToBFloat16(row[j]);
                        break;
                    default:
                        throw new NotSupportedException($"{t.Name}: no conversion to {target.Name()}");
                }
            }
            fixed (byte* p = staging)
                Cu.Check(CuApi.cuMemcpyHtoD(destination + (ulong)((long)r0 * rowBytes), p, (nuint)((long)n * rowBytes)), _device.Ordinal);
        }
    }

    public IKvCache CreateCache()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return new KvSequence(KvPool);
    }

    /// <summary>Bytes of KV memory one token takes in every layer (keys and values).</summary>
    public long KvBytesPerToken => 2L * Config.NumLayers * Config.KvDim * CudaMemoryPlan.ElementBytes(Options.KvDType);

    public override string ToString() =>
        $"cuda ({_device}; weights {WeightFormats}; KV {Options.KvDType.Name()} in {MemoryPlan.KvBlocks} blocks of {Options.KvBlockSize}; {MemoryPlan}; {GraphStatus})";

    /// <summary>Whether decode steps run as CUDA graphs, with counts, or why not.</summary>
    public string GraphStatus => _graphs.Describe();

    // ---- forward ----------------------------------------------------------------------------------------------------

    /// <summary>A run of one sequence's new tokens inside one internal step.</summary>
    private readonly record struct Piece(int Seq, int Offset, int Count, int Start);

    public float[][] Forward(IReadOnlyList<SequenceStep> batch, AttentionPlan? attention = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(batch);
        var c = Config;
        var plan = attention ?? AttentionPlan.None(batch.Count);
        if (plan.SuffixStart.Length != batch.Count) throw new ArgumentException("the attention plan was made for another batch", nameof(attention));

        var seqs = new KvSequence[batch.Count];
        var start = new int[batch.Count];
        for (int s = 0; s < batch.Count; s++)
        {
            seqs[s] = batch[s].Cache as KvSequence ?? throw new ArgumentException("the cache was not created by this backend", nameof(batch));
            if (seqs[s].Pool != KvPool) throw new ArgumentException("the cache belongs to another backend's KV pool", nameof(batch));
            int n = batch[s].Tokens.Length;
            if (n == 0) throw new ArgumentException($"sequence {s} of the batch has no tokens", nameof(batch));
            start[s] = seqs[s].Length;
            if (start[s] + n > c.MaxPositions)
                throw new InvalidOperationException($"sequence {s} would hold {start[s] + n} tokens, beyond the model's context of {c.MaxPositions}");
            if (plan.SuffixStart[s] > start[s]) throw new ArgumentException($"sequence {s}: the plan's suffix starts after its cached keys", nameof(attention));
            foreach (int id in batch[s].Tokens.Span)
                if ((uint)id >= (uint)c.VocabSize)
                    throw new ArgumentOutOfRangeException(nameof(batch), id, $"sequence {s}: token id outside the vocabulary [0, {c.VocabSize})");
        }
        foreach (var level in plan.Levels)
            foreach (int s in level.Sequences)
                if (level.End > start[s]) throw new ArgumentException($"a shared level ends at {level.End}, past sequence {s}'s cached keys ({start[s]})", nameof(attention));
        for (int s = 0; s < batch.Count; s++) seqs[s].Reserve(batch[s].Tokens.Length);

        var result = new float[batch.Count][];
        for (int s = 0; s < batch.Count; s++) result[s] = new float[(long)(batch[s].AllLogits ? batch[s].Tokens.Length : 1) * c.VocabSize];

        // Internal steps of at most MaxTokensPerStep rows; a sequence longer than what is left continues in the next.
        var pieces = new List<Piece>();
        int rows = 0, max = Options.MaxTokensPerStep;
        for (int s = 0; s < batch.Count; s++)
        {
            int n = batch[s].Tokens.Length;
            for (int offset = 0; offset < n;)
            {
                if (rows == max)
                {
                    Step(pieces, batch, seqs, result);
                    pieces.Clear();
                    rows = 0;
                }
                int take = Math.Min(n - offset, max - rows);
                pieces.Add(new Piece(s, offset, take, start[s]));
                rows += take;
                offset += take;
            }
        }
        if (pieces.Count > 0) Step(pieces, batch, seqs, result);
        for (int s = 0; s < batch.Count; s++) seqs[s].Advance(batch[s].Tokens.Length);
        return result;
    }

    private void Step(List<Piece> pieces, IReadOnlyList<SequenceStep> batch, KvSequence[] seqs, float[][] result)
    {
        var c = Config;
        int bs = Options.KvBlockSize;
        int numSeqs = pieces.Count, rows = 0, width = 1, maxCount = 0, maxSeqLen = 0;
        bool decode = true, everyRowSelected = true;
        foreach (var p in pieces)
        {
            int len = p.Start + p.Offset + p.Count;
            width = Math.Max(width, (len + bs - 1) / bs);
            maxCount = Math.Max(maxCount, p.Count);
            maxSeqLen = Math.Max(maxSeqLen, len);
            decode &= p.Count == 1;
            everyRowSelected &= batch[p.Seq].AllLogits || p.Offset + p.Count == batch[p.Seq].Tokens.Length;
            rows += p.Count;
        }
        // A graph step: one token per sequence and the logits of every row, in row order (what the capture recorded).
        // Its tables are as wide as the bucket and its split plan is made for the bucket's capacity, so the captured
        // arguments hold for every step of the key.
        bool graph = decode && everyRowSelected && _graphs.Enabled;
        if (graph)
        {
            width = DecodeGraphCache.BucketBlocks(width, _layout.MaxBlocksPerSeq);
            maxSeqLen = width * bs;
        }

        // Step inputs: staged in pinned memory with the scratch's int layout, then one host-to-device copy.
        var ints = _pinnedInts.AsSpan<int>();
        long baseOffset = _layout.Ids.Offset;
        int At((long Offset, long Ints) s) => (int)((s.Offset - baseOffset) / 4);
        var ids = ints.Slice(At(_layout.Ids), checked((int)(rows)));
        var positions = ints.Slice(At(_layout.Positions), checked((int)(rows)));
        var slots = ints.Slice(At(_layout.Slots), checked((int)(rows)));
        var seqLens = ints.Slice(At(_layout.SeqLens), checked((int)(numSeqs)));
        var qStarts = ints.Slice(At(_layout.QStarts), checked((int)(numSeqs + 1)));
        var tables = ints.Slice(At(_layout.BlockTables), checked((int)((long)numSeqs * width)));
        int row = 0;
        var logitRows = new List<(int Row, int Seq, int Index)>();
        for (int i = 0; i < numSeqs; i++)
        {
            var p = pieces[i];
            var blocks = seqs[p.Seq].Blocks;
            var tokens = batch[p.Seq].Tokens.Span;
            qStarts[i] = row;
            seqLens[i] = p.Start + p.Offset + p.Count;
            for (int t = 0; t < p.Count; t++, row++)
            {
                int pos = p.Start + p.Offset + t;
                ids[row] = tokens[p.Offset + t];
                positions[row] = pos;
                slots[row] = blocks[pos / bs] * bs + pos % bs;
                int index = p.Offset + t;
                if (batch[p.Seq].AllLogits) logitRows.Add((row, p.Seq, index));
                else if (index == tokens.Length - 1) logitRows.Add((row, p.Seq, 0));
            }
            int used = (seqLens[i] + bs - 1) / bs;
            var table = tables.Slice(i * width, width);
            for (int j = 0; j < width; j++) table[j] = j < used ? blocks[j] : 0;
        }
        qStarts[numSeqs] = row;
        long copyInts = (_layout.BlockTables.Offset - baseOffset) / 4 + (long)numSeqs * width;
        IntPtr stream = _stream.DangerousGetHandle();
        _device.MakeCurrent();
        Cu.Check(CuApi.cuMemcpyHtoDAsync(_scratch.Pointer + (ulong)baseOffset, (void*)_pinnedInts.DangerousGetHandle(), (nuint)(copyInts * 4), stream),
            _device.Ordinal);
        var seqLensBuffer = _scratch.View<int>(_layout.SeqLens.Offset, numSeqs);
        var tablesBuffer = _scratch.View<int>(_layout.BlockTables.Offset, (long)numSeqs * width);

        int selected = logitRows.Count;
        void Enqueue() => EnqueueForward(rows, numSeqs, width, maxCount, maxSeqLen, decode, seqLensBuffer, tablesBuffer, logitRows);
        if (graph && _graphs.GetOrCapture(new DecodeGraphKey(numSeqs, width), _device, _stream, Enqueue) is { } exec)
            _device.LaunchGraph(exec, _stream);
        else
            Enqueue();
        if (selected > 0)
            Cu.Check(CuApi.cuMemcpyDtoHAsync((void*)_pinnedLogits.DangerousGetHandle(), _logits.Pointer, (nuint)((long)selected * c.VocabSize * 4), stream),
                _device.Ordinal);
        // Every step ends synchronized: the pinned staging is reused by the next step, and kernel faults surface here.
        Cu.Check(CuApi.cuStreamSynchronize(stream), _device.Ordinal);
        var logits = _pinnedLogits.AsSpan<float>();
        for (int i = 0; i < selected; i++)
        {
            var (_, s, index) = logitRows[i];
            logits.Slice(i * c.VocabSize, c.VocabSize).CopyTo(result[s].AsSpan(index * c.VocabSize, c.VocabSize));
        }
    }

    /// <summary>
    /// The device work of a step after its inputs are on the device, up to the logits of the selected rows in _logits:
    /// launches and device-to-device copies on the stream only (no host synchronization), so it can be captured.
    /// </summary>
    private void EnqueueForward(int rows, int numSeqs, int width, int maxCount, int maxSeqLen, bool decode, DeviceBuffer<int> seqLensBuffer,
        DeviceBuffer<int> tablesBuffer, List<(int Row, int Seq, int Index)> logitRows)
    {
        var c = Config;
        int h = c.HiddenSize, qd = c.QueryDim, kvd = c.KvDim, ff = c.IntermediateSize;
        IntPtr stream = _stream.DangerousGetHandle();
        Embed(rows);
        float eps = (float)c.RmsNormEps;
        for (int l = 0; l < c.NumLayers; l++)
        {
            var w = _layers[l];
            Norm(_xn, _x, w.AttentionNorm, rows, eps);
            Gemm(_q, _xn, w.Wq, w.Bq, rows, qd, h);
            Gemm(_k, _xn, w.Wk, w.Bk, rows, kvd, h);
            Gemm(_v, _xn, w.Wv, w.Bv, rows, kvd, h);
            _ops.RopeF32(_q, _k, _positions, _invFreq, rows, c.NumHeads, c.NumKvHeads, c.HeadDim);
            AppendAndAttend(l, rows, numSeqs, width, maxCount, maxSeqLen, decode, seqLensBuffer, tablesBuffer);
            Gemm(_proj, _attn, w.Wo, null, rows, h, qd);
            _ops.ResidualAddF32(_x, _proj, rows * h);
            Norm(_xn, _x, w.FfnNorm, rows, eps);
            Gemm(_gate, _xn, w.Gate, null, rows, ff, h);
            Gemm(_up, _xn, w.Up, null, rows, ff, h);
            _ops.SwiGluF32(_gate, _gate, _up, rows, ff);
            Gemm(_proj, _gate, w.Down, null, rows, h, ff);
            _ops.ResidualAddF32(_x, _proj, rows * h);
        }

        int selected = logitRows.Count;
        if (selected > 0)
        {
            // Gather the selected rows (runs of consecutive rows in one copy each), final norm, LM head.
            for (int i = 0; i < selected;)
            {
                int j = i + 1;
                while (j < selected && logitRows[j].Row == logitRows[j - 1].Row + 1) j++;
                Cu.Check(CuApi.cuMemcpyDtoDAsync(_selected.Pointer + (ulong)((long)i * h * 4), _x.Pointer + (ulong)((long)logitRows[i].Row * h * 4),
                    (nuint)((long)(j - i) * h * 4), stream), _device.Ordinal);
                i = j;
            }
            Norm(_selectedNorm, _selected, _finalNorm, selected, eps);
            Gemm(_logits, _selectedNorm, _lmHead, null, selected, c.VocabSize, h);
        }
    }

    // ---- dtype dispatch ---------------------------------------------------------------------------------------------

    private void Embed(int rows)
    {
        var e = _embedding;
        int h = Config.HiddenSize, v = Config.VocabSize;
        switch (e.DType)
        {
            case TensorDType.F32: _ops.EmbeddingGatherF32(_x, e.F32!, _ids, rows, h, v); break;
            case TensorDType.F16: _ops.EmbeddingGatherF16(_x, e.F16!, _ids, rows, h, v); break;
            case TensorDType.BF16: _ops.EmbeddingGatherBF16(_x, e.BF16!, _ids, rows, h, v); break;
            default: throw new NotSupportedException($"{e.Name}: embedding in {e.DType.Name()}");
        }
    }

    private void Norm(DeviceBuffer<float> y, DeviceBuffer<float> x, GpuTensor w, int rows, float eps)
    {
        int d = Config.HiddenSize;
        switch (w.DType)
        {
            case TensorDType.F32: _ops.RmsNormF32(y, x, w.F32!, rows, d, eps); break;
            case TensorDType.F16: _ops.RmsNormF16(y, x, w.F16!, rows, d, eps); break;
            case TensorDType.BF16: _ops.RmsNormBF16(y, x, w.BF16!, rows, d, eps); break;
            default: throw new NotSupportedException($"{w.Name}: norm weight in {w.DType.Name()}");
        }
    }

    private void Gemm(DeviceBuffer<float> y, DeviceBuffer<float> x, GpuTensor w, GpuTensor? bias, int m, int n, int k)
    {
        switch (w.DType)
        {
            case TensorDType.F16: _ops.DenseGemmF16(y, x, w.F16!, bias?.F16, m, n, k); break;
            case TensorDType.BF16: _ops.DenseGemmBF16(y, x, w.BF16!, bias?.BF16, m, n, k); break;
            default: throw new NotSupportedException($"{w.Name}: GEMM weight in {w.DType.Name()}");
        }
    }

    private void AppendAndAttend(int layer, int rows, int numSeqs, int width, int maxCount, int maxSeqLen, bool decode,
        DeviceBuffer<int> seqLens, DeviceBuffer<int> tables)
    {
        var c = Config;
        int slots = _kv.NumSlots;
        switch (_kv.DType)
        {
            case TensorDType.F16:
            {
                var kv = new OpsLauncher.PagedKv<Half>(_kv.Keys<Half>(layer), _kv.Values<Half>(layer), tables, seqLens, _kv.NumBlocks, _kv.BlockSize, width);
                _ops.KvAppendF16(kv.KCache, kv.VCache, _k, _v, _slots, rows, c.KvDim, slots);
                if (decode) _ops.PagedDecodeAttentionF16(_attn, _lse, _q, kv, _workspace, numSeqs, c.NumHeads, c.NumKvHeads, c.HeadDim, maxSeqLen);
                else _ops.PagedPrefillAttentionF16(_attn, _lse, _q, kv, _qStarts, numSeqs, rows, maxCount, c.NumHeads, c.NumKvHeads, c.HeadDim);
                break;
            }
            case TensorDType.BF16:
            {
                var kv = new OpsLauncher.PagedKv<ushort>(_kv.Keys<ushort>(layer), _kv.Values<ushort>(layer), tables, seqLens, _kv.NumBlocks, _kv.BlockSize, width);
                _ops.KvAppendBF16(kv.KCache, kv.VCache, _k, _v, _slots, rows, c.KvDim, slots);
                if (decode) _ops.PagedDecodeAttentionBF16(_attn, _lse, _q, kv, _workspace, numSeqs, c.NumHeads, c.NumKvHeads, c.HeadDim, maxSeqLen);
                else _ops.PagedPrefillAttentionBF16(_attn, _lse, _q, kv, _qStarts, numSeqs, rows, maxCount, c.NumHeads, c.NumKvHeads, c.HeadDim);
                break;
            }
            case TensorDType.F32:
            {
                var kv = new OpsLauncher.PagedKv<float>(_kv.Keys<float>(layer), _kv.Values<float>(layer), tables, seqLens, _kv.NumBlocks, _kv.BlockSize, width);
                _ops.KvAppendF32(kv.KCache, kv.VCache, _k, _v, _slots, rows, c.KvDim, slots);
                if (decode) _ops.PagedDecodeAttentionF32(_attn, _lse, _q, kv, _workspace, numSeqs, c.NumHeads, c.NumKvHeads, c.HeadDim, maxSeqLen);
                else _ops.PagedPrefillAttentionF32(_attn, _lse, _q, kv, _qStarts, numSeqs, rows, maxCount, c.NumHeads, c.NumKvHeads, c.HeadDim);
                break;
            }
            default:
                throw new NotSupportedException($"KV cache dtype {_kv.DType.Name()}");
        }
    }

    // ---- lifetime ---------------------------------------------------------------------------------------------------

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        // Finish queued work before freeing what it uses; a sticky error here must not stop the frees.
        if (_stream != null && !_stream.IsClosed)
        {
            try { _device.MakeCurrent(); CuApi.cuStreamSynchronize(_stream.DangerousGetHandle()); }
            catch (Exception e) when (e is CudaException or DllNotFoundException) { }
        }
        _graphs?.Dispose();
        _pinnedInts?.Dispose();
        _pinnedLogits?.Dispose();
        _kv?.Dispose();
        _scratch?.Dispose();
        _invFreq?.Dispose();
        _weights?.Dispose();
        _stream?.Dispose();
        _module?.Dispose();
        _device?.Dispose();
    }

    // ---- device tensors ---------------------------------------------------------------------------------------------

    /// <summary>A weight in the arena: its device dtype and, once bound, the typed view the launchers take.</summary>
    private sealed class GpuTensor(string name, TensorDType dtype, long offset, long elements)
    {
        public string Name { get; } = name;
        public TensorDType DType { get; } = dtype;
        public DeviceBuffer<float>? F32 { get; private set; }
        public DeviceBuffer<Half>? F16 { get; private set; }
        public DeviceBuffer<ushort>? BF16 { get; private set; }

        public void Bind(DeviceBuffer<byte> arena)
        {
            switch (DType)
            {
                case TensorDType.F32: F32 = arena.View<float>(offset, elements); break;
                case TensorDType.F16: F16 = arena.View<Half>(offset, elements); break;
                case TensorDType.BF16: BF16 = arena.View<ushort>(offset, elements); break;
                default: throw new NotSupportedException($"{Name}: device dtype {DType.Name()}");
            }
        }
    }

    private sealed record GpuLayer(GpuTensor AttentionNorm, GpuTensor Wq, GpuTensor Wk, GpuTensor Wv, GpuTensor? Bq, GpuTensor? Bk, GpuTensor? Bv,
        GpuTensor Wo, GpuTensor FfnNorm, GpuTensor Gate, GpuTensor Up, GpuTensor Down);

    /// <summary>Tensors are keyed by identity (the tied LM head is the embedding object) and target dtype.</summary>
    private sealed class ReferenceEqualityPair : IEqualityComparer<(WeightTensor, TensorDType)>
    {
        public static readonly ReferenceEqualityPair Instance = new();
        public bool Equals((WeightTensor, TensorDType) a, (WeightTensor, TensorDType) b) => ReferenceEquals(a.Item1, b.Item1) && a.Item2 == b.Item2;
        public int GetHashCode((WeightTensor, TensorDType) k) => HashCode.Combine(System.Runtime.CompilerServices.RuntimeHelpers.GetHashCode(k.Item1), k.Item2);
    }
}
