// `kernels info`: the model's configuration, tensors' dtypes and the backend that would run it.
using System.CommandLine;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Cli.Commands;

public static class InfoCommand
{
    public static Command Create(CliIo io)
    {
        var model = new ModelOptions();
        var command = new Command("info", "Print a model's configuration");
        model.AddTo(command);
        command.SetAction(parse =>
        {
            using var loaded = model.Load(parse, io);
            var c = loaded.Config;
            var o = io.Out;
            o.WriteLine($"source:             {loaded.Source}");
            o.WriteLine($"format:             {loaded.Format}");
            o.WriteLine($"architecture:       {c.Architecture}");
            o.WriteLine($"parameters:         {c.ParameterCount:N0}");
            o.WriteLine($"hidden size:        {c.HiddenSize}");
            o.WriteLine($"intermediate size:  {c.IntermediateSize}");
            o.WriteLine($"layers:             {c.NumLayers}");
            o.WriteLine($"heads (q / kv):     {c.NumHeads} / {c.NumKvHeads} (head dim {c.HeadDim})");
            o.WriteLine($"vocabulary:         {c.VocabSize}");
            o.WriteLine($"context:            {c.MaxPositions}");
            o.WriteLine($"rms norm eps:       {c.RmsNormEps:G}");
            o.WriteLine($"rope:               theta {c.RopeTheta:G}, scaling {Scaling(c.RopeScaling)}{(c.RopeFrequencyFactors != null ? ", per-frequency factors" : "")}");
            o.WriteLine($"tied embeddings:    {c.TieWordEmbeddings}");
            o.WriteLine($"qkv bias:           {c.AttentionBias}");
            if (c.SlidingWindow is int w) o.WriteLine($"sliding window:     {w}");
            o.WriteLine($"bos / eos:          {c.BosTokenId?.ToString() ?? "none"} / {(c.EosTokenIds.Count > 0 ? string.Join(",", c.EosTokenIds) : "none")}");
            var dtypes = loaded.Weights.All().GroupBy(t => t.DType).Select(g => $"{g.Key.Name()} x{g.Count()}");
            o.WriteLine($"weights:            {string.Join(", ", dtypes)} ({loaded.Weights.All().Sum(t => t.ByteLength) / 1e6:F1} MB)");
            var linears = loaded.Weights.Layers.SelectMany(l => new[] { l.Wq, l.Wk, l.Wv, l.Wo, l.Gate, l.Up, l.Down })
                .GroupBy(l => l.Format).Select(g => $"{g.Key} x{g.Count()}");
            o.WriteLine($"linear layers:      {string.Join(", ", linears)}{(loaded.Weights.Quantization is { } q ? $" (quantized: {q.Method})" : "")}");
            try
            {
                var t = loaded.Tokenizer;
                o.WriteLine($"tokenizer:          {t.GetType().Name}, {t.VocabSize} tokens, bos {t.BosId?.ToString() ?? "none"}, eos {string.Join(",", t.EosIds)}");
            }
            catch (ModelFormatException e)
            {
                o.WriteLine($"tokenizer:          none ({e.Message})");
            }
            using var backend = model.CreateBackend(loaded, parse, io);
            return 0;
        });
        return command;
    }

    private static string Scaling(RopeScaling s) => s.Type switch
    {
        RopeScalingType.None => "none",
        RopeScalingType.Linear => $"linear x{s.Factor:G}",
        RopeScalingType.Llama3 => $"llama3 x{s.Factor:G} (low {s.LowFreqFactor:G}, high {s.HighFreqFactor:G}, original {s.OriginalMaxPositions})",
        _ => s.Type.ToString(),
    };
}
