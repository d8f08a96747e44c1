// How the CUDA backend divides device memory: weights arena, activation scratch for a maximum step, paged KV pool. Pure
// functions of the model shape, the options and the free memory, so they are tested without a GPU.
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Quantization;

namespace Kernels.Runtime.Backends.Cuda;

/// <summary>Options of <see cref="CudaBackend"/>; parsed once at the edge (CLI, bench) and passed down.</summary>
public sealed record CudaBackendOptions
{
    /// <summary>CUDA device ordinal.</summary>
    public int Device { get; init; }
    /// <summary>Tokens per KV block.</summary>
    public int KvBlockSize { get; init; } = 16;
    /// <summary>Bytes of KV cache; null: <see cref="KvMemoryFraction"/> of the memory left after weights and scratch.</summary>
    public long? KvCacheBytes { get; init; }
    /// <summary>Share of the free memory left after weights, scratch and <see cref="ReserveBytes"/> that the KV pool takes.</summary>
    public double KvMemoryFraction { get; init; } = 0.9;
    /// <summary>
    /// Most token rows one internal step runs (activation scratch is sized for it). A Forward call with more rows is
    /// run as several steps in order, splitting a long prompt into chunks, which is exact (causal attention over the cache).
    /// </summary>
    public int MaxTokensPerStep { get; init; } = 512;
    /// <summary>
    /// The KV cache's element type: F16 (default; 10-bit mantissa, what the attention kernels read fastest), BF16, or
    /// F32 (bit-exact keys and values as the CPU backend keeps them, twice the bytes).
    /// </summary>
    public TensorDType KvDType { get; init; } = TensorDType.F16;
    /// <summary>Device memory left unplanned for the driver, the module and fragmentation.</summary>
    public long ReserveBytes { get; init; } = 512L << 20;
    /// <summary>
    /// Capture each decode step shape (sequences, bucketed block-table width) as a CUDA graph once and replay it; false:
    /// launch every kernel directly. A failed capture falls back to direct launches (the backend description says why).
    /// </summary>
    public bool UseCudaGraphs { get; init; } = true;
    /// <summary>
    /// Sample on the device with sample_tokens_radix_f32 (top-k and top-p cuts by radix selection, a few passes over the
    /// row) instead of sample_tokens_f32 (cuts by bisection, ~50 passes): the same contract and, on the same logits and
    /// coins, the same tokens. null: as this GPU's tuning table says (kernels/tuning/; off without one).
    /// </summary>
    public bool? RadixSampling { get; init; }
    /// <summary>
    /// Dense GEMMs (bias-free projections and the LM head) through cuBLASLt: activations rounded to the weights' 16-bit
    /// type, fp32 accumulation, the o and down projections' residual add folded in (beta = 1); a shape cuBLASLt has no
    /// algorithm for keeps our kernel. Needs libcublasLt (CublasLtLibrary says where it looks). null: from the row count
    /// this GPU's tuning table says cuBLASLt wins at (never without a table); the memory plan reserves its workspace
    /// unless this is false.
    /// </summary>
    public bool? UseCublasLt { get; init; }
    /// <summary>
    /// Decode attention with paged_decode_attention_tiled (K/V tiles through a two-stage cp.async pipeline) where it has
    /// an entry (16-bit KV, head dim 64 or 128). null: as this GPU's tuning table says (off without one).
    /// </summary>
    public bool? TiledDecodeAttention { get; init; }
    /// <summary>
    /// Prefill and shared-prefix (Hydragen) attention with paged_attention_mma, FlashAttention-2 on tensor cores for
    /// 16-bit KV and head dim 64 or 128: a step's <see cref="AttentionPlan"/> levels are read once for all their members'
    /// rows, each suffix and long range split over the GPU, partial results merged exactly. null: as this GPU's tuning
    /// table says (off without one: the per-sequence kernels, exact, re-reading shared keys). The memory plan reserves
    /// the partial results' workspace unless this is false.
    /// </summary>
    public bool? TensorCoreAttention { get; init; }
    /// <summary>
    /// W4A8 layers at up to 16 rows (decode) through w4a8_gemm_*_splitk: K split over the GPU, a four-stage cp.async
    /// pipeline, exact int32 partial sums added by w4a8_splitk_reduce, so the same bits as w4a8_gemm. null: as this
    /// GPU's tuning table says (off without one).
    /// </summary>
    public bool? W4A8SplitK { get; init; }
    /// <summary>
    /// Decode rows (at most 4) of dense layers through the fused GEMVs: dense_gemv_qkv_norm (the attention norm, q, k
    /// and v in one launch), dense_gemv_swiglu_norm (the MLP norm, gate and up with the SwiGLU in the epilogue),
    /// dense_gemv_residual (o and down adding into the residual stream): eight launches fewer per layer. The norms are
    /// folded into the tiles (x g summed against W, then scaled by 1/rms: fp32 roundings differ from rms_norm then
    /// dense_gemv); the rest are the same sums as one dense_gemv per projection. null: as this GPU's tuning table says
    /// (on without one: they are dense_gemv's tile code).
    /// </summary>
    public bool? FusedGemv { get; init; }
    /// <summary>
    /// RoPE and kv_append in one launch per layer (rope_kv_append: q and k rotated, the rotated k and v rows written
    /// into the cache), the same arithmetic as rope_f32 and kv_append, so the same bits. null: as this GPU's tuning
    /// table says (on without one).
    /// </summary>
    public bool? FusedRopeAppend { get; init; }
    /// <summary>A fatbin to load instead of the embedded one (the bench's --fatbin); null: the embedded image.</summary>
    public byte[]? KernelImage { get; init; }
    /// <summary>
    /// A KIVI 2/4-bit KV cache (kivi2, kivi4: keys per channel, values per token, an fp16 window of the last R tokens),
    /// or null for 16/32-bit rows (<see cref="KvDType"/>). KIVI blocks are G tokens (<see cref="KvBlockSize"/> is not
    /// used) and the window is fp16. The pool is planned as fixed regions: a compact record for every block id and
    /// a number of fp16 slots for the blocks still full precision (<see cref="KiviFullPrecisionShare"/>).
    /// </summary>
    public KvCacheFormat? Kivi { get; init; }
    /// <summary>
    /// KIVI: the share of the KV bytes given to fp16 slots (blocks inside a window or being prefilled). null: the share
    /// at which sequences of the model's full context run out of slots and of compact records together (each holds
    /// its window's blocks in slots and the rest compact), at least enough slots for a 2048-token prefill chunk. Raise
    /// it for many short sequences (each holds its window full precision), lower it for few long ones.
    /// </summary>
    public double? KiviFullPrecisionShare { get; init; }

