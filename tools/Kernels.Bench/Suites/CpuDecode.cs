// `kernels-bench decode`: CPU decode steps for given batch sizes against a measured memory-bandwidth roofline (every
// decode step must stream all weights once) and the measured FMA peak.
using System.Diagnostics;
using System.Text.Json;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;

namespace Kernels.Bench;

internal static class CpuDecode
{
    /// <summary>RooflineMs = max(weights / bandwidth, 2 * parameters * batch / peak FLOP rate), both measured here.</summary>
    private sealed record DecodeResult(int Batch, int Steps, double MsPerStep, double TokensPerSecond, double WeightGBps, double Gflops, double RooflineMs, double RooflineFraction);

    internal static int Run(string modelName, string batchList, int steps, int context, string? jsonPath, KvCacheFormat? kvCache = null)
    {
        using var model = ModelLoader.Load(modelName);
        using var backend = new CpuBackend(model, new CpuBackendOptions { KvCache = kvCache ?? KvCacheFormat.Fp32 });
        long weightBytes = model.Weights.All().Sum(t => t.ByteLength);
        double bandwidth = CpuRoofline.MeasureBandwidthGBps();
        double peakGflops = CpuRoofline.MeasureFmaGflops();
        Console.WriteLine($"# CPU decode, {modelName}: {model.Config.ParameterCount / 1e6:F1}M parameters, {weightBytes / 1e6:F1} MB of weights per step");
        Console.WriteLine($"# machine: {Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture}, " +
                          $"AVX2 {System.Runtime.Intrinsics.X86.Avx2.IsSupported}; measured copy bandwidth {bandwidth:F1} GB/s (read + write), FMA peak {peakGflops:F0} GFLOP/s");
        Console.WriteLine("# roofline per step = max(weight bytes / bandwidth, 2 x parameters x batch / FMA peak)");
        Console.WriteLine($"# KV context {context} tokens per sequence, KV cache {backend.KvFormat}; median of {steps} timed steps after 3 warm-up steps");
        Console.WriteLine();
        Console.WriteLine("| batch | ms/step | tokens/s | weight GB/s | GFLOP/s | roofline ms/step | of roofline |");
        Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|");
        var results = new List<DecodeResult>();
        foreach (int batch in batchList.Split(',').Select(int.Parse))
        {
            var caches = Enumerable.Range(0, batch).Select(_ => backend.CreateCache()).ToArray();
            var rng = new Random(batch);
            // Prefill every sequence with `context` random tokens (one batched forward).
            backend.Forward(caches.Select(c => new SequenceStep(c, Enumerable.Range(0, context).Select(_ => rng.Next(3, model.Config.VocabSize)).ToArray())).ToArray());
            var next = caches.Select(_ => new[] { rng.Next(3, model.Config.VocabSize) }).ToArray();
            for (int w = 0; w < 3; w++) Step(backend, caches, next);
            // Median of per-step times: robust to the other process on a 2-core machine.
            var times = new double[steps];
            for (int s = 0; s < steps; s++)
            {
                var clock = Stopwatch.StartNew();
                Step(backend, caches, next);
                times[s] = clock.Elapsed.TotalSeconds;
            }
            Array.Sort(times);
            double seconds = times[steps / 2] * steps;
            foreach (var c in caches) c.Dispose();
            double stepMs = seconds / steps * 1e3;
            double gbps = weightBytes / (seconds / steps) / 1e9;
            double flops = 2.0 * model.Config.ParameterCount * batch;
            double rooflineMs = Math.Max(weightBytes / (bandwidth * 1e9), flops / (peakGflops * 1e9)) * 1e3;
            var r = new DecodeResult(batch, steps, stepMs, batch * steps / seconds, gbps, flops / (stepMs * 1e6), rooflineMs, rooflineMs / stepMs);
            results.Add(r);
            Console.WriteLine($"| {batch} | {r.MsPerStep:F1} | {r.TokensPerSecond:F1} | {r.WeightGBps:F1} | {r.Gflops:F1} | {r.RooflineMs:F1} | {r.RooflineFraction:P0} |");
        }
        if (jsonPath != null)
            File.WriteAllText(jsonPath, JsonSerializer.Serialize(new { model = modelName, weightBytes, bandwidthGBps = bandwidth, peakGflops, results }, new JsonSerializerOptions { WriteIndented = true }));
        return 0;
    }

    private static void Step(IBackend backend, IKvCache[] caches, int[][] next)
    {
        var logits = backend.Forward(caches.Select((c, i) => new SequenceStep(c, next[i])).ToArray());
        for (int i = 0; i < next.Length; i++) next[i][0] = Kernels.Runtime.Backends.Sampler.ArgMax(logits[i]);
    }
}
