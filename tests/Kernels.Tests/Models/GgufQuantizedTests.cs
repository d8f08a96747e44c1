// GGUF files as users have them: made by llama.cpp's own quantizer (through LLamaSharp) from a model we export, loaded
// and run by us, and checked against llama.cpp running the same file: greedy tokens identical, perplexity within 1 %.
using Kernels.Bench;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Kernels.Tests.Numerics;

namespace Kernels.Tests.Models;

[NonParallelizable]
public sealed class GgufQuantizedTests
{
    private string _dir = "";
    private string _mini = "";

    [OneTimeSetUp]
    public void Export()
    {
        _dir = Path.Combine(Path.GetTempPath(), $"kernels-ggml-{Guid.NewGuid():N}");
        Directory.CreateDirectory(_dir);
        _mini = Path.Combine(_dir, "mini-f16.gguf");
        using var model = ModelLoader.Load("synthetic:mini");
        GgufExport.Write(model, _mini, TensorDType.F16);
    }

    [OneTimeTearDown]
    public void Delete()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    private string Quantized(string source, string type)
    {
        string path = Path.Combine(_dir, $"{Path.GetFileNameWithoutExtension(source)}-{type}.gguf");
        if (!File.Exists(path)) LlamaCpp.Quantize(source, path, type);
        return path;
    }

    /// <summary>The file types users download (Q4_K_M first), plus the ones that make llama.cpp write every other block type.</summary>
    public static readonly string[] FileTypes = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q3_K_M", "Q2_K"];

    /// <summary>stories260K (trained) in the k-quant mixes llama.cpp can make of it (its FFN width of 172 rules out Q4_0 / Q8_0 files).</summary>
    public static readonly string[] StoriesFileTypes = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K"];

    [TestCaseSource(nameof(FileTypes))]
    public void SyntheticMiniAgreesWithLlamaCppOnTheSameFile(string fileType)
    {
        GgmlNative.Require();
        AgreesWithLlamaCpp(Quantized(_mini, fileType), fileType, prompt: null);
    }

    [TestCaseSource(nameof(StoriesFileTypes))]
    public void StoriesAgreesWithLlamaCppOnTheSameFile(string fileType)
    {
        GgmlNative.Require();
        string exported = Path.Combine(_dir, "stories-f32.gguf");
        if (!File.Exists(exported))
        {
            using var original = ModelLoader.Load(SharedData.Require("models/stories260K/stories260K.bin"));
            GgufExport.Write(original, exported, TensorDType.F32);
        }
        AgreesWithLlamaCpp(Quantized(exported, fileType), fileType, "Once upon a time, there was a");
    }

