// llama.cpp through LLamaSharp (LLamaSharp.Backend.Cpu) as the reference next to ours: its quantizer makes the GGUF
// files users download, its greedy decoding and perplexity are what ours must match on the same file.
using LLama;
using LLama.Native;

namespace Kernels.Bench;

public static class LlamaCpp
{
    private static readonly object Gate = new();
    private static bool _configured;

    /// <summary>
    /// Loads llama.cpp's native library once (silenced; <paramref name="avx"/> picks its build: null = the best the CPU
    /// runs, or e.g. AvxLevel.Avx2 to compare AVX2 paths). Must run before any other LLamaSharp call in the process.
    /// </summary>
    public static void Configure(AvxLevel? avx = null)
    {
        lock (Gate)
        {
            if (_configured) return;
            var config = NativeLibraryConfig.All.WithLogCallback((_, _) => { });
            if (avx is { } level) config.WithAvx(level);
            // The quantizer's entry points do not load the library themselves: any NativeApi call does.
            SystemInfo();
            _configured = true;
        }
    }

    /// <summary>llama.cpp's system_info line (the CPU features its build uses).</summary>
    public static string SystemInfo()
    {
        object info = typeof(NativeApi).GetMethod("llama_print_system_info")!.Invoke(null, null)!;
        return (info is IntPtr ptr ? System.Runtime.InteropServices.Marshal.PtrToStringAnsi(ptr) : info.ToString())?.Trim() ?? "";
    }

