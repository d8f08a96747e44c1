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
        var layer = new Option<int>("--layer") { DefaultValueFactory = _ => 0, Description = "Which layer's weights (the LM head is timed too)" };
        var seconds = new Option<double>("--seconds") { DefaultValueFactory = _ => 0.5, Description = "Timing budget per weight and row count" };
        var command = new Command("matmul", "CPU matmul per weight of one layer and the LM head (dense or quantized): time per call, GB/s of weights, GMAC/s");
        foreach (var o in new Option[] { model, rows, layer, seconds }) command.Options.Add(o);
        command.SetAction(p => Run(p.GetValue(model)!, p.GetValue(rows)!, p.GetValue(layer), p.GetValue(seconds)));
        return command;
    }

    private static int Run(string modelSpec, string rowList, int layerIndex, double seconds)
    {
        using var model = ModelLoader.Load(modelSpec);
        var layer = model.Weights.Layers[layerIndex];
        var weights = new List<(string Name, LinearWeight W)>
        {
            ("q", layer.Wq), ("k", layer.Wk), ("v", layer.Wv), ("o", layer.Wo), ("gate", layer.Gate), ("up", layer.Up), ("down", layer.Down),
            ("lm_head", new DenseLinear("lm_head", model.Weights.LmHead)),
        };
        Console.WriteLine($"# {modelSpec}, layer {layerIndex}; {Environment.ProcessorCount} threads; GGML dot path {GgmlDot.Best}; " +
                          $"AVX-512F {System.Runtime.Intrinsics.X86.Avx512F.IsSupported}; load average {LoadAverage()}");
        Console.WriteLine("| weight | format | N x K | x rows | min ms | median ms | GB/s (min) | GMAC/s (min) |");
        Console.WriteLine("|---|---|---|---:|---:|---:|---:|---:|");
        var rng = new Random(1);
        foreach (int r in rowList.Split(',').Select(int.Parse))
            foreach (var (name, w) in weights)
            {
                var x = new float[r * w.InFeatures];
                for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
                var y = new float[r * w.OutFeatures];
                Linear.Multiply(x, r, w, y); // warm-up
                var times = new List<double>();
                var budget = Stopwatch.StartNew();
                while (budget.Elapsed.TotalSeconds < seconds || times.Count < 5)
                {
                    long t0 = Stopwatch.GetTimestamp();
                    Linear.Multiply(x, r, w, y);
                    times.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
                }
                times.Sort();
                double min = times[0], median = times[times.Count / 2];
                Console.WriteLine($"| {name} | {w.Format} | {w.OutFeatures} x {w.InFeatures} | {r} | {min:F3} | {median:F3} | {w.ByteLength / min / 1e6:F1} | {(double)r * w.OutFeatures * w.InFeatures / min / 1e6:F1} |");
            }
        return 0;
    }

    private static string LoadAverage() => File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "?";
}
