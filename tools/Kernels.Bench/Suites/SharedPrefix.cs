// `kernels-bench prefix`: decode steps of B sequences that share a P-token prompt prefix, with the Hydragen attention
// plan (prefix KV read once per step) vs per-sequence attention over private copies of the prefix (the baseline).
using System.Diagnostics;
using System.Text.Json;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;

namespace Kernels.Bench;

public static class SharedPrefix
{
    private sealed record Case(int Batch, int Prefix, int Suffix, double SharedMs, double PrivateMs, double Speedup, long SharedKvMB, long PrivateKvMB);

    public static int Run(string modelName, string batches, string prefixes, int suffix, int steps, string? jsonPath)
    {
        using var model = ModelLoader.Load(modelName);
        using var backend = new CpuBackend(model);
        Console.WriteLine($"# CPU decode with a shared prefix, {modelName} ({model.Config.ParameterCount / 1e6:F1}M parameters), {Environment.ProcessorCount} cores");
        Console.WriteLine($"# per case: B sequences = P shared prompt tokens + {suffix} unique tokens each; median of {steps} decode steps");
        Console.WriteLine("# shared: the prefix's KV blocks are held once and attended once per step for all B (AttentionPlanner levels)");
        Console.WriteLine("# private: every sequence holds its own copy and attends alone (an engine without prefix sharing)");
        Console.WriteLine();
        Console.WriteLine("| batch | prefix | shared ms/step | private ms/step | speedup | KV MB shared | KV MB private |");
        Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|");
        var results = new List<Case>();
        var rng = new Random(1);
        foreach (int p in prefixes.Split(',').Select(int.Parse))
        {
            var root = (KvSequence)backend.CreateCache();
            for (int at = 0; at < p; at += 256) // prefill the prefix once, in chunks
                backend.Forward([new SequenceStep(root, Enumerable.Range(0, Math.Min(256, p - at)).Select(_ => rng.Next(3, model.Config.VocabSize)).ToArray())]);
            foreach (int b in batches.Split(',').Select(int.Parse))
            {
                double Time(bool shared, out long kvBytes)
                {
                    int before = backend.KvPool.Capacity - backend.KvPool.FreeBlocks;
                    var seqs = Enumerable.Range(0, b).Select(_ => shared ? (KvSequence)root.Fork() : root.Copy()).ToArray();
                    backend.Forward(seqs.Select(s => new SequenceStep(s, Enumerable.Range(0, suffix).Select(_ => rng.Next(3, model.Config.VocabSize)).ToArray())).ToArray());
                    kvBytes = (backend.KvPool.Capacity - backend.KvPool.FreeBlocks - before) * (long)backend.KvPool.BlockSize * backend.KvBytesPerToken;
                    var times = new List<double>();
                    for (int step = 0; step < steps + 2; step++)
                    {
                        var batch = seqs.Select(s => new SequenceStep(s, new[] { rng.Next(3, model.Config.VocabSize) })).ToArray();
                        var clock = Stopwatch.StartNew();
                        backend.Forward(batch, shared ? AttentionPlanner.Build(batch) : null);
                        if (step >= 2) times.Add(clock.Elapsed.TotalMilliseconds);
                    }
                    foreach (var s in seqs) s.Dispose();
                    times.Sort();
                    return times[times.Count / 2];
                }
                double sharedMs = Time(true, out long sharedKv);
                double privateMs = Time(false, out long privateKv);
                var r = new Case(b, p, suffix, sharedMs, privateMs, privateMs / sharedMs, sharedKv >> 20, privateKv >> 20);
                results.Add(r);
                Console.WriteLine($"| {b} | {p} | {sharedMs:F1} | {privateMs:F1} | {r.Speedup:F2}x | {r.SharedKvMB} | {r.PrivateKvMB} |");
            }
            root.Dispose();
        }
        if (jsonPath != null) File.WriteAllText(jsonPath, JsonSerializer.Serialize(new { model = modelName, suffix, steps, results }, new JsonSerializerOptions { WriteIndented = true }));
        return 0;
    }
}
