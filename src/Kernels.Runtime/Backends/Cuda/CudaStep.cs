// The CUDA backend's step: the activation scratch, the paged KV storage and the pinned staging of one internal step
// of at most MaxTokensPerStep rows, and the forward pass over them (kernel by kernel, or replayed as a CUDA graph).
using Kernels.Interop;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cuda;

/// <summary>
/// A step: embedding gather; per layer rms_norm, q/k/v GEMM (+ Qwen2 bias), RoPE, kv_append into the paged blocks,
/// attention (paged_decode_attention with split-K when every sequence brings one token, else paged_prefill_attention),
/// o GEMM, residual, rms_norm, gate/up GEMM, SwiGLU, down GEMM, residual; then the final norm and LM head for the rows
/// whose logits are asked for, copied to pinned host memory once per step. Every launch whose kernel depends on a
/// dtype (a weight's, the KV cache's) is written once as a generic action and dispatched by <see cref="DeviceDType"/>.
/// A decode step (one token per sequence, every sequence's logits asked for) is captured as a CUDA graph once per
/// (sequences, block-table width bucket) and replayed after the step's inputs are copied to the device
/// (<see cref="DecodeGraphCache"/>); other steps, and every step when graphs are off or a capture failed, launch
/// kernels one by one.
/// </summary>
internal sealed unsafe class CudaStep : IDisposable
{
    /// <summary>A run of one sequence's new tokens inside one internal step.</summary>
    public readonly record struct Piece(int Seq, int Offset, int Count, int Start);

    private readonly CudaDevice _device;
    private readonly CuStreamHandle _stream;
    private readonly OpsLauncher _ops;
    private readonly ModelConfig _config;
    private readonly CudaBackendOptions _options;
    private readonly DeviceWeights _weights;
    private readonly DecodeGraphCache _graphs;
    private readonly DeviceBuffer<float> _invFreq;
    private readonly ScratchLayout _layout;
    private readonly DeviceBuffer<byte> _scratch;
    private readonly CudaKvStorage _kv;
    private readonly PinnedHostHandle _pinnedLogits, _pinnedInts, _pinnedDraws;
    /// <summary>sample_tokens_f32's per-row inputs and output, MaxTokensPerStep rows each, laid out as <see cref="DrawLayout"/>.</summary>
    private readonly DeviceBuffer<byte> _draws;
    /// <summary>cuBLASLt for the bias-free GEMMs (CudaBackendOptions.UseCublasLt), and the 16-bit copy of their input.</summary>
    private readonly CublasLtGemm? _lt;
    /// <summary>W4A8 layers' int8 input (codes [rows, padded K], scales, sums) and the fp32 rows it was quantized from.</summary>
    private readonly DeviceBuffer<sbyte>? _xq;
    private readonly DeviceBuffer<float>? _xScale;
    private readonly DeviceBuffer<int>? _xSum;
    private DeviceBuffer<float>? _quantFrom;
    private readonly GpuDense _lmHead;
    /// <summary>The kernel choices for this GPU (the tuning table, overridden by the options' switches).</summary>
    private readonly bool _tiledDecode, _radixSampling, _mmaAttention, _w4a8SplitK, _fusedGemv, _fusedRope;
    /// <summary>This layer's q, k, v are the columns of the q|k|v GEMM's rows in _up (QkvGemm), not _q, _k, _v.</summary>
    private bool _qkvJoined;
    /// <summary>w4a8_gemm_*_splitk's int32 partial sums (W4A8 models with the split-K decode GEMM on).</summary>
    private readonly DeviceBuffer<int>? _w4a8Partial;
    private readonly int _attentionTileKeys;
    /// <summary>paged_attention_mma's partial (o, lse) rows, and its work arrays (items, row ids, slot lists) with their pinned staging.</summary>
    private readonly DeviceBuffer<float>? _attentionPartial;
    private readonly DeviceBuffer<int>? _attentionInts;
    private readonly PinnedHostHandle? _pinnedAttention;
    private readonly int _ltMinRows;
    public string KernelChoices { get; }
    private readonly DeviceBuffer<byte>? _half;
    private DeviceBuffer<float>? _halfFrom;
    private TensorDType _halfType;
    /// <summary>Recorded on the stream before a step's first copy and after its last: the GPU's time per step.</summary>
    private readonly CuEventHandle _stepStart, _stepEnd;
    private readonly DeviceBuffer<float> _x, _xn, _q, _k, _v, _attn, _lse, _proj, _gate, _up, _selected, _selectedNorm, _logits, _workspace;
    /// <summary>_up from the k and the v columns of a q|k|v row on (views made once, not per layer and step).</summary>
    private readonly DeviceBuffer<float> _upK, _upV;
    private readonly DeviceBuffer<int> _ids, _positions, _slots, _qStarts;
    /// <summary>KIVI: the format, the quantized attention's partial (o, lse) rows, and the lists of blocks a step compacts (device and pinned).</summary>
    private readonly KvCacheFormat? _kivi;
    private readonly DeviceBuffer<float>? _kiviPartial;
    private readonly DeviceBuffer<int>? _kiviLists;
    private readonly PinnedHostHandle? _pinnedKiviLists;