    /// <summary>These options as the backend runs them: KIVI blocks of G tokens in fp16, or the options unchanged.</summary>
    internal CudaBackendOptions Resolved() => Kivi is { IsKivi: true } k ? this with { KvBlockSize = k.Group } : this;
}

/// <summary>The device memory a <see cref="CudaBackend"/> allocates, in bytes, with the counts they come from.</summary>
internal sealed record CudaMemoryPlan(long WeightBytes, long ScratchBytes, long KvBytes, int KvBlocks, long KvBytesPerBlock,
    long FreeBytes, long ReserveBytes, int MaxTokensPerStep, int KiviSlots = 0, long KiviRecordBytes = 0)
{
    /// <summary>Tokens of prefill one engine step may carry by default (GeneratorOptions.PrefillTokenBudget): KIVI's slot floor.</summary>
    public const int KiviPrefillChunkTokens = 2048;

    /// <summary>KIVI: ints of the step's compaction lists (ids and slots, quantized before the step and inside it).</summary>
    public static long KiviListsInts(ScratchLayout layout) => 4L * layout.KiviCompactingCapacity;

    /// <summary>KIVI: bytes of one block's compact record in every layer.</summary>
    public static long KiviRecordBytesFor(ModelConfig config, KvCacheFormat format) =>
        config.NumLayers * Kivi.BlockBytes(config.KvDim, format.Group, format.Bits);

    /// <summary>
    /// KIVI: floats of the quantized attention's partial (o, lse) rows: a row per (query row, head, split), the splits
    /// kivi_decode_attention_split asks for to fill the GPU (rows x splits stays under rows + 2 x SMs / kv heads; 1024
    /// covers 512 SMs) at every row count up to <paramref name="maxTokens"/>.
    /// </summary>
    public static long KiviPartialFloats(ModelConfig config, int maxTokens) => (2L * maxTokens + 1024) * config.NumHeads * (config.HeadDim + 1);


    /// <summary>
    /// KIVI: how <paramref name="kvBytes"/> divide into fp16 slots (<see cref="KvBlockBytes"/> of G fp16 rows each) and
    /// compact records for every block id (<see cref="KiviRecordBytesFor"/>): the slots take
    /// <paramref name="share"/> of the bytes (null: balanced at the model's context, see
    /// CudaBackendOptions.KiviFullPrecisionShare), at least a prefill chunk and two windows' worth, at most as many as
    /// ids; the ids take the rest. Throws InvalidOperationException when not even one slot and one id fit.
    /// </summary>
    public static (int Slots, int Ids) KiviRegions(ModelConfig config, KvCacheFormat format, long kvBytes, int maxTokensPerStep, double? share)
    {
        if (share is not null and not (> 0 and < 1))
            throw new ArgumentOutOfRangeException(nameof(share), share, "KiviFullPrecisionShare must be in (0, 1)");
        long slot = KvBlockBytes(config, format.Group, TensorDType.F16), record = KiviRecordBytesFor(config, format);
        int window = format.WindowBlocks, g = format.Group;
        long context = (config.MaxPositions + (long)g - 1) / g;
        double f = share ?? (double)window * slot / (window * slot + Math.Max(0, context - window) * (double)record);
        long floor = (Math.Max(maxTokensPerStep, KiviPrefillChunkTokens) + g - 1) / g + 2L * window;
        long slots = Math.Max(floor, (long)(f * kvBytes / slot));
        slots = Math.Min(slots, kvBytes / (slot + record)); // every full block holds an id too
        slots = Math.Min(slots, int.MaxValue / g);          // kv_append's rows are int32
        if (slots < 1)
            throw new InvalidOperationException($"the KIVI cache's {Mib(kvBytes)} hold no fp16 slot ({Mib(slot)}) with its compact record ({Mib(record)})");
        long ids = Math.Min((kvBytes - slots * slot) / record, int.MaxValue / 2);
        return ((int)slots, (int)ids);
    }

    /// <summary>Device allocations are aligned to this (the driver gives 256-byte-aligned pointers; tensors keep it).</summary>
    public const int Alignment = 256;

    /// <summary>Sequences for which the decode workspace allows every split (more sequences need fewer splits).</summary>
    public const int DecodeWorkspaceSeqs = 64;

    public static long Align(long bytes) => (bytes + Alignment - 1) / Alignment * Alignment;

    public static int ElementBytes(TensorDType kvDType) => kvDType switch
    {
        TensorDType.F16 or TensorDType.BF16 => 2,
        TensorDType.F32 => 4,
        _ => throw new ArgumentOutOfRangeException(nameof(kvDType), kvDType, "the KV cache is F16, BF16 or F32"),
    };

    /// <summary>Bytes of one KV block in every layer, keys and values: 2 * layers * blockSize * kvDim * element.</summary>
    public static long KvBlockBytes(ModelConfig config, int blockSize, TensorDType kvDType) =>
        2L * config.NumLayers * blockSize * config.KvDim * ElementBytes(kvDType);

    /// <summary>What cuBLASLt adds when it is on: its workspace and the 16-bit copy of the widest GEMM input of a step.</summary>
    public static long CublasLtBytes(ModelConfig config, int maxTokens) =>
        CublasLtGemm.WorkspaceBytes + (long)maxTokens * Math.Max(Math.Max(config.HiddenSize, config.QueryDim), config.IntermediateSize) * 2;

    /// <summary>Partial results per query row the tensor-core attention's workspace holds (levels, suffix, splits).</summary>
    public const int AttentionSlotsPerRow = 4;

    /// <summary>Floats of the tensor-core attention's partial (o, lse) rows for a step of <paramref name="maxTokens"/> rows.</summary>
    public static long AttentionPartialFloats(ModelConfig config, int maxTokens) =>
        (long)maxTokens * AttentionSlotsPerRow * config.NumHeads * (config.HeadDim + 1);

    /// <summary>Ints of the work arrays such a step can need: items, row ids, slot starts and slots (AttentionWork's bounds).</summary>
    public static long AttentionWorkInts(int maxTokens)
    {
        long partial = (long)maxTokens * AttentionSlotsPerRow; // each item has a row (padding items: within the bound), each partial row one slot
        return partial * AttentionWork.ItemInts + partial + (maxTokens + 1L) + partial;
    }

    /// <summary>What the tensor-core attention adds when it may be on: its partial rows and its work arrays.</summary>
    public static long TensorCoreAttentionBytes(ModelConfig config, int maxTokens) =>
        Align(AttentionPartialFloats(config, maxTokens) * sizeof(float)) + Align(AttentionWorkInts(maxTokens) * sizeof(int));

    /// <summary>
    /// Plans the memory, or throws InvalidOperationException naming every size when weights + scratch + reserve + one
    /// KV block do not fit <paramref name="freeBytes"/>.
    /// </summary>
    public static CudaMemoryPlan Compute(ModelConfig config, long weightBytes, long freeBytes, CudaBackendOptions options, long extraScratchBytes = 0)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfNegative(weightBytes);
        if (options.KvBlockSize < 1) throw new ArgumentOutOfRangeException(nameof(options), options.KvBlockSize, "KvBlockSize must be >= 1");
        if (options.MaxTokensPerStep < 1) throw new ArgumentOutOfRangeException(nameof(options), options.MaxTokensPerStep, "MaxTokensPerStep must be >= 1");
        if (!(options.KvMemoryFraction is > 0 and <= 1))
            throw new ArgumentOutOfRangeException(nameof(options), options.KvMemoryFraction, "KvMemoryFraction must be in (0, 1]");
        if (options.KvCacheBytes is <= 0) throw new ArgumentOutOfRangeException(nameof(options), options.KvCacheBytes, "KvCacheBytes must be > 0");
        var kivi = options.Kivi is { IsKivi: true } k ? k : null;
        int blockSize = kivi?.Group ?? options.KvBlockSize;
        long block = KvBlockBytes(config, blockSize, kivi != null ? TensorDType.F16 : options.KvDType);
        var layout = new ScratchLayout(config, options.MaxTokensPerStep, blockSize, kivi);
        long scratch = layout.Bytes
                       + (kivi != null ? Align(KiviPartialFloats(config, options.MaxTokensPerStep) * sizeof(float)) + Align(KiviListsInts(layout) * sizeof(int)) : 0)
                       + (options.UseCublasLt != false ? CublasLtBytes(config, options.MaxTokensPerStep) : 0)
                       + (options.TensorCoreAttention != false ? TensorCoreAttentionBytes(config, options.MaxTokensPerStep) : 0) + extraScratchBytes;
        long fixedBytes = Align(weightBytes) + scratch + options.ReserveBytes;
        string sizes = $"weights {Mib(weightBytes)}, activation scratch for {options.MaxTokensPerStep} tokens per step {Mib(scratch)}, " +
                       $"reserve {Mib(options.ReserveBytes)}, one KV block ({blockSize} tokens x {config.NumLayers} layers, " +
                       $"{(kivi != null ? "fp16" : options.KvDType.Name())}) {Mib(block)}; free device memory {Mib(freeBytes)}";
        long left = freeBytes - fixedBytes;
        long kv = options.KvCacheBytes ?? (long)(Math.Max(0, left) * options.KvMemoryFraction);
        if (left < block || kv > left)
            throw new InvalidOperationException(
                $"CUDA out of memory for this model: {sizes}; the KV cache asked for {Mib(kv)} but {Mib(Math.Max(0, left))} is left " +
                "(lower MaxTokensPerStep or KvCacheBytes, or use a smaller model)");
        if (kivi != null)
        {
            var (slots, ids) = KiviRegions(config, kivi, kv, options.MaxTokensPerStep, options.KiviFullPrecisionShare);
            long record = KiviRecordBytesFor(config, kivi);
            return new CudaMemoryPlan(weightBytes, scratch, slots * block + ids * record, ids, block, freeBytes, options.ReserveBytes,
                options.MaxTokensPerStep, slots, record);
        }
        long maxBlocks = int.MaxValue / options.KvBlockSize; // slots (block * blockSize + row) are int32 in the kernels
        int blocks = (int)Math.Min(kv / block, maxBlocks);
        if (blocks < 1)
            throw new InvalidOperationException($"CUDA KV cache of {Mib(kv)} holds no block: {sizes}");
        return new CudaMemoryPlan(weightBytes, scratch, blocks * block, blocks, block, freeBytes, options.ReserveBytes, options.MaxTokensPerStep);
    }

    private static string Mib(long bytes) => $"{bytes / (double)(1 << 20):N1} MiB";

    public override string ToString() =>
        $"weights {Mib(WeightBytes)}, scratch {Mib(ScratchBytes)} ({MaxTokensPerStep} tokens/step), " +
        (KiviSlots > 0 ? $"KV {KvBlocks} KIVI blocks + {KiviSlots} fp16 slots = {Mib(KvBytes)}, " : $"KV {KvBlocks} blocks = {Mib(KvBytes)}, ") +
        $"free before {Mib(FreeBytes)}";
}