    /// <summary>
    /// Teacher-forced on llama.cpp's own 64-token greedy continuation (attention in fp32 on its side, as ours): at every
    /// step our logits are within 3 % of the logit range of llama.cpp's, and our argmax is llama.cpp's wherever its
    /// margin between the first two tokens is larger than the largest logit difference between the two engines. The
    /// sharper "identical greedy text" holds for some files and not others on the synthetic (random-weight) model, and is
    /// not a property llama.cpp itself has: its AVX2 and AVX-512 builds disagree with each other within a few tokens on
    /// these files (docs/gguf.md), because every matmul quantizes its input to int8 and a 1e-7 difference upstream flips
    /// a code now and then, and random logits have near-ties.
    /// </summary>
    private static void AgreesWithLlamaCpp(string path, string fileType, string? prompt)
    {
        using var model = ModelLoader.Load(path);
        var types = model.Weights.All().Where(t => t.Shape.Length == 2).Select(t => t.DType).Distinct().ToArray();
        Assert.That(types, Has.Some.Matches<TensorDType>(t => t.IsBlockQuantized()), $"{fileType}: no block-quantized matrix was loaded");
        int[] ids0 = prompt != null ? model.Tokenizer.Encode(prompt, true).ToArray() : [1, 17, 333, 42, 250, 7, 400, 91];
        var ids = ids0.Concat(LlamaCpp.Greedy(path, ids0, 64, fp32Attention: true)).ToArray();
        var theirs = LlamaCpp.Logits(path, ids, fp32Attention: true);
        using var backend = new CpuBackend(model);
        using var cache = backend.CreateCache();
        var ours = backend.Forward([new SequenceStep(cache, ids, AllLogits: true)])[0];
        int v = model.Config.VocabSize;
        double maxDiff = 0, range = 0;
        var decisions = new List<(int Step, int Ours, int Theirs, double Margin)>();
        for (int t = ids0.Length - 1; t < ids.Length - 1; t++)
        {
            var o = ours.AsSpan(t * v, v);
            var th = theirs[t];
            range = Math.Max(range, th.Max() - th.Min());
            for (int i = 0; i < v; i++) maxDiff = Math.Max(maxDiff, Math.Abs(o[i] - th[i]));
            var top = th.OrderByDescending(x => x).Take(2).ToArray();
            decisions.Add((t - ids0.Length + 1, Sampler.ArgMax(o), Sampler.ArgMax(th), top[0] - top[1]));
        }
        var differing = decisions.Where(d => d.Ours != d.Theirs).ToList();
        TestContext.Out.WriteLine($"{fileType} ({string.Join(", ", types)}): max |logit difference| {maxDiff:E2} of a range {range:F2}; " +
                                  $"argmax differs at {differing.Count} of 64 steps (llama.cpp's margins there: {string.Join(", ", differing.Select(d => d.Margin.ToString("E1")))})");
        Assert.That(maxDiff, Is.LessThan(0.03 * range), $"{fileType}: logits differ from llama.cpp's by {maxDiff:E2}");
        foreach (var d in differing)
            Assert.That(d.Margin, Is.LessThan(maxDiff), $"{fileType} step {d.Step}: ours picks {d.Ours}, llama.cpp {d.Theirs} with a margin of {d.Margin:E2}, beyond the {maxDiff:E2} the engines differ by");
    }

    // stories260K's FFN width of 172 is not whole 32-blocks: llama.cpp refuses Q4_0 and Q8_0 for it, and its k-quant
    // mixes fall back to Q4_0, Q5_0, Q5_1, Q8_0 and F16 tensor by tensor (so these cover the 32-value formats).
    [TestCase("Q4_K_M")]
    [TestCase("Q5_K_M")]
    [TestCase("Q6_K")]
    [TestCase("Q3_K_M")]
    [TestCase("Q2_K")]
    public void StoriesPerplexityIsWithinOnePercentOfLlamaCpp(string fileType)
    {
        GgmlNative.Require();
        string path = Quantized(SharedData.Require("models/stories260K/stories260K.gguf"), fileType);
        using var model = ModelLoader.Load(path);
        var ids = model.Tokenizer.Encode(File.ReadAllText(SharedData.Require("data/story.txt")), true).ToArray();
        using var backend = new CpuBackend(model);
        double ours = Perplexity.Compute(backend, ids).Perplexity;
        double theirs = LlamaCpp.Perplexity(path, ids, model.Config.MaxPositions);
        TestContext.Out.WriteLine($"stories260K {fileType}: perplexity ours {ours:F4}, llama.cpp {theirs:F4} ({ids.Length} tokens)");
        Assert.That(Math.Abs(ours / theirs - 1), Is.LessThan(0.01), $"ours {ours}, llama.cpp {theirs}");
    }

    [Test]
    public void AnUnsupportedTensorTypeNamesTheTensorAndTheType()
    {
        GgmlNative.Require();
        string path = Quantized(_mini, "IQ4_NL");
        var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(path).Dispose());
        Assert.That(e!.Message, Does.Contain("IQ4_NL").And.Contain("tensor '").And.Contain("supported:"));
    }

    [Test]
    public void TruncatedQuantizedDataIsAClearError()
    {
        GgmlNative.Require();
        string source = Quantized(_mini, "Q4_K_M");
        string path = Path.Combine(_dir, "truncated.gguf");
        var bytes = File.ReadAllBytes(source);
        File.WriteAllBytes(path, bytes[..(bytes.Length - 1000)]);
        var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(path).Dispose());
        Assert.That(e!.Message, Does.Contain("truncated").And.Contain(path));
    }
}
