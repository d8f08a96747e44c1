// The CLI's commands on models that need no files: output shapes and formats that scripts rely on.
using System.Text.Json;

namespace Kernels.Tests.Cli;

public class CommandTests
{
    private static (int Code, string Out, string Error) Kernels(params string[] args) => CliRunner.Run(args);

    [Test]
    public void LogitsAsJsonHaveOneValuePerVocabularyEntry()
    {
        var r = Kernels("logits", "--model", "synthetic:tiny", "--ids", "1,5,9", "--format", "json");
        Assert.That(r.Code, Is.EqualTo(0), r.Error);
        var logits = JsonDocument.Parse(r.Out).RootElement.GetProperty("logits");
        Assert.That(logits.GetArrayLength(), Is.EqualTo(512));
        Assert.That(logits.EnumerateArray().All(x => float.IsFinite(x.GetSingle())));
    }

    [Test]
    public void LogitsMatchTheGoldenLastPosition()
    {
        string model = TestPaths.Golden("tiny-llama-f32");
        using var golden = global::Kernels.Runtime.Models.SafetensorsFile.Open(Path.Combine(model, "golden.safetensors"));
        var ids = golden.ReadInt64("input_ids.0");
        var expected = golden.ReadSingle("logits.0").AsSpan((ids.Length - 1) * 512, 512).ToArray();
        var r = Kernels("logits", "--model", model, "--ids", string.Join(",", ids), "--format", "json");
        Assert.That(r.Code, Is.EqualTo(0), r.Error);
        var ours = JsonDocument.Parse(r.Out).RootElement.GetProperty("logits").EnumerateArray().Select(x => x.GetSingle()).ToArray();
        Assert.That(ours.Select((v, i) => Math.Abs(v - expected[i])).Max(), Is.LessThan(1e-4f));
    }

    [Test]
    public void GenerateRunsBatchedPromptsWithSamplesAndSummarizes()
    {
        var r = Kernels("generate", "--model", "synthetic:tiny", "--prompt", "one", "--prompt", "two", "--n", "3", "--max-tokens", "5", "--temperature", "0.9", "--seed", "1", "--ignore-eos");
        Assert.That(r.Code, Is.EqualTo(0), r.Error);
        Assert.That(r.Out.Split('\n').Count(l => l.StartsWith("--- prompt")), Is.EqualTo(6));
        Assert.That(r.Error, Does.Contain("6 sequence(s)").And.Contain("30 generated").And.Contain("tokens/s"));
        Assert.That(r.Error, Does.Contain("random weights"));
    }

