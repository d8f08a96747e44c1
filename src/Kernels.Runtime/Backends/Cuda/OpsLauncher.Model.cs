// Launchers of the model kernels: dense_gemm, paged decode/prefill attention (+ attention_merge), sample_tokens.
// bf16 buffers are raw ushort bits, f16 buffers Half, as in OpsLauncher.cs.
namespace Kernels.Runtime.Backends.Cuda;

internal sealed unsafe partial class OpsLauncher
{
    // ---- dense_gemm_{f16,bf16}, dense_gemm_small_m_{f16,bf16} --------------------------------------------------------
    // y [m, n] fp32 = x [m, k] fp32 (rounded to the weight dtype on load) . w [n, k]^T (+ bias [n]); K % 8 == 0.
    // m <= 16 takes the decode tile, larger m the prefill tile. y must not overlap x.

    /// <summary>The entry DenseGemmF16/BF16 launches for <paramref name="m"/> rows and inner size <paramref name="k"/> ("f16" or "bf16" suffix).</summary>
    public static string DenseGemmKernel(string suffix, int m, int k) => OpsLaunchPlans.DenseGemmKernel(suffix, m, k);

    public void DenseGemmF16(DeviceBuffer<float> y, DeviceBuffer<float> x, DeviceBuffer<Half> w, DeviceBuffer<Half>? bias, int m, int n, int k) =>
        DenseGemm(y, x, w, bias, m, n, k);

    public void DenseGemmBF16(DeviceBuffer<float> y, DeviceBuffer<float> x, DeviceBuffer<ushort> w, DeviceBuffer<ushort>? bias, int m, int n, int k) =>
        DenseGemm(y, x, w, bias, m, n, k);