/// <summary>
/// Byte offsets of the per-step buffers in the scratch arena (each aligned to <see cref="CudaMemoryPlan.Alignment"/>),
/// for at most <see cref="MaxTokens"/> token rows (every row may be a sequence, and every row may want logits).
/// </summary>
internal sealed class ScratchLayout
{
    public int MaxTokens { get; }
    public long Bytes { get; }
    // fp32 activations
    /// <summary>fp32 activations; Up holds [T, max(2 I, q_dim + 2 kv_dim)] floats: up's output, or the fused gate|up or q|k|v GEMM's.</summary>
    public (long Offset, long Floats) X, Xn, Q, K, V, Attn, Lse, Proj, Gate, Up, Selected, SelectedNorm, Logits, Workspace;
    // int32 step inputs
    public (long Offset, long Ints) Ids, Positions, Slots, SeqLens, QStarts, BlockTables;
    /// <summary>
    /// KIVI (empty otherwise): per query row its window's slot table [MaxTokens, KiviWindowWidth] and length, and its
    /// count of compact blocks. BlockTables then holds per query row its block ids [MaxTokens, width].
    /// </summary>
    public (long Offset, long Ints) WindowTables, WindowLens, NumCompact;
    /// <summary>KIVI: the most blocks one row's window spans, ceil((R + G - 1) / G) (the window starts on a block boundary).</summary>
    public int KiviWindowWidth { get; }
    /// <summary>KIVI: the most blocks one step quantizes in its layers (its rows' blocks and one tail per sequence).</summary>
    public int KiviCompactingCapacity { get; }
    /// <summary>Block-table width (entries per sequence) the scratch holds at full rows: the model's context in blocks.</summary>
    public int MaxBlocksPerSeq { get; }

