// `kernels-bench matmul`: the CPU matmul on a model's real weights, one weight at a time: time per call (min and
// median of many), weight bytes streamed per second and multiply-adds per second, for each number of x rows. Every
// stored form goes through the backend's Linear.Multiply, so a W4A8 or SqueezeLLM directory times its kernel (the LUT
// matmul against a dense model's BF16, say). The tool for tuning one kernel at a time; run under
// DOTNET_PROCESSOR_COUNT=1 to time one core.
using System.CommandLine;
using System.Diagnostics;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Bench;

public static class MatMulBench
{
    public static Command CreateCommand()
    {
        var model = new Option<string>("--model") { DefaultValueFactory = _ => "synthetic:small", Description = "Model whose weights are multiplied (a .gguf of any weight type, an HF directory, synthetic:...)" };
        var rows = new Option<string>("--rows") { DefaultValueFactory = _ => "1,16,64", Description = "Comma-separated numbers of x rows" };
        var layer = new Option<int>("--layer") { DefaultValueFactory = _ => 0, Description = "Which layer's weights (the LM head is timed too); -1: every layer in turn (one weight kind at a time); -2: every layer's projections in a forward step's order, so each weight comes from memory as in a real step (ms per step)" };
        var seconds = new Option<double>("--seconds") { DefaultValueFactory = _ => 0.5, Description = "Timing budget per weight and row count (--layer -2: per row count, at least 30 steps)" };
        var command = new Command("matmul", "CPU matmul per weight of one layer and the LM head (dense or quantized): time per call, GB/s of weights, GMAC/s");
        foreach (var o in new Option[] { model, rows, layer, seconds }) command.Options.Add(o);
        command.SetAction(p => Run(p.GetValue(model)!, p.GetValue(rows)!, p.GetValue(layer), p.GetValue(seconds)));
        return command;
    }

    private static int Run(string modelSpec, string rowList, int layerIndex, double seconds)
    {
        using var model = ModelLoader.Load(modelSpec);
        if (layerIndex < StepOrder || layerIndex >= model.Weights.Layers.Count)
        {
            Console.Error.WriteLine($"--layer {layerIndex}: {modelSpec} has layers 0..{model.Weights.Layers.Count - 1} (or -1: all in turn, -2: a step's order)");
            return 1;
        }
        var layers = layerIndex < 0 ? model.Weights.Layers.ToArray() : [model.Weights.Layers[layerIndex]];
        var weights = new List<(string Name, LinearWeight[] W)>
        {
            ("q", layers.Select(l => l.Wq).ToArray()), ("k", layers.Select(l => l.Wk).ToArray()), ("v", layers.Select(l => l.Wv).ToArray()),
            ("o", layers.Select(l => l.Wo).ToArray()), ("gate", layers.Select(l => l.Gate).ToArray()), ("up", layers.Select(l => l.Up).ToArray()),
            ("down", layers.Select(l => l.Down).ToArray()), ("lm_head", [new DenseLinear("lm_head", model.Weights.LmHead)]),
        };
        Console.WriteLine($"# {modelSpec}, {(layerIndex == StepOrder ? $"all {layers.Length} layers in a step's order" : layerIndex < 0 ? $"all {layers.Length} layers in turn" : $"layer {layerIndex}")}; {Environment.ProcessorCount} threads; GGML dot path {GgmlDot.Best}; " +
                          $"AVX-512F {System.Runtime.Intrinsics.X86.Avx512F.IsSupported}; load average {LoadAverage()}");
        if (layerIndex == StepOrder)
        {
            Console.WriteLine("| x rows | q + k + v ms | o ms | gate + up ms | down ms | (per step: every layer once, median of 29 steps) |");
            Console.WriteLine("|---:|---:|---:|---:|---:|---|");
            foreach (int r in rowList.Split(',').Select(int.Parse)) StepSequence(model, r, 30, seconds);
            return 0;
        }
        Console.WriteLine("| weight | format | N x K | x rows | min ms | median ms | GB/s (min) | GMAC/s (min) |");
        Console.WriteLine("|---|---|---|---:|---:|---:|---:|---:|");
        var rng = new Random(1);
        foreach (int r in rowList.Split(',').Select(int.Parse))
            foreach (var (name, all) in weights)
            {
                var w = all[0];
                var x = new float[r * w.InFeatures];
                for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
                var y = new float[r * w.OutFeatures];
                Linear.Multiply(x, r, w, y); // warm-up
                var times = new List<double>();
                var budget = Stopwatch.StartNew();
                while (budget.Elapsed.TotalSeconds < seconds || times.Count < 5)
                {
                    var wi = all[times.Count % all.Length];
                    long t0 = Stopwatch.GetTimestamp();
                    Linear.Multiply(x, r, wi, y);
                    times.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
                }
                times.Sort();
                double min = times[0], median = times[times.Count / 2];
                Console.WriteLine($"| {name} | {w.Format} | {w.OutFeatures} x {w.InFeatures} | {r} | {min:F3} | {median:F3} | {w.ByteLength / min / 1e6:F1} | {(double)r * w.OutFeatures * w.InFeatures / min / 1e6:F1} |");
            }
        return 0;
    }

