// kernels-bench e2e, KIVI capacity (issue 18): at one fixed KV memory budget and a 32K context, how many sequences an
// fp16 cache and the KIVI caches hold in flight, and the decode tokens/s each reaches with all of them, same run.
using System.Diagnostics;
using Kernels.Interop;
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;

namespace Kernels.Bench;

internal static partial class EndToEnd
{
    /// <summary>One KV format at the shared budget: sequences held at the context, and the decode step with all of them.</summary>
    private sealed record KiviCapacityRow(string Cache, string Model, int Context, long KvBudgetBytes, int Sequences, int Steps, double StepMs,
        double TokensPerSecond, double SequencesVsFp16, double TokensVsFp16, string Backend);

    /// <summary>
    /// synthetic:llama3-8b-32k with an fp16 cache, kivi2 and kivi4 (G 32, R 128) at <paramref name="budget"/> bytes of KV:
    /// sequences of <paramref name="context"/> tokens are laid out (blocks allocated and, for KIVI, compacted as a
    /// prefill would leave them; the device memory is zeroed, so the values are valid) until the pool is full (keeping
    /// room for the decode steps' new blocks), and all of them decode <paramref name="steps"/> greedy steps.
    /// The attention reads what a real cache of that length holds, so the step's time is the real one; the values are
    /// not a model's.
    /// </summary>
    private static List<KiviCapacityRow> KiviCapacity(CudaBackendOptions baseOptions, long budget, int context, int steps, int maxSequences,
        string modelName = "synthetic:llama3-8b-32k")
    {
        const int Warmup = 3;
        var rows = new List<KiviCapacityRow>();
        var started = Stopwatch.StartNew();
        using var model = SyntheticModels.Create(modelName);
        Console.WriteLine($"# model generated in {started.Elapsed.TotalSeconds:F1} s");
        var formats = new (string Label, KvCacheFormat? Kivi)[]
        {
            ("fp16", null),
            ("kivi2", new KvCacheFormat { Kind = KvCacheKind.Kivi2, Group = 32, Window = 128 }),
            ("kivi4", new KvCacheFormat { Kind = KvCacheKind.Kivi4, Group = 32, Window = 128 }),
        };
        KiviCapacityRow? fp16 = null;
        foreach (var (label, kivi) in formats)
        {
            started.Restart();
            using var backend = new CudaBackend(model, baseOptions with { KvCacheBytes = budget, Kivi = kivi, MaxTokensPerStep = Math.Max(256, maxSequences) });
            var pool = backend.KvPool;
            var sequences = new List<KvSequence> { LaidOut(backend, context, kivi) };
            int perSequence = pool.BlocksFor(context + Warmup + steps) - pool.BlocksFor(context) + 1; // blocks a sequence adds while decoding
            try
            {
                // Each laid out on its own (no device copies: the memory is zeroed, so every sequence reads zeros).
                while (sequences.Count < maxSequences && pool.FreeBlocks > (sequences.Count + 1) * perSequence)
                    sequences.Add(LaidOut(backend, context, kivi));
            }
            catch (KvCacheExhaustedException) { } // the sequence that did not fit released what it took
            while (sequences.Count > 1 && pool.FreeBlocks < sequences.Count * perSequence) // room for every sequence's new blocks
            {
                sequences[^1].Dispose();
                sequences.RemoveAt(sequences.Count - 1);
            }
            Console.WriteLine($"# {label}: {sequences.Count} sequences of {context} tokens laid out in {started.Elapsed.TotalSeconds:F1} s: {backend}");
            using var batch = new DecodeBatch(backend, sequences.ToArray());
            for (int w = 0; w < Warmup; w++) batch.Step();
            var timer = Stopwatch.StartNew();
            for (int i = 0; i < steps; i++) batch.Step();
            double stepMs = timer.Elapsed.TotalMilliseconds / steps, tps = sequences.Count / (stepMs / 1e3);
            var row = new KiviCapacityRow(label, modelName, context, budget, sequences.Count, steps, stepMs, tps,
                fp16 == null ? 1 : (double)sequences.Count / fp16.Sequences, fp16 == null ? 1 : tps / fp16.TokensPerSecond, backend.ToString());
            fp16 ??= row;
            rows.Add(row);
            Console.WriteLine($"{label,-6} KV {budget / (double)(1L << 20):F0} MiB, context {context}: {row.Sequences,4} sequences in flight " +
                              $"({row.SequencesVsFp16:F2}x fp16)  {stepMs,8:F2} ms/step  {tps,9:F1} tok/s ({row.TokensVsFp16:F2}x fp16)");
        }
        return rows;
    }

    /// <summary>
    /// A sequence of <paramref name="context"/> tokens without a forward pass: blocks reserved a block at a time and,
    /// for KIVI, each compacted once it ends R tokens before the sequence's end, as steps leave them (the fp16 slots
    /// stay bounded while it grows). Its values are the zeroed device memory (zero codes, scales and mins: valid).
    /// </summary>
    private static KvSequence LaidOut(CudaBackend backend, int context, KvCacheFormat? kivi)
    {
        var seq = (KvSequence)backend.CreateCache();
        var pool = backend.KvPool;
        int compacted = 0;
        try
        {
            for (int length = 0; length < context;)
            {
                int n = Math.Min(pool.BlockSize - length % pool.BlockSize, context - length);
                seq.Reserve(n);
                seq.Advance(n);
                length += n;
                if (kivi == null) continue;
                for (int passed = kivi.BlocksPassed(length); compacted < passed; compacted++) pool.Compact(seq.Blocks[compacted]);
            }
        }
        catch
        {
            seq.Dispose();
            throw;
        }
        return seq;
    }
}