    public ScratchLayout(ModelConfig c, int maxTokens, int blockSize, KvCacheFormat? kivi = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxTokens, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        MaxTokens = maxTokens;
        long t = maxTokens, at = 0;
        (long, long) Take(long elements)
        {
            var r = (at, elements);
            at += CudaMemoryPlan.Align(elements * 4);
            return r;
        }
        X = Take(t * c.HiddenSize);
        Xn = Take(t * c.HiddenSize);
        Q = Take(t * c.QueryDim);
        K = Take(t * c.KvDim);
        V = Take(t * c.KvDim);
        Attn = Take(t * c.QueryDim);
        Lse = Take(t * c.NumHeads);
        Proj = Take(t * c.HiddenSize);
        Gate = Take(t * c.IntermediateSize);
        // up's output, or gate|up's [T, 2 I] output when the two projections run as one GEMM (GpuLayer.GateUp), or
        // earlier in the layer q|k|v's [T, q_dim + 2 kv_dim] (GpuLayer.Qkv).
        Up = Take(t * Math.Max(2L * c.IntermediateSize, c.QueryDim + 2L * c.KvDim));
        Selected = Take(t * c.HiddenSize);
        SelectedNorm = Take(t * c.HiddenSize);
        Logits = Take(t * c.VocabSize);
        Workspace = Take(OpsLaunchPlans.DecodeWorkspaceFloats(Math.Min(maxTokens, CudaMemoryPlan.DecodeWorkspaceSeqs), c.NumHeads, c.HeadDim,
            OpsLaunchPlans.DecodeMaxSplits));
        MaxBlocksPerSeq = (int)Math.Min((c.MaxPositions + (long)blockSize - 1) / blockSize, int.MaxValue / 2);
        Ids = Take(t);
        Positions = Take(t);
        Slots = Take(t);
        SeqLens = Take(t);
        QStarts = Take(t + 1);
        if (kivi is { IsKivi: true })
        {
            KiviWindowWidth = (kivi.Window + blockSize - 1 + blockSize - 1) / blockSize;
            KiviCompactingCapacity = 2 * maxTokens + 64;
        }
        WindowTables = Take(t * KiviWindowWidth);
        WindowLens = Take(kivi is { IsKivi: true } ? t : 0);
        NumCompact = Take(kivi is { IsKivi: true } ? t : 0);
        // A step's table is packed with the step's own width (the most blocks one of its sequences holds), so the
        // largest table is bounded by the tokens the step's sequences hold: rows x width <= maxTokens x MaxBlocksPerSeq.
        BlockTables = Take(t * MaxBlocksPerSeq);
        Bytes = at;
    }

    /// <summary>Int32 entries of the step inputs, contiguous from <see cref="Ids"/> to the end of the block tables.</summary>
    public long IntRegionInts => (Bytes - Ids.Offset) / 4;
}