    /// <summary>The typed forms above in one: T is float (F32), Half (F16) or ushort (BF16 bits), see <see cref="DeviceElement{T}"/>.</summary>
    internal void DenseGemm<T>(DeviceBuffer<float> y, DeviceBuffer<float> x, DeviceBuffer<T> w, DeviceBuffer<T>? bias, int m, int n, int k)
        where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(y);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(w);
        if (ReferenceEquals(y, x)) throw new ArgumentException("dense_gemm cannot run in place: y must not overlap x", nameof(y));
        if (OpsLaunchPlans.DenseGemm(DeviceElement<T>.Suffix, y.Length, x.Length, w.Length, bias?.Length ?? -1, m, n, k) is not { } plan) return;
        SameDevice(y, nameof(y));
        SameDevice(x, nameof(x));
        SameDevice(w, nameof(w));
        if (bias != null) SameDevice(bias, nameof(bias));
        ulong py = y.Pointer, px = x.Pointer, pw = w.Pointer, pb = bias?.Pointer ?? 0;
        int mm = m, nn = n, kk = k;
        void** args = stackalloc void*[] { &py, &px, &pw, &pb, &mm, &nn, &kk };
        Launch(plan, args);
    }

    // ---- the fused GEMVs (decode rows): dense_gemv_{residual,qkv,swiglu}_{f16,bf16} -----------------------------------

    /// <summary>y [m, n] += x [m, k] W^T: the same bits as dense_gemv into a scratch row then residual_add_f32.</summary>
    internal void DenseGemvResidual<T>(DeviceBuffer<float> y, DeviceBuffer<float> x, DeviceBuffer<T> w, int m, int n, int k) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(y);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(w);
        if (ReferenceEquals(y, x)) throw new ArgumentException("dense_gemv_residual cannot run in place: y must not overlap x", nameof(y));
        if (OpsLaunchPlans.DenseGemvResidual(DeviceElement<T>.Suffix, y.Length, x.Length, w.Length, m, n, k) is not { } plan) return;
        SameDevice(y, nameof(y));
        SameDevice(x, nameof(x));
        SameDevice(w, nameof(w));
        ulong py = y.Pointer, px = x.Pointer, pw = w.Pointer;
        int mm = m, nn = n, kk = k;
        void** args = stackalloc void*[] { &py, &px, &pw, &mm, &nn, &kk };
        Launch(plan, args);
    }

    /// <summary>
    /// q, k, v = x times Wq^T, Wk^T, Wv^T (+ biases, all or none) in one launch: each the same bits as its own
    /// dense_gemv. With <paramref name="norm"/> (the fp32 norm weight g [k] and eps), of RMSNorm(x) instead, the norm
    /// folded into the tile (dense_gemv_qkv_norm_*: x the fp32 residual rows, no rms_norm launch, no normalized copy).
    /// </summary>
    internal void DenseGemvQkv<T>(DeviceBuffer<float> yq, DeviceBuffer<float> yk, DeviceBuffer<float> yv, DeviceBuffer<float> x, DeviceBuffer<T> wq,
        DeviceBuffer<T> wk, DeviceBuffer<T> wv, DeviceBuffer<T>? bq, DeviceBuffer<T>? bk, DeviceBuffer<T>? bv, int m, int nq, int nkv, int k,
        (DeviceBuffer<float> G, float Eps)? norm = null) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(yq);
        ArgumentNullException.ThrowIfNull(yk);
        ArgumentNullException.ThrowIfNull(yv);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(wq);
        ArgumentNullException.ThrowIfNull(wk);
        ArgumentNullException.ThrowIfNull(wv);
        if (norm is { G: null }) throw new ArgumentNullException(nameof(norm), "the norm weight is null");
        if ((bq == null) != (bk == null) || (bk == null) != (bv == null)) throw new ArgumentException("give the three biases or none", nameof(bq));
        var plan = norm is { } n
            ? OpsLaunchPlans.DenseGemvQkvNorm(DeviceElement<T>.Suffix, yq.Length, yk.Length, yv.Length, x.Length, n.G.Length, n.Eps, wq.Length, wk.Length,
                wv.Length, bq?.Length ?? -1, bk?.Length ?? -1, bv?.Length ?? -1, m, nq, nkv, k)
            : OpsLaunchPlans.DenseGemvQkv(DeviceElement<T>.Suffix, yq.Length, yk.Length, yv.Length, x.Length, wq.Length, wk.Length, wv.Length,
                bq?.Length ?? -1, bk?.Length ?? -1, bv?.Length ?? -1, m, nq, nkv, k);
        if (plan is not { } launch) return;
        foreach (var (b, name) in new[] { (yq, nameof(yq)), (yk, nameof(yk)), (yv, nameof(yv)), (x, nameof(x)), (norm?.G, nameof(norm)) })
            if (b != null) SameDevice(b, name);
        foreach (var (b, name) in new[] { (wq, nameof(wq)), (wk, nameof(wk)), (wv, nameof(wv)), (bq, nameof(bq)), (bk, nameof(bk)), (bv, nameof(bv)) })
            if (b != null) SameDevice(b, name);
        ulong pq = yq.Pointer, pk = yk.Pointer, pv = yv.Pointer, px = x.Pointer, pg = norm?.G.Pointer ?? 0, wqp = wq.Pointer, wkp = wk.Pointer, wvp = wv.Pointer;
        ulong bqp = bq?.Pointer ?? 0, bkp = bk?.Pointer ?? 0, bvp = bv?.Pointer ?? 0;
        float e = norm?.Eps ?? 0;
        int mm = m, nqq = nq, nkk = nkv, kk = k;
        if (norm != null)
        {
            void** args = stackalloc void*[] { &pq, &pk, &pv, &px, &pg, &e, &wqp, &wkp, &wvp, &bqp, &bkp, &bvp, &mm, &nqq, &nkk, &kk };
            Launch(launch, args);
        }
        else
        {
            void** args = stackalloc void*[] { &pq, &pk, &pv, &px, &wqp, &wkp, &wvp, &bqp, &bkp, &bvp, &mm, &nqq, &nkk, &kk };
            Launch(launch, args);
        }
    }

    /// <summary>
    /// out [m, n] = silu(x Wg^T) * (x Wu^T): the same bits as two dense_gemv launches and swiglu_f32. With
    /// <paramref name="norm"/>, of RMSNorm(x), the norm folded in as in <see cref="DenseGemvQkv{T}"/>.
    /// </summary>
    internal void DenseGemvSwiGlu<T>(DeviceBuffer<float> output, DeviceBuffer<float> x, DeviceBuffer<T> wg, DeviceBuffer<T> wu, int m, int n, int k,
        (DeviceBuffer<float> G, float Eps)? norm = null) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(wg);
        ArgumentNullException.ThrowIfNull(wu);
        if (norm is { G: null }) throw new ArgumentNullException(nameof(norm), "the norm weight is null");
        if (ReferenceEquals(output, x)) throw new ArgumentException("dense_gemv_swiglu cannot run in place: out must not overlap x", nameof(output));
        var plan = norm is { } nr
            ? OpsLaunchPlans.DenseGemvSwiGluNorm(DeviceElement<T>.Suffix, output.Length, x.Length, nr.G.Length, nr.Eps, wg.Length, wu.Length, m, n, k)
            : OpsLaunchPlans.DenseGemvSwiGlu(DeviceElement<T>.Suffix, output.Length, x.Length, wg.Length, wu.Length, m, n, k);
        if (plan is not { } launch) return;
        SameDevice(output, nameof(output));
        SameDevice(x, nameof(x));
        if (norm is { } g) SameDevice(g.G, nameof(norm));
        SameDevice(wg, nameof(wg));
        SameDevice(wu, nameof(wu));
        ulong po = output.Pointer, px = x.Pointer, pgn = norm?.G.Pointer ?? 0, pg = wg.Pointer, pu = wu.Pointer;
        float e = norm?.Eps ?? 0;
        int mm = m, nn = n, kk = k;
        if (norm != null)
        {
            void** args = stackalloc void*[] { &po, &px, &pgn, &e, &pg, &pu, &mm, &nn, &kk };
            Launch(launch, args);
        }
        else
        {
            void** args = stackalloc void*[] { &po, &px, &pg, &pu, &mm, &nn, &kk };
            Launch(launch, args);
        }
    }

    // ---- paged_decode_attention_{f32,f16,bf16} (+ attention_merge_f32) ------------------------------------------------

    /// <summary>The KV cache of one layer and its paging, as the attention kernels read it.</summary>
    /// <param name="KCache">[NumBlocks, BlockSize, NumKvHeads * HeadDim]</param>
    /// <param name="BlockTables">[numSeqs, MaxBlocksPerSeq] block ids</param>
    /// <param name="SeqLens">[numSeqs] keys per sequence (new tokens already appended)</param>
    public sealed record PagedKv<T>(DeviceBuffer<T> KCache, DeviceBuffer<T> VCache, DeviceBuffer<int> BlockTables, DeviceBuffer<int> SeqLens,
        int NumBlocks, int BlockSize, int MaxBlocksPerSeq) where T : unmanaged;

    /// <summary>
    /// o [numSeqs, numHeads, headDim] and lse [numSeqs, numHeads] (natural log) of one query token per sequence.
    /// <paramref name="workspace"/> (null: never split) holds the split partials; size it with
    /// <see cref="DecodeWorkspaceFloats"/>. <paramref name="maxSeqLen"/> balances the splits (any value is correct).
    /// Returns the number of splits used.
    /// </summary>
    public int PagedDecodeAttentionF16(DeviceBuffer<float> o, DeviceBuffer<float> lse, DeviceBuffer<float> q, PagedKv<Half> kv, DeviceBuffer<float>? workspace,
        int numSeqs, int numHeads, int numKvHeads, int headDim, int maxSeqLen) =>
        PagedDecodeAttention(o, lse, q, kv, workspace, numSeqs, numHeads, numKvHeads, headDim, maxSeqLen);

    public int PagedDecodeAttentionBF16(DeviceBuffer<float> o, DeviceBuffer<float> lse, DeviceBuffer<float> q, PagedKv<ushort> kv, DeviceBuffer<float>? workspace,
        int numSeqs, int numHeads, int numKvHeads, int headDim, int maxSeqLen) =>
        PagedDecodeAttention(o, lse, q, kv, workspace, numSeqs, numHeads, numKvHeads, headDim, maxSeqLen);

    public int PagedDecodeAttentionF32(DeviceBuffer<float> o, DeviceBuffer<float> lse, DeviceBuffer<float> q, PagedKv<float> kv, DeviceBuffer<float>? workspace,
        int numSeqs, int numHeads, int numKvHeads, int headDim, int maxSeqLen) =>
        PagedDecodeAttention(o, lse, q, kv, workspace, numSeqs, numHeads, numKvHeads, headDim, maxSeqLen);

    /// <summary>Workspace floats that allow the most splits this device would use for the shape.</summary>
    public int DecodeWorkspaceFloats(int numSeqs, int numHeads, int headDim) =>
        checked((int)OpsLaunchPlans.DecodeWorkspaceFloats(numSeqs, numHeads, headDim, OpsLaunchPlans.DecodeMaxSplits));

    /// <summary>The typed forms above in one: T is float (F32), Half (F16) or ushort (BF16 bits), see <see cref="DeviceElement{T}"/>.</summary>
    internal int PagedDecodeAttention<T>(DeviceBuffer<float> o, DeviceBuffer<float> lse, DeviceBuffer<float> q, PagedKv<T> kv,
        DeviceBuffer<float>? workspace, int numSeqs, int numHeads, int numKvHeads, int headDim, int maxSeqLen, bool tiled = false) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(o);
        ArgumentNullException.ThrowIfNull(lse);
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(kv);
        if (OpsLaunchPlans.PagedDecodeAttention(DeviceElement<T>.Suffix, o.Length, lse.Length, q.Length, kv.KCache.Length, kv.VCache.Length, kv.BlockTables.Length,
                kv.SeqLens.Length, workspace?.Length ?? -1, numSeqs, numHeads, numKvHeads, headDim, kv.BlockSize, kv.MaxBlocksPerSeq, kv.NumBlocks,
                maxSeqLen, _module.Device.MultiprocessorCount, tiled) is not { } plan) return 0;
        SameDevice(o, nameof(o));
        SameDevice(lse, nameof(lse));
        SameDevice(q, nameof(q));
        SameDevice(kv.KCache, nameof(kv));
        SameDevice(kv.VCache, nameof(kv));
        SameDevice(kv.BlockTables, nameof(kv));
        SameDevice(kv.SeqLens, nameof(kv));
        if (workspace != null) SameDevice(workspace, nameof(workspace));
        long partialO = (long)numSeqs * numHeads * plan.NumSplits * headDim;
        ulong pw = workspace?.Pointer ?? 0;
        // One split writes o and lse directly (the partial layout with num_splits = 1 is theirs).
        ulong po = plan.Merge == null ? o.Pointer : pw, pl = plan.Merge == null ? lse.Pointer : pw + (ulong)(partialO * sizeof(float));
        ulong pq = q.Pointer, pk = kv.KCache.Pointer, pv = kv.VCache.Pointer, pt = kv.BlockTables.Pointer, ps = kv.SeqLens.Pointer;
        int ns = numSeqs, nh = numHeads, nkv = numKvHeads, hd = headDim, bs = kv.BlockSize, mb = kv.MaxBlocksPerSeq, nb = kv.NumBlocks, tps = plan.TokensPerSplit;
        float scale = 1f / MathF.Sqrt(headDim); // the CPU reference's scale, bit for bit
        void** args = stackalloc void*[] { &po, &pl, &pq, &pk, &pv, &pt, &ps, &ns, &nh, &nkv, &hd, &bs, &mb, &nb, &tps, &scale };
        Launch(plan.Attention, args);
        if (plan.Merge is { } merge)
        {
            ulong mo = o.Pointer, ml = lse.Pointer;
            int rows = numSeqs * numHeads, splits = plan.NumSplits, d = headDim;
            void** margs = stackalloc void*[] { &mo, &ml, &po, &pl, &rows, &splits, &d };
            Launch(merge, margs);
        }
        return plan.NumSplits;
    }

    // ---- paged_prefill_attention_{f32,f16,bf16} ---------------------------------------------------------------------

    /// <summary>
    /// Causal attention of new tokens: q, o [numTokens, numHeads, headDim], lse [numTokens, numHeads]; sequence s owns
    /// rows [qStarts[s], qStarts[s + 1]) at positions seqLens[s] - n_s + i. <paramref name="maxQueryLen"/> = the largest n_s.
    /// </summary>
    public void PagedPrefillAttentionF16(DeviceBuffer<float> o, DeviceBuffer<float> lse, DeviceBuffer<float> q, PagedKv<Half> kv, DeviceBuffer<int> qStarts,
        int numSeqs, int numTokens, int maxQueryLen, int numHeads, int numKvHeads, int headDim) =>
        PagedPrefillAttention(o, lse, q, kv, qStarts, numSeqs, numTokens, maxQueryLen, numHeads, numKvHeads, headDim);

    public void PagedPrefillAttentionBF16(DeviceBuffer<float> o, DeviceBuffer<float> lse, DeviceBuffer<float> q, PagedKv<ushort> kv, DeviceBuffer<int> qStarts,
        int numSeqs, int numTokens, int maxQueryLen, int numHeads, int numKvHeads, int headDim) =>
        PagedPrefillAttention(o, lse, q, kv, qStarts, numSeqs, numTokens, maxQueryLen, numHeads, numKvHeads, headDim);

    public void PagedPrefillAttentionF32(DeviceBuffer<float> o, DeviceBuffer<float> lse, DeviceBuffer<float> q, PagedKv<float> kv, DeviceBuffer<int> qStarts,
        int numSeqs, int numTokens, int maxQueryLen, int numHeads, int numKvHeads, int headDim) =>
        PagedPrefillAttention(o, lse, q, kv, qStarts, numSeqs, numTokens, maxQueryLen, numHeads, numKvHeads, headDim);

    /// <summary>The typed forms above in one: T is float (F32), Half (F16) or ushort (BF16 bits), see <see cref="DeviceElement{T}"/>.</summary>
    internal void PagedPrefillAttention<T>(DeviceBuffer<float> o, DeviceBuffer<float> lse, DeviceBuffer<float> q, PagedKv<T> kv,
        DeviceBuffer<int> qStarts, int numSeqs, int numTokens, int maxQueryLen, int numHeads, int numKvHeads, int headDim) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(o);
        ArgumentNullException.ThrowIfNull(lse);
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(kv);
        ArgumentNullException.ThrowIfNull(qStarts);
        if (OpsLaunchPlans.PagedPrefillAttention(DeviceElement<T>.Suffix, o.Length, lse.Length, q.Length, kv.KCache.Length, kv.VCache.Length, kv.BlockTables.Length,
                kv.SeqLens.Length, qStarts.Length, numSeqs, numTokens, maxQueryLen, numHeads, numKvHeads, headDim, kv.BlockSize, kv.MaxBlocksPerSeq,
                kv.NumBlocks) is not { } plan) return;
        SameDevice(o, nameof(o));
        SameDevice(lse, nameof(lse));
        SameDevice(q, nameof(q));
        SameDevice(kv.KCache, nameof(kv));
        SameDevice(kv.VCache, nameof(kv));
        SameDevice(kv.BlockTables, nameof(kv));
        SameDevice(kv.SeqLens, nameof(kv));
        SameDevice(qStarts, nameof(qStarts));
        ulong po = o.Pointer, pl = lse.Pointer, pq = q.Pointer, pk = kv.KCache.Pointer, pv = kv.VCache.Pointer, pt = kv.BlockTables.Pointer,
            ps = kv.SeqLens.Pointer, pqs = qStarts.Pointer;
        int ns = numSeqs, nh = numHeads, nkv = numKvHeads, hd = headDim, bs = kv.BlockSize, mb = kv.MaxBlocksPerSeq, nb = kv.NumBlocks;
        float scale = 1f / MathF.Sqrt(headDim);
        void** args = stackalloc void*[] { &po, &pl, &pq, &pk, &pv, &pt, &ps, &pqs, &ns, &nh, &nkv, &hd, &bs, &mb, &nb, &scale };
        Launch(plan, args);
    }

    // ---- paged_attention_mma_hd{64,128}_k{32,64}_{f16,bf16} (+ attention_merge_slots_f32) -----------------------------

    /// <summary>An <see cref="AttentionWork"/>'s arrays on the device (the same values, uploaded by the caller).</summary>
    public sealed record AttentionWorkBuffers(DeviceBuffer<int> Items, DeviceBuffer<int> RowIds, DeviceBuffer<int> SlotStarts, DeviceBuffer<int> Slots);

    /// <summary>
    /// Floats of the partial results <paramref name="work"/> writes before its merge: o rows then lse rows (a buffer of
    /// C x heads x (headDim + 1) floats holds C partial rows, o first, lse from C x heads x headDim on).
    /// </summary>
    public static long MmaAttentionPartialFloats(AttentionWork work, int numHeads, int headDim) => (long)work.PartialRows * numHeads * (headDim + 1);

    /// <summary>
    /// o [qRows, numHeads, headDim], lse [qRows, numHeads] (natural log) of the step's query rows q by paged_attention_mma
    /// over <paramref name="work"/>'s items, tables kv.BlockTables (the items' table offsets index it). Direct work writes
    /// o and lse; otherwise the items write their partial rows into <paramref name="partial"/> (at least
    /// <see cref="MmaAttentionPartialFloats"/>) and attention_merge_slots_f32 merges each row's slots into o and lse.
    /// </summary>
    internal void PagedAttentionMma<T>(DeviceBuffer<float> o, DeviceBuffer<float> lse, DeviceBuffer<float> q, PagedKv<T> kv, AttentionWork work,
        AttentionWorkBuffers buffers, DeviceBuffer<float>? partial, int qRows, int numHeads, int numKvHeads, int headDim, int tileKeys) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(o);
        ArgumentNullException.ThrowIfNull(lse);
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(kv);
        ArgumentNullException.ThrowIfNull(work);
        ArgumentNullException.ThrowIfNull(buffers);
        long partialO = (long)work.PartialRows * numHeads * headDim;
        if (!work.Direct && (partial == null || partial.Length < MmaAttentionPartialFloats(work, numHeads, headDim)))
            throw new ArgumentException($"the work's {work.PartialRows} partial rows need {MmaAttentionPartialFloats(work, numHeads, headDim)} floats of workspace, " +
                                        $"got {partial?.Length ?? 0}", nameof(partial));
        long outO = work.Direct ? o.Length : partialO, outL = work.Direct ? lse.Length : (long)work.PartialRows * numHeads;
        if (OpsLaunchPlans.PagedAttentionMma(DeviceElement<T>.Suffix, outO, outL, q.Length, kv.KCache.Length, kv.VCache.Length, kv.BlockTables.Length,
                buffers.Items.Length, buffers.RowIds.Length, work, qRows, numHeads, numKvHeads, headDim, kv.BlockSize, kv.NumBlocks, tileKeys) is not { } plan)
            return;
        SameDevice(o, nameof(o));
        SameDevice(lse, nameof(lse));
        SameDevice(q, nameof(q));
        SameDevice(kv.KCache, nameof(kv));
        SameDevice(kv.VCache, nameof(kv));
        SameDevice(kv.BlockTables, nameof(kv));
        SameDevice(buffers.Items, nameof(buffers));
        SameDevice(buffers.RowIds, nameof(buffers));
        if (partial != null) SameDevice(partial, nameof(partial));
        // The partials' lse rows start where the buffer's capacity of o rows ends (not where this work's end): the same
        // address every step, so a captured graph's arguments hold.
        long capacityO = work.Direct ? 0 : partial!.Length / ((long)numHeads * (headDim + 1)) * numHeads * headDim;
        ulong po = work.Direct ? o.Pointer : partial!.Pointer, pl = work.Direct ? lse.Pointer : partial!.Pointer + (ulong)(capacityO * sizeof(float));
        ulong pq = q.Pointer, pk = kv.KCache.Pointer, pv = kv.VCache.Pointer, pi = buffers.Items.Pointer, pr = buffers.RowIds.Pointer, pt = kv.BlockTables.Pointer;
        int ni = work.ItemCount, nh = numHeads, nkv = numKvHeads, hd = headDim, bs = kv.BlockSize, nb = kv.NumBlocks;
        float scale = 1f / MathF.Sqrt(headDim); // the CPU reference's scale, bit for bit
        void** args = stackalloc void*[] { &po, &pl, &pq, &pk, &pv, &pi, &pr, &pt, &ni, &nh, &nkv, &hd, &bs, &nb, &scale };
        Launch(plan, args);
        if (work.Direct) return;
        if (OpsLaunchPlans.AttentionMergeSlots(o.Length, lse.Length, partialO, (long)work.PartialRows * numHeads, buffers.SlotStarts.Length, buffers.Slots.Length,
                qRows, work.PartialRows, numHeads, headDim) is not { } merge) return;
        SameDevice(buffers.SlotStarts, nameof(buffers));
        SameDevice(buffers.Slots, nameof(buffers));
        ulong mo = o.Pointer, ml = lse.Pointer, ss = buffers.SlotStarts.Pointer, sl = buffers.Slots.Pointer;
        int rows = qRows, heads = numHeads, d = headDim;
        void** margs = stackalloc void*[] { &mo, &ml, &po, &pl, &ss, &sl, &rows, &heads, &d };
        Launch(merge, margs);
    }

    // ---- kv_append_{f32,f16,bf16} ----------------------------------------------------------------------------------

    /// <summary>
    /// Writes k, v [numTokens, kvDim] (fp32) into rows slots[t] of kCache, vCache [numSlots, kvDim] (one layer's blocks
    /// [numBlocks, blockSize, kvDim] viewed as numSlots = numBlocks * blockSize rows), rounded to the cache dtype. A
    /// negative slot writes nothing.
    /// </summary>
    public void KvAppendF16(DeviceBuffer<Half> kCache, DeviceBuffer<Half> vCache, DeviceBuffer<float> k, DeviceBuffer<float> v, DeviceBuffer<int> slots,
        int numTokens, int kvDim, int numSlots) => KvAppend(kCache, vCache, k, v, slots, numTokens, kvDim, numSlots);

    public void KvAppendBF16(DeviceBuffer<ushort> kCache, DeviceBuffer<ushort> vCache, DeviceBuffer<float> k, DeviceBuffer<float> v, DeviceBuffer<int> slots,
        int numTokens, int kvDim, int numSlots) => KvAppend(kCache, vCache, k, v, slots, numTokens, kvDim, numSlots);

    public void KvAppendF32(DeviceBuffer<float> kCache, DeviceBuffer<float> vCache, DeviceBuffer<float> k, DeviceBuffer<float> v, DeviceBuffer<int> slots,
        int numTokens, int kvDim, int numSlots) => KvAppend(kCache, vCache, k, v, slots, numTokens, kvDim, numSlots);

    /// <summary>The typed forms above in one: T is float (F32), Half (F16) or ushort (BF16 bits), see <see cref="DeviceElement{T}"/>.</summary>
    internal void KvAppend<T>(DeviceBuffer<T> kCache, DeviceBuffer<T> vCache, DeviceBuffer<float> k, DeviceBuffer<float> v,
        DeviceBuffer<int> slots, int numTokens, int kvDim, int numSlots) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(kCache);
        ArgumentNullException.ThrowIfNull(vCache);
        ArgumentNullException.ThrowIfNull(k);
        ArgumentNullException.ThrowIfNull(v);
        ArgumentNullException.ThrowIfNull(slots);
        if (OpsLaunchPlans.KvAppend(DeviceElement<T>.Suffix, kCache.Length, vCache.Length, k.Length, v.Length, slots.Length, numTokens, kvDim, numSlots) is not { } plan) return;
        SameDevice(kCache, nameof(kCache));
        SameDevice(vCache, nameof(vCache));
        SameDevice(k, nameof(k));
        SameDevice(v, nameof(v));
        SameDevice(slots, nameof(slots));
        ulong pkc = kCache.Pointer, pvc = vCache.Pointer, pk = k.Pointer, pv = v.Pointer, ps = slots.Pointer;
        int nt = numTokens, d = kvDim, ns = numSlots;
        void** args = stackalloc void*[] { &pkc, &pvc, &pk, &pv, &ps, &nt, &d, &ns };
        Launch(plan, args);
    }

    // ---- rope_kv_append_{f32,f16,bf16} ------------------------------------------------------------------------------

    /// <summary>
    /// <see cref="OpsLauncher.RopeF32"/> then <see cref="KvAppend{T}"/> in one launch: q's rows (qStride floats apart)
    /// rotated into qOut [numTokens, numQHeads x headDim] (qOut may be q when the rows are dense), k's rows rotated and
    /// v's rows (kvStride apart) written into rows slots[t] of kCache, vCache [numSlots, kvDim] rounded to T (a negative
    /// slot writes no cache row). The same bits as the two launches; k itself is not written back.
    /// </summary>
    internal void RopeKvAppend<T>(DeviceBuffer<float> qOut, DeviceBuffer<float> q, DeviceBuffer<float> k, DeviceBuffer<float> v, int qStride, int kvStride,
        DeviceBuffer<T> kCache, DeviceBuffer<T> vCache, DeviceBuffer<int> positions, DeviceBuffer<float> invFreq, DeviceBuffer<int> slots, int numTokens,
        int numQHeads, int numKvHeads, int headDim, int numSlots) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(qOut);
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(k);
        ArgumentNullException.ThrowIfNull(v);
        ArgumentNullException.ThrowIfNull(kCache);
        ArgumentNullException.ThrowIfNull(vCache);
        ArgumentNullException.ThrowIfNull(positions);
        ArgumentNullException.ThrowIfNull(invFreq);
        ArgumentNullException.ThrowIfNull(slots);
        if (OpsLaunchPlans.RopeKvAppend(DeviceElement<T>.Suffix, qOut.Length, q.Length, k.Length, v.Length, qStride, kvStride, kCache.Length, vCache.Length,
                positions.Length, invFreq.Length, slots.Length, numTokens, numQHeads, numKvHeads, headDim, numSlots) is not { } plan) return;
        SameDevice(qOut, nameof(qOut));
        SameDevice(q, nameof(q));
        SameDevice(k, nameof(k));
        SameDevice(v, nameof(v));
        SameDevice(kCache, nameof(kCache));
        SameDevice(vCache, nameof(vCache));
        SameDevice(positions, nameof(positions));
        SameDevice(invFreq, nameof(invFreq));
        SameDevice(slots, nameof(slots));
        ulong pqo = qOut.Pointer, pq = q.Pointer, pk = k.Pointer, pv = v.Pointer, pkc = kCache.Pointer, pvc = vCache.Pointer, pp = positions.Pointer,
            pf = invFreq.Pointer, ps = slots.Pointer;
        int qs = qStride, kvs = kvStride, nt = numTokens, hq = numQHeads, hk = numKvHeads, hd = headDim, ns = numSlots;
        void** args = stackalloc void*[] { &pqo, &pq, &pk, &pv, &qs, &kvs, &pkc, &pvc, &pp, &pf, &ps, &nt, &hq, &hk, &hd, &ns };
        Launch(plan, args);
    }

    // ---- sample_tokens_f32 ------------------------------------------------------------------------------------------

    /// <summary>
    /// tokens [rows] from logits [rows, vocab] with per-row options (temperature &lt;= 0: greedy; topK 0, topP 1, minP 0:
    /// off). <paramref name="coins"/> [rows]: each row's uniform draw in [0, 1) (the engine's TokenChoice.Coin). Logits rows
    /// lie <paramref name="logitsStride"/> apart; the first <paramref name="vocab"/> of each are candidates. <paramref name="radix"/>:
    /// sample_tokens_radix_f32 (the same contract, cuts by radix selection).
    /// </summary>
    public void SampleTokensF32(DeviceBuffer<int> tokens, DeviceBuffer<double> coins, DeviceBuffer<float> logits, int logitsStride,
        DeviceBuffer<float> temperature, DeviceBuffer<int> topK, DeviceBuffer<float> topP, DeviceBuffer<float> minP, int rows, int vocab, bool radix = false)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentNullException.ThrowIfNull(coins);
        ArgumentNullException.ThrowIfNull(logits);
        ArgumentNullException.ThrowIfNull(temperature);
        ArgumentNullException.ThrowIfNull(topK);
        ArgumentNullException.ThrowIfNull(topP);
        ArgumentNullException.ThrowIfNull(minP);
        if (OpsLaunchPlans.SampleTokens(tokens.Length, coins.Length, logits.Length, temperature.Length, topK.Length, topP.Length, minP.Length,
                rows, vocab, logitsStride, radix) is not { } plan) return;
        SameDevice(tokens, nameof(tokens));
        SameDevice(coins, nameof(coins));
        SameDevice(logits, nameof(logits));
        SameDevice(temperature, nameof(temperature));
        SameDevice(topK, nameof(topK));
        SameDevice(topP, nameof(topP));
        SameDevice(minP, nameof(minP));
        ulong pt = tokens.Pointer, pc = coins.Pointer, pl = logits.Pointer, pT = temperature.Pointer, pk = topK.Pointer, pp = topP.Pointer, pm = minP.Pointer;
        int r = rows, v = vocab, stride = logitsStride;
        void** args = stackalloc void*[] { &pt, &pc, &pl, &stride, &pT, &pk, &pp, &pm, &r, &v };
        Launch(plan, args);
    }
}