    /// <summary>--layer -2: every layer's projections in a forward step's order, repeated; ms per step by projection.</summary>
    private const int StepOrder = -2;

    /// <summary>
    /// The projections of every layer in a forward step's order (q, k, v; o; gate, up; down), repeated, each weight read
    /// from memory as in a real step (the whole model does not fit the caches): per-step milliseconds by projection,
    /// the median over the repetitions after the first (at least <paramref name="reps"/>, more while under
    /// <paramref name="seconds"/>). What the one-weight rows cannot show: a weight read cold.
    /// </summary>
    private static void StepSequence(LoadedModel model, int r, int reps, double seconds)
    {
        var c = model.Config;
        var rng = new Random(2);
        float[] Rand(int n) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1); return a; }
        var xn = Rand(r * c.HiddenSize); var gate = Rand(r * c.IntermediateSize); var up = new float[r * c.IntermediateSize];
        var q = new float[r * c.QueryDim]; var k = new float[r * c.KvDim]; var v = new float[r * c.KvDim]; var proj = new float[r * c.HiddenSize];
        var attn = Rand(r * c.QueryDim);
        var steps = new List<double[]>(); // per repetition (a step: every layer once), ms by projection
        var budget = Stopwatch.StartNew();
        for (int rep = 0; rep < reps || budget.Elapsed.TotalSeconds < seconds; rep++)
        {
            var t = new long[4];
            foreach (var l in model.Weights.Layers)
            {
                long t0 = Stopwatch.GetTimestamp();
                Linear.Multiply(xn, r, l.Wq, q); Linear.Multiply(xn, r, l.Wk, k); Linear.Multiply(xn, r, l.Wv, v);
                long t1 = Stopwatch.GetTimestamp();
                Linear.Multiply(attn, r, l.Wo, proj);
                long t2 = Stopwatch.GetTimestamp();
                Linear.Multiply(xn, r, l.Gate, gate); Linear.Multiply(xn, r, l.Up, up);
                long t3 = Stopwatch.GetTimestamp();
                Linear.Multiply(gate, r, l.Down, proj);
                long t4 = Stopwatch.GetTimestamp();
                t[0] += t1 - t0; t[1] += t2 - t1; t[2] += t3 - t2; t[3] += t4 - t3;
            }
            if (rep > 0) steps.Add(t.Select(ticks => ticks * 1000.0 / Stopwatch.Frequency).ToArray());
        }
        double Median(int i) => steps.Select(s => s[i]).OrderBy(v => v).ElementAt(steps.Count / 2);
        Console.WriteLine($"| {r} | {Median(0):F3} | {Median(1):F3} | {Median(2):F3} | {Median(3):F3} | |");
    }

    private static string LoadAverage() => File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "?";
}