    [Test]
    public void GenerateWithLogprobsListsEveryTokenWithItsAlternatives()
    {
        var r = Kernels("generate", "--model", "synthetic:tiny", "--prompt", "one", "--prompt", "two", "--max-tokens", "5", "--ignore-eos", "--logprobs", "2");
        Assert.That(r.Code, Is.EqualTo(0), r.Error);
        var lines = r.Out.Split('\n');
        Assert.That(lines.Count(l => l.StartsWith("--- logprobs of prompt")), Is.EqualTo(2));
        // After each header, 5 lines "id:\"text\" logprob   id:\"text\" logprob  id:\"text\" logprob" (greedy: the token is the first alternative).
        var rows = lines.Where(l => System.Text.RegularExpressions.Regex.IsMatch(l, @"^\d+:"".*"" -?\d+\.\d{4}   \d+:")).ToArray();
        Assert.That(rows, Has.Length.EqualTo(10));
        foreach (var row in rows)
        {
            var m = System.Text.RegularExpressions.Regex.Match(row, @"^(\d+):.* (-?\d+\.\d{4})   (\d+):");
            Assert.That(m.Groups[1].Value, Is.EqualTo(m.Groups[3].Value), $"greedy picks the most likely token: {row}");
            Assert.That(double.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture), Is.LessThanOrEqualTo(0));
        }
        var bad = Kernels("generate", "--model", "synthetic:tiny", "--prompt", "one", "--logprobs", "21");
        Assert.That(bad.Code, Is.Not.Zero);
        Assert.That(bad.Error, Does.Contain("--logprobs").And.Contain("[0, 20]"));
    }

    [Test]
    public void InfoPrintsTheConfiguration()
    {
        var r = Kernels("info", "--model", TestPaths.Golden("tiny-qwen2-f16"));
        Assert.That(r.Code, Is.EqualTo(0), r.Error);
        Assert.That(r.Out, Does.Contain("Qwen2").And.Contain("theta 1000000").And.Contain("qkv bias:           True").And.Contain("F16"));
    }

    /// <summary>llama.cpp's perplexity of story.txt under stories260K's fp32 weights (PerplexityCommandAgreesWithLlamaCppOnTheF32Model prints it).</summary>
    private const double LlamaCppStoryPerplexity = 2.9979;

    private static double PrintedPerplexity(string output) =>
        double.Parse(output.Trim().Split(' ')[^1], System.Globalization.CultureInfo.InvariantCulture);

    [Test]
    public void PerplexityCommandPrintsWhatTheEngineComputesForTheSameText()
    {
        // A cross-check of the CLI path (file reading, tokenization with BOS, backend and window choice) against the
        // library's Perplexity.Compute on the CPU backend, and of the number against llama.cpp's: measured live by the
        // test below where llama.cpp's AVX2 library loads, and here against its value on this text, 2.9979 (measured
        // by that test), so the legs without AVX2 check the number too. Bound as below: 0.5%.
        string model = SharedData.Require("models/stories260K/stories260K.bin");
        string text = SharedData.Require("data/story.txt");
        var r = Kernels("perplexity", "--model", model, "--text", text);
        Assert.That(r.Code, Is.EqualTo(0), r.Error);
        using var loaded = global::Kernels.Runtime.Models.ModelLoader.Load(model);
        var ids = loaded.Tokenizer.Encode(File.ReadAllText(text), addBos: true);
        using var backend = new global::Kernels.Runtime.Backends.Cpu.CpuBackend(loaded);
        var expected = global::Kernels.Runtime.Engine.Perplexity.Compute(backend, ids);
        Assert.That(PrintedPerplexity(r.Out), Is.EqualTo(expected.Perplexity).Within(5e-5), "printed with 4 decimals");
        Assert.That(r.Error, Does.Contain($"scored {ids.Length - 1} tokens in 1 window(s)"));
        Assert.That(Math.Abs(expected.Perplexity / LlamaCppStoryPerplexity - 1), Is.LessThan(0.005), $"ours {expected.Perplexity}, llama.cpp {LlamaCppStoryPerplexity}");
    }

    [Test]
    public void PerplexityCommandAgreesWithLlamaCppOnTheF32Model()
    {
        // The reference is llama.cpp's own forward pass over the same ids (the GGUF holds stories260K's fp32 weights),
        // scored the same way (Kernels.Bench.LlamaCpp.Perplexity). Two fp32 engines differ by summation order only:
        // measured 2.9976 against 2.9979 (0.01%) on story.txt's 330 scored tokens. The bound, 0.5%, is 30x that and a fifth
        // of the smallest 4-bit quantization cost in the README's SqueezeLLM table (+2.6%), so a real change in the
        // forward pass shows while summation order does not.
        global::Kernels.Tests.Numerics.GgmlNative.Require();
        string model = SharedData.Require("models/stories260K/stories260K.gguf");
        string text = SharedData.Require("data/story.txt");
        var r = Kernels("perplexity", "--model", model, "--text", text);
        Assert.That(r.Code, Is.EqualTo(0), r.Error);
        using var loaded = global::Kernels.Runtime.Models.ModelLoader.Load(model);
        var ids = loaded.Tokenizer.Encode(File.ReadAllText(text), addBos: true).ToArray();
        double theirs = global::Kernels.Bench.LlamaCpp.Perplexity(model, ids, loaded.Config.MaxPositions);
        double ours = PrintedPerplexity(r.Out);
        TestContext.Out.WriteLine($"stories260K F32 on story.txt ({ids.Length} tokens): kernels perplexity {ours:F4}, llama.cpp {theirs:F4}");
        Assert.That(Math.Abs(ours / theirs - 1), Is.LessThan(0.005), $"ours {ours}, llama.cpp {theirs}");
    }

    [Test]
    public void PromptsFileRunsEveryLineAndSharingDoesNotChangeTheText()
    {
        string file = Path.Combine(Path.GetTempPath(), $"kernels-prompts-{Guid.NewGuid():N}.jsonl");
        string system = new string('s', 70);
        File.WriteAllLines(file, [
            $"{{\"prompt\": \"{system} one\"}}",
            "",
            $"{{\"prompt\": \"{system} two\", \"n\": 2, \"max_tokens\": 3}}",
        ]);
        try
        {
            var on = Kernels("generate", "--model", "synthetic:tiny", "--prompts", file, "--max-tokens", "6", "--ignore-eos", "--prefix-sharing", "on");
            var off = Kernels("generate", "--model", "synthetic:tiny", "--prompts", file, "--max-tokens", "6", "--ignore-eos", "--prefix-sharing", "off");
            Assert.That(on.Code, Is.EqualTo(0), on.Error);
            Assert.That(off.Code, Is.EqualTo(0), off.Error);
            Assert.That(on.Out, Is.EqualTo(off.Out));
            Assert.That(on.Out.Split('\n').Count(l => l.StartsWith("--- prompt")), Is.EqualTo(3));
            Assert.That(on.Error, Does.Contain("12 generated"), "6 + 2 x 3 tokens");
            Assert.That(on.Error, Does.Contain("cached prefix blocks"));

            File.WriteAllText(file, "{\"text\": \"no prompt field\"}");
            var bad = Kernels("generate", "--model", "synthetic:tiny", "--prompts", file);
            Assert.That(bad.Code, Is.EqualTo(1));
            Assert.That(bad.Error, Does.Contain(file + ":1").And.Contain("prompt"));
        }
        finally
        {
            File.Delete(file);
        }
    }

    [TestCase("fp16")]
    [TestCase("kivi2")]
    [TestCase("kivi4")]
    public void GenerateRunsWithEveryKvCacheFormat(string format)
    {
        var r = Kernels("generate", "--model", "synthetic:tiny", "--prompt", "one", "--max-tokens", "40", "--ignore-eos", "--kv-cache", format, "--kv-window", "16");
        Assert.That(r.Code, Is.EqualTo(0), r.Error);
        Assert.That(r.Error, Does.Contain($"kv cache {format}"));
    }
}