    /// <summary>The llama.cpp CPU library this process loaded (e.g. avx512/libggml-cpu.so), from /proc/self/maps.</summary>
    public static string LoadedCpuLibrary() =>
        File.Exists("/proc/self/maps")
            ? File.ReadLines("/proc/self/maps").Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries).LastOrDefault() ?? "")
                .Where(l => l.EndsWith("libggml-cpu.so", StringComparison.Ordinal))
                .Select(l => Path.GetFileName(Path.GetDirectoryName(l)) + "/" + Path.GetFileName(l)).FirstOrDefault() ?? "?"
            : "?";

    /// <summary>
    /// llama.cpp's quantizer (llama_model_quantize with llama-quantize's defaults: the output tensor quantized too) from <paramref name="source"/> (F16/F32
    /// GGUF) to <paramref name="destination"/> in <paramref name="type"/>, e.g. "Q4_K_M", "Q8_0".
    /// </summary>
    public static void Quantize(string source, string destination, string type, int threads = 0)
    {
        Configure();
        var ftype = Enum.Parse<LLamaFtype>("MOSTLY_" + type.ToUpperInvariant().Replace("MOSTLY_", ""));
        if (!LLamaQuantizer.Quantize(source, destination, ftype, threads > 0 ? threads : Environment.ProcessorCount, allowRequantize: true, quantizeOutputTensor: true))
            throw new InvalidOperationException($"llama.cpp could not quantize {source} to {type}");
    }

    /// <summary>
    /// Greedy continuation of <paramref name="prompt"/> (token ids) for <paramref name="count"/> tokens. With
    /// <paramref name="fp32Attention"/> llama.cpp keeps its KV cache in F32 and attention off the flash path
    /// (--cache-type-k f32 --cache-type-v f32 -fa off), so its attention is fp32 like ours; by default it stores K/V in
    /// F16, rounds q to F16 and accumulates the flash-attention output in F16, a 1e-3 difference that quantizing every
    /// matmul's input to int8 then amplifies (see docs/gguf.md).
    /// </summary>
    public static int[] Greedy(string model, int[] prompt, int count, bool fp32Attention = false)
    {
        Configure();
        var p = new LLama.Common.ModelParams(model) { ContextSize = (uint)(prompt.Length + count + 8), BatchSize = (uint)Math.Max(prompt.Length, 64), GpuLayerCount = 0 };
        if (fp32Attention) UseFp32Attention(p);
        using var weights = LLamaWeights.LoadFromFile(p);
        using var ctx = weights.CreateContext(p);
        var batch = new LLamaBatch();
        for (int i = 0; i < prompt.Length; i++) batch.Add(prompt[i], i, LLamaSeqId.Zero, i == prompt.Length - 1);
        Check(ctx.Decode(batch));
        var tokens = new int[count];
        int next = Kernels.Runtime.Backends.Sampler.ArgMax(ctx.NativeHandle.GetLogitsIth(batch.TokenCount - 1));
        for (int i = 0; i < count; i++)
        {
            tokens[i] = next;
            batch.Clear();
            batch.Add(next, prompt.Length + i, LLamaSeqId.Zero, true);
            Check(ctx.Decode(batch));
            next = Kernels.Runtime.Backends.Sampler.ArgMax(ctx.NativeHandle.GetLogitsIth(0));
        }
        return tokens;
    }

    /// <summary>K/V stored in fp32 and the flash-attention kernel off: llama.cpp's attention in fp32, as ours.</summary>
    private static void UseFp32Attention(LLama.Common.ModelParams p)
    {
        p.TypeK = GGMLType.GGML_TYPE_F32;
        p.TypeV = GGMLType.GGML_TYPE_F32;
        p.FlashAttention = false;
    }

    /// <summary>
    /// llama.cpp's logits after every prefix of <paramref name="ids"/> (one batch, teacher-forced): row t scores the
    /// token after ids[0..t]. <paramref name="fp32Attention"/> as in <see cref="Greedy"/>.
    /// </summary>
    public static float[][] Logits(string model, int[] ids, bool fp32Attention = false)
    {
        Configure();
        var p = new LLama.Common.ModelParams(model) { ContextSize = (uint)(ids.Length + 8), BatchSize = (uint)ids.Length, UBatchSize = (uint)ids.Length, GpuLayerCount = 0 };
        if (fp32Attention) UseFp32Attention(p);
        using var weights = LLamaWeights.LoadFromFile(p);
        using var ctx = weights.CreateContext(p);
        int vocab = weights.Vocab.Count;
        var batch = new LLamaBatch();
        for (int i = 0; i < ids.Length; i++) batch.Add(ids[i], i, LLamaSeqId.Zero, true);
        Check(ctx.Decode(batch));
        return Enumerable.Range(0, ids.Length).Select(t => ctx.NativeHandle.GetLogitsIth(t)[..vocab].ToArray()).ToArray();
    }

    /// <summary>
    /// Perplexity of ids[1..] as Kernels.Runtime.Engine.Perplexity computes it (non-overlapping windows of the
    /// model's context, a fresh cache each, log-softmax in double), from llama.cpp's logits.
    /// </summary>
    public static double Perplexity(string model, int[] ids, int window)
    {
        Configure();
        var p = new LLama.Common.ModelParams(model) { ContextSize = (uint)window, BatchSize = (uint)window, UBatchSize = (uint)window, GpuLayerCount = 0 };
        using var weights = LLamaWeights.LoadFromFile(p);
        using var ctx = weights.CreateContext(p);
        int vocab = weights.Vocab.Count;
        double nll = 0;
        int scored = 0;
        for (int start = 0; start + 1 < ids.Length; start += window)
        {
            var chunk = ids.Skip(start).Take(window).ToArray();
            if (chunk.Length < 2) break;
            ctx.NativeHandle.MemoryClear(true);
            var batch = new LLamaBatch();
            for (int i = 0; i < chunk.Length; i++) batch.Add(chunk[i], i, LLamaSeqId.Zero, true);
            Check(ctx.Decode(batch));
            for (int t = 0; t + 1 < chunk.Length; t++)
            {
                var row = ctx.NativeHandle.GetLogitsIth(t);
                float max = float.NegativeInfinity;
                foreach (float v in row[..vocab]) max = Math.Max(max, v);
                double sum = 0;
                foreach (float v in row[..vocab]) sum += Math.Exp(v - max);
                nll += -(row[chunk[t + 1]] - max - Math.Log(sum));
                scored++;
            }
        }
        return Math.Exp(nll / scored);
    }

    private static void Check(DecodeResult r)
    {
        if (r != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode failed: {r}");
    }
}
