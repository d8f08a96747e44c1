// The CUDA backend: CpuBackend's Llama forward pass step for step on one GPU, one stream, device memory planned up front.
// This file is the facade (support check, construction, Forward's contract, lifetime); DeviceWeights.cs holds the
// weights' dtype policy and upload, CudaStep.cs the step.
using Kernels.Interop;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cuda;

/// <summary>
/// Memory: one arena for the weights (<see cref="DeviceWeights"/>: uploaded once; F16 matrices as stored, BF16 ones as
/// F16 when that is exact, F32 and GGML block (Q4_0..Q8_0, Q2_K..Q6_K) matrices converted to F16, or to BF16 when a
/// value exceeds F16's range; norm vectors F32/F16/BF16 as stored; a bias in its matrix's dtype), one scratch arena for
/// the activations of <see cref="CudaBackendOptions.MaxTokensPerStep"/> token rows, and the paged KV pool
/// (<see cref="CudaKvStorage"/>), sized by <see cref="CudaMemoryPlan"/> from the free memory.
/// A step (<see cref="CudaStep"/>): embedding gather; per layer rms_norm, q/k/v GEMM (+ Qwen2 bias), RoPE, kv_append
/// into the paged blocks, attention (split-K decode when every sequence brings one token, else prefill), o GEMM,
/// residual, rms_norm, gate/up GEMM, SwiGLU, down GEMM, residual; then the final norm and LM head for the rows whose
/// logits are asked for. With the tensor-core attention on (<see cref="CudaBackendOptions.TensorCoreAttention"/>, or this
/// GPU's tuning table), prefill and the shared levels of a Hydragen <see cref="AttentionPlan"/> run as paged_attention_mma
/// work (<see cref="AttentionWork"/>: each level's keys read once for all its members' rows, suffixes causal, partial
/// results merged through the log-sum-exp); otherwise the plan is honoured by attending each sequence over its own
/// block table, which holds the shared physical blocks: exact, without the saving of reading shared keys once. Decode steps are replayed as CUDA graphs (<see cref="DecodeGraphCache"/>) unless
/// <see cref="CudaBackendOptions.UseCudaGraphs"/> is false or a capture failed.
/// </summary>
internal sealed class CudaBackend : IBackend
{
    /// <summary>Head dims both attention kernels are compiled for (one entry per head dim).</summary>
    public static IReadOnlyList<int> SupportedHeadDims => OpsLaunchPlans.AttentionHeadDims;

    private readonly CudaDevice _device;
    private readonly KernelModule _module;
    private readonly CuStreamHandle _stream;
    private readonly OpsLauncher _ops;
    private readonly DeviceWeights _weights;
    private readonly CudaStep _step;
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
        {
            foreach (var w in new[] { layer.Wq, layer.Wk, layer.Wv, layer.Wo, layer.Gate, layer.Up, layer.Down })
                if (w is not (DenseLinear or Quantization.W4A8.W4A8Linear or Quantization.SqueezeLlm.SqueezeLlmLinear))
                    return $"{w.Name} is {w.Format}: not implemented on the CUDA backend yet (F32/F16/BF16, GGML block types, W4A8 and SqueezeLLM only)";
        }
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

    /// <summary>
    /// Why this backend cannot keep <paramref name="c"/>'s KV cache in <paramref name="kivi"/> (null: it can, or the
    /// format is not KIVI). Pure: no driver call.
    /// </summary>
    public static string? WhyUnsupported(ModelConfig c, KvCacheFormat? kivi, TensorDType kvDType = TensorDType.F16)
    {
        ArgumentNullException.ThrowIfNull(c);
        if (kivi is not { IsKivi: true }) return null;
        try
        {
            kivi.Validate(c.KvDim, c.HeadDim);
        }
        catch (ArgumentException e)
        {
            return e.Message;
        }
        if (kvDType != TensorDType.F16)
            return $"the {kivi} KV cache keeps its window in fp16; KvDType {kvDType.Name()} is not used with it";
        if (kivi.Window < 1)
            return $"the {kivi} KV cache on the CUDA backend needs a window of at least 1 token (--kv-window), so every query row reads its own key in fp16";
        if (!OpsLaunchPlans.KiviSplitSupports(c.NumHeads, c.NumKvHeads, c.HeadDim, kivi.Group))
            return $"the {kivi} KV cache on the CUDA backend runs kivi_decode_attention_split, compiled for head_dim " +
                   $"{string.Join(", ", OpsLaunchPlans.KiviSplitHeadDims)}, G in {string.Join(", ", OpsLaunchPlans.KiviSplitGroups)} and up to " +
                   $"{OpsLaunchPlans.KiviSplitMaxGqa} query heads per kv head (the model has head_dim {c.HeadDim}, {c.NumHeads}/{c.NumKvHeads} heads; G = {kivi.Group})";
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
        options = (options ?? new CudaBackendOptions()).Resolved();
        if ((WhyUnsupported(model) ?? WhyUnsupported(model.Config, options.Kivi, options.KvDType)) is { } why) throw new NotSupportedException($"CUDA backend: {why}");
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

            // Weights: every tensor's device dtype and place first (the plan needs the arena's size), then the upload.
            _weights = DeviceWeights.Place(model);
            WeightFormats = _weights.Formats;
            var (free, _) = _device.GetMemoryInfo();
            MemoryPlan = CudaMemoryPlan.Compute(c, _weights.ArenaBytes, free, options, _weights.W4A8ScratchBytes(options.MaxTokensPerStep));
            _weights.Upload(_device);

            _step = new CudaStep(_device, _stream, _ops, c, options, _weights, MemoryPlan.KvBlocks, MemoryPlan.KiviSlots);
            if (options.Kivi is { IsKivi: true } kivi)
            {
                // Fixed regions: a compact record per id, KiviSlots fp16 slots. A full block costs its slot and its record,
                // so the budget in bytes is what the regions hold, and ids and slots bound the pool before it does.
                long slot = MemoryPlan.KvBytesPerBlock, record = MemoryPlan.KiviRecordBytes;
                var costs = new KvBlockCosts(slot + record, record, kivi.WindowBlocks);
                KvPool = new KvBlockPool(MemoryPlan.KvBytes, options.KvBlockSize, _step.Kv, costs, MemoryPlan.KvBlocks, MemoryPlan.KiviSlots);
            }
            else KvPool = new KvBlockPool(MemoryPlan.KvBlocks, options.KvBlockSize, _step.Kv);
            _device.Synchronize();
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public IKvCache CreateCache()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return new KvSequence(KvPool);
    }