    /// <summary>
    /// Allocates, in this order, the RoPE frequencies, the scratch arena, the KV storage of <paramref name="kvBlocks"/>
    /// blocks and the pinned staging; on failure releases what it allocated and rethrows.
    /// </summary>
    public CudaStep(CudaDevice device, CuStreamHandle stream, OpsLauncher ops, ModelConfig config, CudaBackendOptions options, DeviceWeights weights,
        int kvBlocks, int kiviSlots = 0)
    {
        (_device, _stream, _ops, _config, _options, _weights) = (device, stream, ops, config, options, weights);
        _lmHead = new GpuDense(weights.LmHead);
        var c = config;
        try
        {
            _graphs = new DecodeGraphCache(options.UseCudaGraphs);
            _invFreq = DeviceBuffer<float>.From(_device, RopeFrequencies.Compute(c));

            _kivi = options.Kivi is { IsKivi: true } kivi ? kivi : null;
            _layout = new ScratchLayout(c, options.MaxTokensPerStep, options.KvBlockSize, _kivi);
            _scratch = DeviceBuffer<byte>.Allocate(_device, _layout.Bytes);
            DeviceBuffer<float> F((long Offset, long Floats) s) => _scratch.View<float>(s.Offset, s.Floats);
            DeviceBuffer<int> I((long Offset, long Ints) s) => _scratch.View<int>(s.Offset, s.Ints);
            (_x, _xn, _q, _k, _v, _attn, _lse) = (F(_layout.X), F(_layout.Xn), F(_layout.Q), F(_layout.K), F(_layout.V), F(_layout.Attn), F(_layout.Lse));
            (_proj, _gate, _up, _selected, _selectedNorm, _logits, _workspace) =
                (F(_layout.Proj), F(_layout.Gate), F(_layout.Up), F(_layout.Selected), F(_layout.SelectedNorm), F(_layout.Logits), F(_layout.Workspace));
            (_ids, _positions, _slots, _qStarts) = (I(_layout.Ids), I(_layout.Positions), I(_layout.Slots), I(_layout.QStarts));
            // The q|k|v GEMM's rows in _up, seen from each part's first column (rope_kv_append strides over the rows).
            _upK = _up.View<float>((long)c.QueryDim * sizeof(float), _up.Length - c.QueryDim);
            _upV = _up.View<float>((long)(c.QueryDim + c.KvDim) * sizeof(float), _up.Length - c.QueryDim - c.KvDim);

            _kv = new CudaKvStorage(_device, _stream, c, kvBlocks, options.KvBlockSize, options.KvDType, _kivi, kiviSlots);
            if (_kivi != null)
            {
                _kiviPartial = DeviceBuffer<float>.Allocate(_device, CudaMemoryPlan.KiviPartialFloats(c, options.MaxTokensPerStep));
                _kiviLists = DeviceBuffer<int>.Allocate(_device, CudaMemoryPlan.KiviListsInts(_layout));
                _pinnedKiviLists = _device.AllocatePinned(CudaMemoryPlan.KiviListsInts(_layout) * sizeof(int));
            }
            _pinnedLogits = _device.AllocatePinned((long)options.MaxTokensPerStep * c.VocabSize * sizeof(float));
            _pinnedInts = _device.AllocatePinned(_layout.IntRegionInts * sizeof(int));
            _draws = DeviceBuffer<byte>.Allocate(_device, DrawLayout.Bytes(options.MaxTokensPerStep));
            _pinnedDraws = _device.AllocatePinned(DrawLayout.Bytes(options.MaxTokensPerStep));
            if (weights.MaxW4A8PaddedIn > 0)
            {
                _xq = DeviceBuffer<sbyte>.Allocate(_device, (long)options.MaxTokensPerStep * weights.MaxW4A8PaddedIn);
                _xScale = DeviceBuffer<float>.Allocate(_device, options.MaxTokensPerStep);
                _xSum = DeviceBuffer<int>.Allocate(_device, options.MaxTokensPerStep);
            }
            var tuning = KernelTuning.For(device.Name);
            _tiledDecode = options.TiledDecodeAttention ?? tuning.TiledDecodeAttention;
            _radixSampling = options.RadixSampling ?? tuning.RadixSampling;
            _mmaAttention = _kivi == null && (options.TensorCoreAttention ?? tuning.TensorCoreAttention) &&
                            OpsLaunchPlans.MmaAttentionSupports(options.KvDType switch { TensorDType.F16 => "f16", TensorDType.BF16 => "bf16", _ => "f32" }, c.HeadDim, c.NumHeads, c.NumKvHeads);
            _attentionTileKeys = tuning.AttentionTileKeys;
            _w4a8SplitK = weights.MaxW4A8PaddedIn > 0 && (options.W4A8SplitK ?? tuning.W4A8SplitK);
            _fusedGemv = options.FusedGemv ?? tuning.FusedGemv;
            _fusedRope = options.FusedRopeAppend ?? tuning.FusedRopeAppend;
            if (_w4a8SplitK) _w4a8Partial = DeviceBuffer<int>.Allocate(_device, weights.W4A8SplitKInts);
            _ltMinRows = options.UseCublasLt switch { true => 1, false => int.MaxValue, null => tuning.CublasLtMinRows };
            KernelChoices = $"decode attention {(_tiledDecode ? "tiled" : "CUDA-core")}, sampler {(_radixSampling ? "radix" : "bisection")}, " +
                            $"GEMMs {(_ltMinRows == int.MaxValue ? "ours" : _ltMinRows <= 1 ? "cuBLASLt" : $"cuBLASLt from {_ltMinRows} rows")}, " +
                            (_kivi != null ? $"KIVI attention (fp16 window per query row + kivi_decode_attention_split over the compact blocks; no Hydragen levels)"
                                : $"prefill and shared-prefix attention {(_mmaAttention ? $"tensor-core ({_attentionTileKeys}-key tiles, Hydragen levels)" : "CUDA-core (per sequence)")}") +
                            (weights.MaxW4A8PaddedIn > 0 ? $", W4A8 decode GEMM {(_w4a8SplitK ? "split-K" : "two-stage")}" : "") +
                            $", decode GEMVs {(_fusedGemv ? "fused (norm + q|k|v, norm + gate|up + SwiGLU, residual adds)" : "one per projection")}" +
                            $", RoPE {(_fusedRope ? "fused with kv_append" : "and kv_append apart")} ({tuning.Source})";
            if (_mmaAttention)
            {
                _attentionPartial = DeviceBuffer<float>.Allocate(_device, CudaMemoryPlan.AttentionPartialFloats(c, options.MaxTokensPerStep));
                _attentionInts = DeviceBuffer<int>.Allocate(_device, CudaMemoryPlan.AttentionWorkInts(options.MaxTokensPerStep));
                _pinnedAttention = _device.AllocatePinned(CudaMemoryPlan.AttentionWorkInts(options.MaxTokensPerStep) * sizeof(int));
            }
            if (_ltMinRows != int.MaxValue)
            {
                _lt = new CublasLtGemm(_device);
                _half = DeviceBuffer<byte>.Allocate(_device, CudaMemoryPlan.CublasLtBytes(c, options.MaxTokensPerStep) - CublasLtGemm.WorkspaceBytes);
            }
            _stepStart = _device.CreateEvent();
            _stepEnd = _device.CreateEvent();
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The paged KV memory the step appends to and attends over (the backend's KvBlockPool hands out its blocks).</summary>
    public CudaKvStorage Kv => _kv;

    /// <summary>Whether decode steps run as CUDA graphs, with counts, or why not.</summary>
    public string GraphStatus => _graphs.Describe();

    /// <summary>
    /// Internal steps run so far and the GPU's time over them (from before a step's input copy to after its output
    /// copy, CUDA events): the rest of a step's wall time is the host's (scheduling, staging, launches, choosing).
    /// </summary>
    public (long Steps, double GpuMilliseconds) GpuTime => (_timedSteps, _gpuMilliseconds);
    private long _timedSteps;
    private double _gpuMilliseconds;

    // ---- the step ---------------------------------------------------------------------------------------------------

    /// <summary>
    /// sample_tokens_f32's arrays in one block (so one copy each way), M rows each: coins (fp64), temperature, top-k,
    /// top-p, min-p, then the tokens it writes.
    /// </summary>
    private static class DrawLayout
    {
        public static long Bytes(int m) => 28L * m;
        public static long Coins(int m) => 0;
        public static long Temperature(int m) => 8L * m;
        public static long TopK(int m) => 12L * m;
        public static long TopP(int m) => 16L * m;
        public static long MinP(int m) => 20L * m;
        public static long Tokens(int m) => 24L * m;
    }

    /// <summary>A step's draws on the device: per sequence its draw, the candidates per row, and where the tokens go.</summary>
    public sealed record Sampling(DeviceDraw[] Draws, int Vocab, int[] Tokens);

    /// <summary>
    /// One internal step of at most MaxTokensPerStep rows: stages the pieces' inputs, runs the forward (replaying a
    /// captured graph for a decode step where it can), then either copies the selected rows' logits into
    /// <paramref name="result"/> or, with <paramref name="sampling"/>, samples each selected row on the device and
    /// copies back only the token ids.
    /// </summary>
    public void Run(List<Piece> pieces, IReadOnlyList<SequenceStep> batch, KvSequence[] seqs, AttentionPlan plan, float[][]? result, Sampling? sampling = null)
    {
        var c = _config;
        int bs = _options.KvBlockSize;
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
        // A graph step: one token per sequence and the logits of every row, in row order (what the capture recorded).
        // Its tables are as wide as the bucket and its split plan is made for the bucket's capacity, so the captured
        // arguments hold for every step of the key. A decode step with shared levels is a graph too: its work items
        // (in fixed device regions) are padded to a bucket of AttentionItemBucket, which joins the key.
        // KIVI: the blocks this step compacts and each row's split between compact blocks and its fp16 window. A step that
        // quantizes blocks its own rows write (a prefill) quantizes inside its layers, so it is not a graph.
        var kivi = _kivi != null ? PlanKivi(pieces, seqs) : null;
        bool graph = decode && everyRowSelected && _graphs.Enabled && (kivi == null || kivi.InLayer.Count == 0);
        if (graph)
        {
            width = DecodeGraphCache.BucketBlocks(width, _layout.MaxBlocksPerSeq);
            maxSeqLen = width * bs;
        }
        // Attention through paged_attention_mma (prefill, and decode steps with shared levels), else the decode or prefill kernel.
        var work = PlanAttention(pieces, plan, rows, decode, width);
        if (graph && work != null) work = work.Padded(AttentionItemBucket);

        // Step inputs: staged in pinned memory with the scratch's int layout, then one host-to-device copy.
        var ints = _pinnedInts.AsSpan<int>();
        long baseOffset = _layout.Ids.Offset;
        int At((long Offset, long Ints) s) => (int)((s.Offset - baseOffset) / 4);
        var ids = ints.Slice(At(_layout.Ids), checked((int)(rows)));
        var positions = ints.Slice(At(_layout.Positions), checked((int)(rows)));
        var slots = ints.Slice(At(_layout.Slots), checked((int)(rows)));
        var seqLens = ints.Slice(At(_layout.SeqLens), checked((int)(numSeqs)));
        var qStarts = ints.Slice(At(_layout.QStarts), checked((int)(numSeqs + 1)));
        int tableRows = kivi != null ? rows : numSeqs; // KIVI: a table of block ids per query row, else per sequence
        var tables = ints.Slice(At(_layout.BlockTables), checked((int)((long)tableRows * width)));
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
                slots[row] = _kv.Slot(blocks[pos / bs]) * bs + pos % bs;
                int index = p.Offset + t;
                if (batch[p.Seq].AllLogits) logitRows.Add((row, p.Seq, index));
                else if (index == tokens.Length - 1) logitRows.Add((row, p.Seq, 0));
            }
            if (kivi != null) continue;
            int used = (seqLens[i] + bs - 1) / bs;
            var table = tables.Slice(i * width, width);
            for (int j = 0; j < width; j++) table[j] = j < used ? blocks[j] : 0;
        }
        qStarts[numSeqs] = row;
        if (kivi != null) StageKiviRows(kivi, pieces, seqs, width, tables, ints.Slice(At(_layout.WindowTables), rows * _layout.KiviWindowWidth),
            ints.Slice(At(_layout.WindowLens), rows), ints.Slice(At(_layout.NumCompact), rows));
        long copyInts = (_layout.BlockTables.Offset - baseOffset) / 4 + (long)tableRows * width;
        IntPtr stream = _stream.DangerousGetHandle();
        _device.MakeCurrent();
        Cu.Check(CuApi.cuEventRecord(_stepStart.DangerousGetHandle(), stream), _device.Ordinal);
        if (kivi != null) QuantizeBeforeStep(kivi, stream);
        Cu.Check(CuApi.cuMemcpyHtoDAsync(_scratch.Pointer + (ulong)baseOffset, (void*)_pinnedInts.DangerousGetHandle(), (nuint)(copyInts * 4), stream),
            _device.Ordinal);
        var workBuffers = work == null ? null : UploadAttentionWork(work, stream);
        var seqLensBuffer = _scratch.View<int>(_layout.SeqLens.Offset, numSeqs);
        var tablesBuffer = _scratch.View<int>(_layout.BlockTables.Offset, (long)tableRows * width);

        int selected = logitRows.Count;
        void Enqueue() => EnqueueForward(rows, numSeqs, width, maxCount, maxSeqLen, decode, seqLensBuffer, tablesBuffer, logitRows, work, workBuffers,
            kivi == null ? null : kivi with { MaxCompact = graph ? width : kivi.MaxCompact });
        if (graph && _graphs.GetOrCapture(new DecodeGraphKey(numSeqs, width, work?.ItemCount ?? 0), _device, _stream, Enqueue) is { } exec)
            _device.LaunchGraph(exec, _stream);
        else
            Enqueue();
        if (selected > 0 && sampling != null) SampleOnDevice(sampling, logitRows, stream);
        else if (selected > 0)
            Cu.Check(CuApi.cuMemcpyDtoHAsync((void*)_pinnedLogits.DangerousGetHandle(), _logits.Pointer, (nuint)((long)selected * c.VocabSize * 4), stream),
                _device.Ordinal);
        Cu.Check(CuApi.cuEventRecord(_stepEnd.DangerousGetHandle(), stream), _device.Ordinal);
        // Every step ends synchronized: the pinned staging is reused by the next step, and kernel faults surface here.
        Cu.Check(CuApi.cuStreamSynchronize(stream), _device.Ordinal);
        Cu.Check(CuApi.cuEventElapsedTime(out float gpuMs, _stepStart.DangerousGetHandle(), _stepEnd.DangerousGetHandle()), _device.Ordinal);
        _timedSteps++;
        _gpuMilliseconds += gpuMs;
        if (kivi != null) // the compact records are written: the fp16 slots go back (the last rows that read them ran)
            foreach (int block in kivi.Compacting) kivi.Pool.Compact(block);
        if (sampling != null)
        {
            var tokens = _pinnedDraws.AsSpan<byte>().Slice((int)DrawLayout.Tokens(_options.MaxTokensPerStep), selected * 4);
            var sampled = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(tokens);
            for (int i = 0; i < selected; i++) sampling.Tokens[logitRows[i].Seq] = sampled[i];
            return;
        }
        if (result == null) throw new ArgumentNullException(nameof(result), "a step without device sampling returns logits");
        var logits = _pinnedLogits.AsSpan<float>();
        for (int i = 0; i < selected; i++)
        {
            var (_, s, index) = logitRows[i];
            logits.Slice(i * c.VocabSize, c.VocabSize).CopyTo(result[s].AsSpan(index * c.VocabSize, c.VocabSize));
        }
    }

    /// <summary>
    /// Stages the selected rows' draws (in _logits' row order), copies them up, samples with sample_tokens_f32 and
    /// queues the copy of the token ids back into the pinned staging; the caller synchronizes.
    /// </summary>
    private void SampleOnDevice(Sampling sampling, List<(int Row, int Seq, int Index)> logitRows, IntPtr stream)
    {
        int m = _options.MaxTokensPerStep, selected = logitRows.Count;
        var staging = _pinnedDraws.AsSpan<byte>();
        var coins = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, double>(staging.Slice((int)DrawLayout.Coins(m), 8 * m));
        var temperature = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(staging.Slice((int)DrawLayout.Temperature(m), 4 * m));
        var topK = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(staging.Slice((int)DrawLayout.TopK(m), 4 * m));
        var topP = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(staging.Slice((int)DrawLayout.TopP(m), 4 * m));
        var minP = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(staging.Slice((int)DrawLayout.MinP(m), 4 * m));
        for (int i = 0; i < selected; i++)
        {
            var d = sampling.Draws[logitRows[i].Seq];
            (coins[i], temperature[i], topK[i], topP[i], minP[i]) = (d.Coin, d.Temperature, d.TopK, d.TopP, d.MinP);
        }
        Cu.Check(CuApi.cuMemcpyHtoDAsync(_draws.Pointer, (void*)_pinnedDraws.DangerousGetHandle(), (nuint)DrawLayout.Tokens(m), stream), _device.Ordinal);
        var tokens = _draws.View<int>(DrawLayout.Tokens(m), m);
        _ops.SampleTokensF32(tokens, _draws.View<double>(DrawLayout.Coins(m), m), _logits, _config.VocabSize, _draws.View<float>(DrawLayout.Temperature(m), m),
            _draws.View<int>(DrawLayout.TopK(m), m), _draws.View<float>(DrawLayout.TopP(m), m), _draws.View<float>(DrawLayout.MinP(m), m), selected, sampling.Vocab,
            _radixSampling);
        Cu.Check(CuApi.cuMemcpyDtoHAsync((void*)(_pinnedDraws.DangerousGetHandle() + (nint)DrawLayout.Tokens(m)), tokens.Pointer, (nuint)(selected * 4), stream),
            _device.Ordinal);
    }

    /// <summary>
    /// The device work of a step after its inputs are on the device, up to the logits of the selected rows in _logits:
    /// launches and device-to-device copies on the stream only (no host synchronization), so it can be captured.
    /// </summary>
    private void EnqueueForward(int rows, int numSeqs, int width, int maxCount, int maxSeqLen, bool decode, DeviceBuffer<int> seqLensBuffer,
        DeviceBuffer<int> tablesBuffer, List<(int Row, int Seq, int Index)> logitRows, AttentionWork? work, OpsLauncher.AttentionWorkBuffers? workBuffers,
        KiviPlan? kivi)
    {
        var c = _config;
        int h = c.HiddenSize, qd = c.QueryDim, kvd = c.KvDim, ff = c.IntermediateSize;
        IntPtr stream = _stream.DangerousGetHandle();
        Embed(rows);
        float eps = (float)c.RmsNormEps;
        for (int l = 0; l < c.NumLayers; l++)
        {
            var w = _weights.Layers[l];
            // Decode rows (at most 4) of dense q, k, v: one fused GEMV with the norm folded in. Otherwise the norm
            // (a norm feeding only W4A8 layers is fused with their int8 quantization, rms_norm_quant_int8, and _xn is
            // not written; one feeding cuBLASLt also writes its 16-bit copy), then one q|k|v GEMM or three projections.
            _qkvJoined = false;
            if (!QkvGemv(w, rows, eps))
            {
                bool fused = NormFor(w.AttentionNorm, rows, eps, w.Wq, w.Wk, w.Wv, w.Bq);
                if (!QkvGemm(w, rows, fused))
                {
                    Linear(_q, _xn, w.Wq, w.Bq, rows, qd, h, reuse: fused);
                    Linear(_k, _xn, w.Wk, w.Bk, rows, kvd, h, reuse: true);
                    Linear(_v, _xn, w.Wv, w.Bv, rows, kvd, h, reuse: true);
                }
            }
            // RoPE is applied with kv_append (AppendKv) when fused: one launch instead of two, the same bits.
            if (!_fusedRope) _ops.RopeF32(_q, _k, _positions, _invFreq, rows, c.NumHeads, c.NumKvHeads, c.HeadDim);
            if (kivi != null) KiviAppendAndAttend(l, rows, width, tablesBuffer, kivi);
            else AppendAndAttend(l, rows, numSeqs, width, maxCount, maxSeqLen, decode, seqLensBuffer, tablesBuffer, work, workBuffers);
            LinearAdd(_x, _attn, w.Wo, rows, h, qd);
            bool downInput16 = false;
            if (!SwiGluGemv(w, rows, eps))
            {
                bool fused = NormFor(w.FfnNorm, rows, eps, w.Gate, w.Up);
                if (!GateUpGemm(w, rows, fused, ref downInput16))
                {
                    Linear(_gate, _xn, w.Gate, null, rows, ff, h, reuse: fused);
                    Linear(_up, _xn, w.Up, null, rows, ff, h, reuse: true);
                    _ops.SwiGluF32(_gate, _gate, _up, rows, ff);
                }
            }
            LinearAdd(_x, _gate, w.Down, rows, h, ff, reuse: downInput16);
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
            Norm(_selectedNorm, _selected, _weights.FinalNorm, selected, eps);
            Linear(_logits, _selectedNorm, _lmHead, null, selected, c.VocabSize, h);
        }
    }

    // ---- dtype dispatch: one generic action per launch, T from the tensor's device dtype ----------------------------

    private void Embed(int rows)
    {
        var embed = new EmbedAction(this, rows);
        DeviceDType.Dispatch(_weights.Embedding.DType, ref embed, _weights.Embedding.Name, "embedding in");
    }

    private readonly struct EmbedAction(CudaStep s, int rows) : IDeviceDTypeAction
    {
        public void Run<T>() where T : unmanaged =>
            s._ops.EmbeddingGather(s._x, s._weights.Embedding.View<T>(), s._ids, rows, s._config.HiddenSize, s._config.VocabSize);
    }

    private void Norm(DeviceBuffer<float> y, DeviceBuffer<float> x, GpuTensor w, int rows, float eps)
    {
        var norm = new NormAction(this, y, x, w, rows, eps);
        DeviceDType.Dispatch(w.DType, ref norm, w.Name, "norm weight in");
    }

    /// <summary>
    /// RMSNorm of _x for the projections that read it: when they are all W4A8 (one padded K), fused with their int8
    /// quantization into the W4A8 scratch (returns true: the codes stand for _xn); when the first is dense and runs
    /// through cuBLASLt (no bias <paramref name="aBias"/>), into _xn and its 16-bit copy in a's dtype (returns true: the
    /// copy stands for _xn, so a's GEMM converts nothing); otherwise into _xn.
    /// </summary>
    private bool NormFor(GpuTensor norm, int rows, float eps, GpuLinear a, GpuLinear b, GpuLinear? c = null, GpuTensor? aBias = null)
    {
        // Fused when every reader is W4A8 with one padded K (checked without allocating: this runs per layer per step).
        int padded = a is GpuW4A8 qa && b is GpuW4A8 qb && qb.PaddedIn == qa.PaddedIn && (c is null || c is GpuW4A8 qc && qc.PaddedIn == qa.PaddedIn)
            ? qa.PaddedIn : 0;
        if (_xq == null || padded == 0)
        {
            if (LtRows(rows) && aBias == null && a is GpuDense d && d.Weight.DType is TensorDType.F16 or TensorDType.BF16)
            {
                var to16 = new NormTo16Outer(this, norm, rows, eps);
                DeviceDType.Dispatch(d.Weight.DType, ref to16, d.Weight.Name, "GEMM weight in");
                (_halfFrom, _halfType) = (_xn, d.Weight.DType);
                return true;
            }
            Norm(_xn, _x, norm, rows, eps);
            return false;
        }
        var fused = new NormQuantAction(this, norm, rows, eps, padded);
        DeviceDType.Dispatch(norm.DType, ref fused, norm.Name, "norm weight in");
        _quantFrom = _xn;
        return true;
    }

    /// <summary>Whether a dense projection without a bias runs through cuBLASLt at <paramref name="m"/> rows (its input rounded to 16 bits first).</summary>
    private bool LtRows(int m) => _lt != null && m >= _ltMinRows;

    /// <summary>rms_norm_*_to_* into _xn and _half as TO (the GEMM weight's type), dispatched on the norm weight's type inside.</summary>
    private readonly struct NormTo16Outer(CudaStep s, GpuTensor w, int rows, float eps) : IDeviceDTypeAction
    {
        public void Run<TO>() where TO : unmanaged
        {
            var inner = new NormTo16Action<TO>(s, w, rows, eps);
            DeviceDType.Dispatch(w.DType, ref inner, w.Name, "norm weight in");
        }
    }

    private readonly struct NormTo16Action<TO>(CudaStep s, GpuTensor w, int rows, float eps) : IDeviceDTypeAction where TO : unmanaged
    {
        public void Run<TW>() where TW : unmanaged =>
            s._ops.RmsNormTo16(s._xn, s._half!.View<TO>(0, (long)rows * s._config.HiddenSize), s._x, w.View<TW>(), rows, s._config.HiddenSize, eps);
    }

    private readonly struct SwiGluTo16Action(CudaStep s, int rows) : IDeviceDTypeAction
    {
        public void Run<TO>() where TO : unmanaged =>
            s._ops.SwiGluFusedTo16(s._gate, s._half!.View<TO>(0, (long)rows * s._config.IntermediateSize), s._up, rows, s._config.IntermediateSize);
    }

    private readonly struct NormQuantAction(CudaStep s, GpuTensor w, int rows, float eps, int padded) : IDeviceDTypeAction
    {
        public void Run<T>() where T : unmanaged =>
            s._ops.RmsNormQuantInt8(s._xq!, s._xScale!, s._xSum!, s._x, w.View<T>(), rows, s._config.HiddenSize, padded, eps);
    }

    private readonly struct NormAction(CudaStep s, DeviceBuffer<float> y, DeviceBuffer<float> x, GpuTensor w, int rows, float eps) : IDeviceDTypeAction
    {
        public void Run<T>() where T : unmanaged => s._ops.RmsNorm(y, x, w.View<T>(), rows, s._config.HiddenSize, eps);
    }

    private void Gemm(DeviceBuffer<float> y, DeviceBuffer<float> x, GpuTensor w, GpuTensor? bias, int m, int n, int k)
    {
        // The GEMM kernels exist for F16 and BF16 weights (DeviceWeights.MatrixTarget never places an F32 matrix).
        if (w.DType == TensorDType.F32) throw new NotSupportedException($"{w.Name}: GEMM weight in {w.DType.Name()}");
        var gemm = new GemmAction(this, y, x, w, bias, m, n, k);
        DeviceDType.Dispatch(w.DType, ref gemm, w.Name, "GEMM weight in");
    }

    private readonly struct GemmAction(CudaStep s, DeviceBuffer<float> y, DeviceBuffer<float> x, GpuTensor w, GpuTensor? bias, int m, int n, int k)
        : IDeviceDTypeAction
    {
        public void Run<T>() where T : unmanaged => s._ops.DenseGemm(y, x, w.View<T>(), bias?.View<T>(), m, n, k);
    }

    /// <summary>
    /// y = x W^T (+ bias): through cuBLASLt when it is on and there is no bias (x rounded to W's type first, or the
    /// copy of the previous call reused when <paramref name="reuse"/> and it holds the same x in the same type),
    /// otherwise our GEMM kernels.
    /// </summary>
    private void Linear(DeviceBuffer<float> y, DeviceBuffer<float> x, GpuLinear linear, GpuTensor? bias, int m, int n, int k, bool reuse = false)
    {
        // A quantized layer's bias (Qwen2's q/k/v; fp32 on the device) is one fp32 add after its GEMM, as the CPU adds it.
        if (linear is GpuW4A8 q)
        {
            W4A8(y, x, q, m, reuse);
            if (bias != null) _ops.BiasAddF32(y, bias.View<float>(), m, n);
            return;
        }
        if (linear is GpuSqueeze sq)
        {
            Squeeze(y, x, sq, m);
            if (bias != null) _ops.BiasAddF32(y, bias.View<float>(), m, n);
            return;
        }
        var w = ((GpuDense)linear).Weight;
        if (_lt == null || bias != null || m < _ltMinRows)
        {
            Gemm(y, x, w, bias, m, n, k);
            return;
        }
        var lt = new LtAction(this, y, x, w, m, n, k, accumulate: false, convert: !(reuse && ReferenceEquals(_halfFrom, x) && _halfType == w.DType));
        DeviceDType.Dispatch(w.DType, ref lt, w.Name, "GEMM weight in");
    }

    /// <summary>x += input W^T (a residual projection): one cuBLASLt GEMM with beta = 1, or our GEMM into _proj and residual_add.</summary>
    private void LinearAdd(DeviceBuffer<float> x, DeviceBuffer<float> input, GpuLinear linear, int m, int n, int k, bool reuse = false)
    {
        if (linear is GpuW4A8 or GpuSqueeze)
        {
            Linear(_proj, input, linear, null, m, n, k);
            _ops.ResidualAddF32(x, _proj, m * n);
            return;
        }
        var w = ((GpuDense)linear).Weight;
        if (FusedGemvRows(m))
        {
            var add = new ResidualGemvAction(this, x, input, w, m, n, k);
            DeviceDType.Dispatch(w.DType, ref add, w.Name, "GEMM weight in");
            return;
        }
        if (_lt == null || m < _ltMinRows)
        {
            Gemm(_proj, input, w, null, m, n, k);
            _ops.ResidualAddF32(x, _proj, m * n);
            return;
        }
        var lt = new LtAction(this, x, input, w, m, n, k, accumulate: true, convert: !(reuse && ReferenceEquals(_halfFrom, input) && _halfType == w.DType));
        DeviceDType.Dispatch(w.DType, ref lt, w.Name, "GEMM weight in");
    }

    /// <summary>
    /// y = x W^T for a W4A8 layer: x's rows quantized per token (quantize_int8_f32, Int8Activations' bytes; skipped when
    /// <paramref name="reuse"/> and the codes already hold x at this padding), then w4a8_gemm (exact int32 accumulation).
    /// </summary>
    private void W4A8(DeviceBuffer<float> y, DeviceBuffer<float> x, GpuW4A8 q, int m, bool reuse)
    {
        if (!(reuse && ReferenceEquals(_quantFrom, x)))
        {
            _ops.QuantizeInt8F32(_xq!, _xScale!, _xSum!, x, m, q.InFeatures, q.PaddedIn);
            _quantFrom = x;
        }
        if (_w4a8SplitK && m <= OpsLaunchPlans.W4A8SmallMMax)
            _ops.W4A8GemmSplitK(y, _xq!, _xScale!, q.GroupSize > 0 ? null : _xSum, q.Codes.Bytes(), q.Scales.View<Half>(), q.GroupScales?.Bytes(), q.Zeros.Bytes(),
                _w4a8Partial, m, q.OutFeatures, q.InFeatures, q.GroupSize);
        else
            _ops.W4A8Gemm(y, _xq!, _xScale!, q.GroupSize > 0 ? null : _xSum, q.Codes.Bytes(), q.Scales.View<Half>(), q.GroupScales?.Bytes(), q.Zeros.Bytes(),
                m, q.OutFeatures, q.InFeatures, q.GroupSize);
    }

    /// <summary>y = x W^T for a SqueezeLLM layer: squeezellm_gemv (lookup-table codes plus CSR outliers), 8 rows per launch.</summary>
    private void Squeeze(DeviceBuffer<float> y, DeviceBuffer<float> x, GpuSqueeze s, int m) =>
        _ops.SqueezeGemv(y, x, s.Bits, s.Codes.View<int>(), s.Table.View<Half>(), s.OutlierRows.View<int>(), s.OutlierCols.View<int>(),
            s.OutlierValues.View<float>(), m, s.OutFeatures, s.InFeatures);

    // ---- fused decode GEMVs ------------------------------------------------------------------------------------------

    /// <summary>Whether an <paramref name="m"/>-row dense projection runs on our GEMV, fused where it can be (not cuBLASLt).</summary>
    private bool FusedGemvRows(int m) => _fusedGemv && m <= OpsLaunchPlans.GemvMaxRows && (_lt == null || m < _ltMinRows);

    /// <summary>
    /// The attention norm and the three dense projections of one dtype (biases all or none) in one dense_gemv_qkv_norm
    /// launch, reading _x (the norm folded into the tile); false: not fusable.
    /// </summary>
    private bool QkvGemv(GpuLayer w, int rows, float eps)
    {
        if (!FusedGemvRows(rows) || w.Wq is not GpuDense q || w.Wk is not GpuDense k || w.Wv is not GpuDense v) return false;
        var t = q.Weight.DType;
        if (k.Weight.DType != t || v.Weight.DType != t || t is not (TensorDType.F16 or TensorDType.BF16)) return false;
        if ((w.Bq == null) != (w.Bk == null) || (w.Bk == null) != (w.Bv == null)) return false;
        var action = new QkvGemvAction(this, w.AttentionNormF32!, eps, q.Weight, k.Weight, v.Weight, w.Bq, w.Bk, w.Bv, rows);
        DeviceDType.Dispatch(t, ref action, q.Weight.Name, "GEMM weight in");
        return true;
    }

    /// <summary>
    /// The MLP norm, gate and up (dense, one dtype) and the SwiGLU in one dense_gemv_swiglu_norm launch from _x into
    /// _gate; false: not fusable.
    /// </summary>
    private bool SwiGluGemv(GpuLayer w, int rows, float eps)
    {
        if (!FusedGemvRows(rows) || w.Gate is not GpuDense g || w.Up is not GpuDense u) return false;
        var t = g.Weight.DType;
        if (u.Weight.DType != t || t is not (TensorDType.F16 or TensorDType.BF16)) return false;
        var action = new SwiGluGemvAction(this, w.FfnNormF32!, eps, g.Weight, u.Weight, rows);
        DeviceDType.Dispatch(t, ref action, g.Weight.Name, "GEMM weight in");
        return true;
    }

    /// <summary>
    /// q, k and v as one GEMM over their adjacent rows (GpuLayer.Qkv) into _up's [rows, q_dim + 2 kv_dim], which
    /// rope_kv_append reads in place of _q, _k, _v (so only with RoPE fused with kv_append, and without biases): two
    /// launches fewer per layer and one wide GEMM instead of two narrow ones; false: not taken.
    /// </summary>
    private bool QkvGemm(GpuLayer w, int rows, bool reuse)
    {
        if (w.Qkv == null || !_fusedRope || w.Bq != null || w.Bk != null || w.Bv != null) return false;
        var c = _config;
        Linear(_up, _xn, w.Qkv, null, rows, c.QueryDim + 2 * c.KvDim, c.HiddenSize, reuse);
        _qkvJoined = true;
        return true;
    }

    /// <summary>
    /// gate and up as one GEMM over their adjacent rows (GpuLayer.GateUp) into _up's [rows, 2 I], then swiglu_fused_f32
    /// into _gate (and, when down runs through cuBLASLt, its 16-bit copy: <paramref name="downInput16"/>): one launch
    /// fewer per layer and twice the output columns per GEMM (more CTAs at small M, one cuBLASLt call); false: not
    /// adjacent (another format or dtype).
    /// </summary>
    private bool GateUpGemm(GpuLayer w, int rows, bool reuse, ref bool downInput16)
    {
        if (w.GateUp == null) return false;
        int ff = _config.IntermediateSize;
        Linear(_up, _xn, w.GateUp, null, rows, 2 * ff, _config.HiddenSize, reuse);
        if (LtRows(rows) && w.Down is GpuDense down && down.Weight.DType is TensorDType.F16 or TensorDType.BF16)
        {
            // The down projection's cuBLASLt input written by the SwiGLU itself (swiglu_fused_f32_to_*): no convert launch.
            var to16 = new SwiGluTo16Action(this, rows);
            DeviceDType.Dispatch(down.Weight.DType, ref to16, down.Weight.Name, "GEMM weight in");
            (_halfFrom, _halfType) = (_gate, down.Weight.DType);
            downInput16 = true;
        }
        else _ops.SwiGluFusedF32(_gate, _up, rows, ff);
        return true;
    }

    private readonly struct QkvGemvAction(CudaStep s, GpuTensor norm, float eps, GpuTensor wq, GpuTensor wk, GpuTensor wv, GpuTensor? bq, GpuTensor? bk,
        GpuTensor? bv, int m) : IDeviceDTypeAction
    {
        public void Run<T>() where T : unmanaged =>
            s._ops.DenseGemvQkv(s._q, s._k, s._v, s._x, wq.View<T>(), wk.View<T>(), wv.View<T>(), bq?.View<T>(), bk?.View<T>(), bv?.View<T>(), m,
                s._config.QueryDim, s._config.KvDim, s._config.HiddenSize, (norm.View<float>(), eps));
    }

    private readonly struct SwiGluGemvAction(CudaStep s, GpuTensor norm, float eps, GpuTensor wg, GpuTensor wu, int m) : IDeviceDTypeAction
    {
        public void Run<T>() where T : unmanaged =>
            s._ops.DenseGemvSwiGlu(s._gate, s._x, wg.View<T>(), wu.View<T>(), m, s._config.IntermediateSize, s._config.HiddenSize, (norm.View<float>(), eps));
    }

    private readonly struct ResidualGemvAction(CudaStep s, DeviceBuffer<float> x, DeviceBuffer<float> input, GpuTensor w, int m, int n, int k)
        : IDeviceDTypeAction
    {
        public void Run<T>() where T : unmanaged => s._ops.DenseGemvResidual(x, input, w.View<T>(), m, n, k);
    }

    private readonly struct LtAction(CudaStep s, DeviceBuffer<float> y, DeviceBuffer<float> x, GpuTensor w, int m, int n, int k, bool accumulate, bool convert)
        : IDeviceDTypeAction
    {
        public void Run<T>() where T : unmanaged
        {
            var half = s._half!.View<T>(0, (long)m * k);
            if (convert)
            {
                s._ops.ConvertFromF32(half, x, m * k);
                s._halfFrom = x;
                s._halfType = w.DType;
            }
            if (s._lt!.TryRun(y, half, w.View<T>(), m, n, k, accumulate, s._stream.DangerousGetHandle())) return;
            // No cuBLASLt algorithm for this shape: our kernel, from the fp32 input.
            if (!accumulate) s._ops.DenseGemm(y, x, w.View<T>(), null, m, n, k);
            else
            {
                s._ops.DenseGemm(s._proj, x, w.View<T>(), null, m, n, k);
                s._ops.ResidualAddF32(y, s._proj, m * n);
            }
        }
    }

    private void AppendAndAttend(int layer, int rows, int numSeqs, int width, int maxCount, int maxSeqLen, bool decode,
        DeviceBuffer<int> seqLens, DeviceBuffer<int> tables, AttentionWork? work, OpsLauncher.AttentionWorkBuffers? workBuffers)
    {
        var attend = new AttendAction(this, layer, rows, numSeqs, width, maxCount, maxSeqLen, decode, seqLens, tables, work, workBuffers);
        DeviceDType.Dispatch(_kv.DType, ref attend, null, "KV cache dtype");
    }

    /// <summary>The step's k and v into one layer's blocks (AppendKv), then the tensor-core, decode or prefill attention over them.</summary>
    private readonly struct AttendAction(CudaStep s, int layer, int rows, int numSeqs, int width, int maxCount, int maxSeqLen, bool decode,
        DeviceBuffer<int> seqLens, DeviceBuffer<int> tables, AttentionWork? work, OpsLauncher.AttentionWorkBuffers? workBuffers) : IDeviceDTypeAction
    {
        public void Run<T>() where T : unmanaged
        {
            var c = s._config;
            var store = s._kv;
            var kv = new OpsLauncher.PagedKv<T>(store.Keys<T>(layer), store.Values<T>(layer), tables, seqLens, store.NumBlocks, store.BlockSize, width);
            s.AppendKv(kv.KCache, kv.VCache, rows);
            if (work != null)
                s._ops.PagedAttentionMma(s._attn, s._lse, s._q, kv, work, workBuffers!, s._attentionPartial, rows, c.NumHeads, c.NumKvHeads, c.HeadDim,
                    s._attentionTileKeys);
            else if (decode) s._ops.PagedDecodeAttention(s._attn, s._lse, s._q, kv, s._workspace, numSeqs, c.NumHeads, c.NumKvHeads, c.HeadDim, maxSeqLen,
                s._tiledDecode);
            else s._ops.PagedPrefillAttention(s._attn, s._lse, s._q, kv, s._qStarts, numSeqs, rows, maxCount, c.NumHeads, c.NumKvHeads, c.HeadDim);
        }
    }

    /// <summary>
    /// The step's k and v rows into one layer's cache at their slots: kv_append after rope_f32 (EnqueueForward), or
    /// rope_kv_append rotating q and k and writing the rows in one launch (the same bits).
    /// </summary>
    private void AppendKv<T>(DeviceBuffer<T> keys, DeviceBuffer<T> values, int rows) where T : unmanaged
    {
        var c = _config;
        int qd = c.QueryDim, kvd = c.KvDim;
        if (_qkvJoined)
        {
            // q, k and v are columns of the q|k|v GEMM's rows in _up: q rotated out into _q, k and v into the cache.
            int stride = qd + 2 * kvd;
            _ops.RopeKvAppend(_q, _up, _upK, _upV, stride, stride, keys, values, _positions, _invFreq, _slots, rows,
                c.NumHeads, c.NumKvHeads, c.HeadDim, _kv.NumSlots);
        }
        else if (_fusedRope)
            _ops.RopeKvAppend(_q, _q, _k, _v, qd, kvd, keys, values, _positions, _invFreq, _slots, rows, c.NumHeads, c.NumKvHeads, c.HeadDim, _kv.NumSlots);
        else _ops.KvAppend(keys, values, _k, _v, _slots, rows, c.KvDim, _kv.NumSlots);
    }

    // ---- KIVI: compaction and attention per query row --------------------------------------------------------------

    /// <summary>
    /// A KIVI step: the blocks it compacts (all of them, for the pool at the end; those written before the step,
    /// quantized before it; those its own rows write, quantized in each layer after kv_append), and the most compact
    /// blocks a row reads.
    /// </summary>
    internal sealed record KiviPlan(KvBlockPool Pool, List<int> Compacting, List<int> Before, List<int> InLayer, int[] CompactBefore, int MaxCompact);

    /// <summary>
    /// As the CPU backend's CompactionOf, per internal step: for every piece, the blocks that end at or before its
    /// length after the step minus R and are not compact yet (a block shared by several sequences once). The same rows
    /// read the same blocks quantized as on the CPU: a row's boundary depends on its position and on the blocks that
    /// were compact when its step began, and blocks compacted by an earlier internal step end before that boundary.
    /// </summary>
    private KiviPlan PlanKivi(List<Piece> pieces, KvSequence[] seqs)
    {
        var f = _kivi!;
        int bs = _options.KvBlockSize;
        var pool = seqs[pieces[0].Seq].Pool;
        var all = new List<int>();
        var before = new List<int>();
        var inLayer = new List<int>();
        var seen = new HashSet<int>();
        var compactBefore = new int[pieces.Count];
        int maxCompact = 0;
        for (int i = 0; i < pieces.Count; i++)
        {
            var p = pieces[i];
            var blocks = seqs[p.Seq].Blocks;
            int cb = 0;
            while (cb < blocks.Count && pool.IsCompact(blocks[cb])) cb++;
            compactBefore[i] = cb;
            int first = p.Start + p.Offset, end = first + p.Count;
            int passed = f.BlocksPassed(end);
            for (int b = cb; b < passed; b++)
            {
                if (pool.IsCompact(blocks[b]) || !seen.Add(blocks[b])) continue;
                all.Add(blocks[b]);
                ((b + 1) * bs <= first ? before : inLayer).Add(blocks[b]);
            }
            maxCompact = Math.Max(maxCompact, f.QuantizedEnd(end - 1, cb) / bs);
        }
        if (inLayer.Count > _layout.KiviCompactingCapacity)
            throw new InvalidOperationException($"the step compacts {inLayer.Count} blocks it writes, past the {_layout.KiviCompactingCapacity} reserved");
        return new KiviPlan(pool, all, before, inLayer, compactBefore, maxCompact);
    }

    /// <summary>
    /// Per query row: its block ids [rows, width] (the compact ones are read from there), its window's fp16 slots from
    /// the quantized end on [rows, KiviWindowWidth] with the window's length, and its count of compact blocks.
    /// </summary>
    private void StageKiviRows(KiviPlan kivi, List<Piece> pieces, KvSequence[] seqs, int width, Span<int> ids, Span<int> window, Span<int> windowLens,
        Span<int> numCompact)
    {
        int bs = _options.KvBlockSize, ww = _layout.KiviWindowWidth;
        for (int i = 0, row = 0; i < pieces.Count; i++)
        {
            var p = pieces[i];
            var blocks = seqs[p.Seq].Blocks;
            for (int t = 0; t < p.Count; t++, row++)
            {
                int pos = p.Start + p.Offset + t, end = _kivi!.QuantizedEnd(pos, kivi.CompactBefore[i]), compact = end / bs;
                numCompact[row] = compact;
                windowLens[row] = pos + 1 - end;
                var table = ids.Slice(row * width, width);
                for (int j = 0; j < width; j++) table[j] = j < compact ? blocks[j] : 0;
                var slots = window.Slice(row * ww, ww);
                for (int j = 0; j < ww; j++) slots[j] = end + j * bs <= pos ? _kv.Slot(blocks[compact + j]) : 0;
            }
        }
    }

    /// <summary>
    /// Quantizes the blocks that were full before the step (every layer; their rows are not written by it), in batches
    /// of the lists' capacity; the in-layer list goes up with them, for <see cref="KiviAppendAndAttend"/>.
    /// </summary>
    private void QuantizeBeforeStep(KiviPlan kivi, IntPtr stream)
    {
        if (kivi.Before.Count == 0 && kivi.InLayer.Count == 0) return;
        int cap = _layout.KiviCompactingCapacity;
        var staging = _pinnedKiviLists!.AsSpan<int>();
        for (int i = 0; i < kivi.InLayer.Count; i++)
        {
            staging[2 * cap + i] = kivi.InLayer[i];
            staging[3 * cap + i] = _kv.Slot(kivi.InLayer[i]);
        }
        for (int done = 0; done == 0 || done < kivi.Before.Count; done += cap)
        {
            int n = Math.Min(cap, kivi.Before.Count - done);
            if (done > 0) Cu.Check(CuApi.cuStreamSynchronize(stream), _device.Ordinal); // the staging of the last batch was read
            for (int i = 0; i < n; i++)
            {
                staging[i] = kivi.Before[done + i];
                staging[cap + i] = _kv.Slot(kivi.Before[done + i]);
            }
            Cu.Check(CuApi.cuMemcpyHtoDAsync(_kiviLists!.Pointer, (void*)_pinnedKiviLists.DangerousGetHandle(), (nuint)(CudaMemoryPlan.KiviListsInts(_layout) * sizeof(int)), stream),
                _device.Ordinal);
            for (int l = 0; l < _config.NumLayers && n > 0; l++)
                _ops.KiviQuantizeBlockF32(_kv.Pool(l), _kv.Keys<Half>(l), _kv.Values<Half>(l), _kiviLists.View<int>(0, n), n,
                    _kiviLists.View<int>((long)cap * sizeof(int), n));
        }
    }

    /// <summary>
    /// kv_append into the fp16 slots, the step's own passed blocks quantized (this layer), then per query row: the
    /// fp16 window through the decode kernel (rows as its sequences) and the compact blocks through
    /// kivi_decode_attention_split, merged into (o, lse) through the LSE, as the CPU's two partials.
    /// </summary>
    private void KiviAppendAndAttend(int layer, int rows, int width, DeviceBuffer<int> ids, KiviPlan kivi)
    {
        var c = _config;
        int bs = _options.KvBlockSize, ww = _layout.KiviWindowWidth, cap = _layout.KiviCompactingCapacity;
        var keys = _kv.Keys<Half>(layer);
        var values = _kv.Values<Half>(layer);
        var pool = _kv.Pool(layer);
        AppendKv(keys, values, rows);
        if (kivi.InLayer.Count > 0)
            _ops.KiviQuantizeBlockF32(pool, keys, values, _kiviLists!.View<int>(2L * cap * sizeof(int), kivi.InLayer.Count), kivi.InLayer.Count,
                _kiviLists.View<int>(3L * cap * sizeof(int), kivi.InLayer.Count));
        var window = new OpsLauncher.PagedKv<Half>(keys, values, _scratch.View<int>(_layout.WindowTables.Offset, (long)rows * ww),
            _scratch.View<int>(_layout.WindowLens.Offset, rows), _kv.FullBlocks, bs, ww);
        _ops.PagedDecodeAttention(_attn, _lse, _q, window, _workspace, rows, c.NumHeads, c.NumKvHeads, c.HeadDim, ww * bs, _tiledDecode);
        if (kivi.MaxCompact == 0) return;
        long floats = _kiviPartial!.Length, lseFloats = floats / (c.HeadDim + 1);
        _ops.KiviDecodeAttentionSplit(_attn, _lse, _kiviPartial.View<float>(0, lseFloats * c.HeadDim),
            _kiviPartial.View<float>(lseFloats * c.HeadDim * sizeof(float), lseFloats), _q, pool, ids,
            _scratch.View<int>(_layout.NumCompact.Offset, rows), rows, width, Math.Min(kivi.MaxCompact, width), c.NumHeads, c.NumKvHeads, c.HeadDim);
    }

    // ---- tensor-core attention: the step's work items ---------------------------------------------------------------

    /// <summary>
    /// The step's attention as paged_attention_mma work, or null for the decode or prefill kernel: off, or a decode step
    /// without shared levels (the decode kernel, captured in graphs). The plan's levels whose members are in this internal
    /// step are read once for them; when the partial results would not fit the workspace, the step attends without
    /// levels (each sequence over its own table, exact).
    /// </summary>
    private AttentionWork? PlanAttention(List<Piece> pieces, AttentionPlan plan, int rows, bool decode, int width)
    {
        if (!_mmaAttention) return null;
        var c = _config;
        var pieceOf = new Dictionary<int, int>(pieces.Count);
        for (int i = 0; i < pieces.Count; i++) pieceOf[pieces[i].Seq] = i;
        var levels = new List<AttentionWork.Level>();
        foreach (var level in plan.Levels)
        {
            var members = level.Sequences.Where(pieceOf.ContainsKey).Select(m => pieceOf[m]).ToArray();
            if (members.Length > 0) levels.Add(new AttentionWork.Level(level.Start, level.End, members));
        }
        if (decode && levels.Count == 0) return null;
        AttentionWork? Build(bool leveled)
        {
            var sequences = new AttentionWork.Sequence[pieces.Count];
            for (int i = 0, row = 0; i < pieces.Count; row += pieces[i].Count, i++)
            {
                var p = pieces[i];
                sequences[i] = new AttentionWork.Sequence(row, p.Count, p.Start + p.Offset, i * width, leveled ? plan.SuffixStart[p.Seq] : 0);
            }
            return AttentionWork.Build(sequences, leveled ? levels : [], rows, c.NumHeads / c.NumKvHeads, _attentionTileKeys, c.NumKvHeads,
                2 * _device.MultiprocessorCount, _options.MaxTokensPerStep * CudaMemoryPlan.AttentionSlotsPerRow);
        }
        var work = levels.Count > 0 ? Build(true) : null;
        if (work == null && decode) return null;
        return work ?? Build(false);
    }

    /// <summary>Work items of a captured decode step are padded to a multiple of this (a graph per bucket).</summary>
    private const int AttentionItemBucket = 32;

    /// <summary>
    /// Stages the work's arrays in pinned memory, each at the start of its fixed region (items, row ids, slot starts,
    /// slots: the same device addresses every step, as a captured graph needs), and queues one copy to the device;
    /// returns the device views.
    /// </summary>
    private OpsLauncher.AttentionWorkBuffers UploadAttentionWork(AttentionWork work, IntPtr stream)
    {
        long partial = (long)_options.MaxTokensPerStep * CudaMemoryPlan.AttentionSlotsPerRow;
        long[] capacity = [partial * AttentionWork.ItemInts, partial, _options.MaxTokensPerStep + 1L, partial];
        int[][] arrays = [work.Items, work.RowIds, work.SlotStarts, work.Slots];
        string[] names = ["items", "row ids", "slot starts", "slots"];
        var staging = _pinnedAttention!.AsSpan<int>();
        var offsets = new long[4];
        long at = 0;
        for (int k = 0; k < 4; k++)
        {
            if (arrays[k].Length > capacity[k])
                throw new InvalidOperationException($"the step's attention work has {arrays[k].Length} {names[k]}, past the {capacity[k]} reserved (AttentionWorkInts)");
            arrays[k].CopyTo(staging.Slice((int)at, arrays[k].Length));
            offsets[k] = at * sizeof(int);
            at += capacity[k];
        }
        long used = offsets[3] / sizeof(int) + arrays[3].Length;
        Cu.Check(CuApi.cuMemcpyHtoDAsync(_attentionInts!.Pointer, (void*)_pinnedAttention.DangerousGetHandle(), (nuint)(used * sizeof(int)), stream), _device.Ordinal);
        return new OpsLauncher.AttentionWorkBuffers(_attentionInts.View<int>(offsets[0], work.Items.Length), _attentionInts.View<int>(offsets[1], work.RowIds.Length),
            _attentionInts.View<int>(offsets[2], work.SlotStarts.Length), _attentionInts.View<int>(offsets[3], work.Slots.Length));
    }

    // ---- lifetime ---------------------------------------------------------------------------------------------------

    /// <summary>Frees what the step allocated (graphs, staging, KV, scratch, frequencies); the caller has synchronized the stream.</summary>
    public void Dispose()
    {
        _pinnedKiviLists?.Dispose();
        _kiviLists?.Dispose();
        _kiviPartial?.Dispose();
        _w4a8Partial?.Dispose();
        _pinnedAttention?.Dispose();
        _attentionInts?.Dispose();
        _attentionPartial?.Dispose();
        _stepEnd?.Dispose();
        _stepStart?.Dispose();
        _half?.Dispose();
        _lt?.Dispose();
        _xSum?.Dispose();
        _xScale?.Dispose();
        _xq?.Dispose();
        _graphs?.Dispose();
        _pinnedDraws?.Dispose();
        _draws?.Dispose();
        _pinnedInts?.Dispose();
        _pinnedLogits?.Dispose();
        _kv?.Dispose();
        _scratch?.Dispose();
        _invFreq?.Dispose();
    }
}