    /// <summary>Bytes of KV memory one token takes in every layer (keys and values); KIVI: in its compact form.</summary>
    public long KvBytesPerToken => Options.Kivi is { IsKivi: true }
        ? MemoryPlan.KiviRecordBytes / Options.KvBlockSize
        : 2L * Config.NumLayers * Config.KvDim * CudaMemoryPlan.ElementBytes(Options.KvDType);

    public override string ToString() =>
        $"cuda ({_device}; weights {WeightFormats}; KV {(Options.Kivi is { IsKivi: true } k ? $"{k}: {MemoryPlan.KvBlocks} blocks of {Options.KvBlockSize}, {MemoryPlan.KiviSlots} fp16 slots" : $"{Options.KvDType.Name()} in {MemoryPlan.KvBlocks} blocks of {Options.KvBlockSize}")}; {MemoryPlan}; {GraphStatus}; " +
        $"{_step.KernelChoices})";

    /// <summary>Whether decode steps run as CUDA graphs, with counts, or why not.</summary>
    public string GraphStatus => _step.GraphStatus;

    /// <summary>The kernel variants this backend runs on its GPU and where the choice came from (options or tuning table).</summary>
    public string KernelChoices => _step.KernelChoices;

    /// <summary>Internal steps so far and the GPU's time over them (CUDA events around each step's device work).</summary>
    internal (long Steps, double GpuMilliseconds) GpuTime => _step.GpuTime;

    // ---- forward ----------------------------------------------------------------------------------------------------

    public float[][] Forward(IReadOnlyList<SequenceStep> batch, AttentionPlan? attention = null)
    {
        var result = new float[batch.Count][];
        for (int s = 0; s < batch.Count; s++) result[s] = new float[(long)(batch[s].AllLogits ? batch[s].Tokens.Length : 1) * Config.VocabSize];
        Run(batch, attention, result, null);
        return result;
    }

    /// <summary>
    /// Samples on the device when every draw of the step can be (<see cref="DeviceDraws.Plan"/>): only token ids come
    /// back. Otherwise the logits are copied out and the host chooses, as any backend does.
    /// </summary>
    public StepOutput[] Step(IReadOnlyList<SequenceStep> batch, AttentionPlan? attention = null)
    {
        ArgumentNullException.ThrowIfNull(batch);
        if (DeviceDraws.Plan(batch, Config.VocabSize) is not { } plan) return TokenChooser.Choose(batch, Forward(batch, attention), Config.VocabSize);
        var tokens = new int[batch.Count];
        Run(batch, attention, null, new CudaStep.Sampling(plan.Draws, plan.Vocab, tokens));
        return DeviceDraws.Outputs(batch, tokens);
    }

    private void Run(IReadOnlyList<SequenceStep> batch, AttentionPlan? attention, float[][]? result, CudaStep.Sampling? sampling)
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


        // Internal steps of at most MaxTokensPerStep rows; a sequence longer than what is left continues in the next.
        var pieces = new List<CudaStep.Piece>();
        int rows = 0, max = Options.MaxTokensPerStep;
        for (int s = 0; s < batch.Count; s++)
        {
            int n = batch[s].Tokens.Length;
            for (int offset = 0; offset < n;)
            {
                if (rows == max)
                {
                    _step.Run(pieces, batch, seqs, plan, result, sampling);
                    pieces.Clear();
                    rows = 0;
                }
                int take = Math.Min(n - offset, max - rows);
                pieces.Add(new CudaStep.Piece(s, offset, take, start[s]));
                rows += take;
                offset += take;
            }
        }
        if (pieces.Count > 0) _step.Run(pieces, batch, seqs, plan, result, sampling);
        for (int s = 0; s < batch.Count; s++) seqs[s].Advance(batch[s].Tokens.Length);
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
        _step?.Dispose();
        _weights?.Dispose();
        _stream?.Dispose();
        _module?.Dispose();
        _device?.Dispose();
    }
}
