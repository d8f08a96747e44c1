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
    public void InfoPrintsTheConfiguration()
    {
        var r = Kernels("info", "--model", TestPaths.Golden("tiny-qwen2-f16"));
        Assert.That(r.Code, Is.EqualTo(0), r.Error);
        Assert.That(r.Out, Does.Contain("Qwen2").And.Contain("theta 1000000").And.Contain("qkv bias:           True").And.Contain("F16"));
    }

    [Test]
    public void PerplexityOfTheStoryIsLowForTheTrainedModel()
    {
        string model = SharedData.Require("models/stories260K/stories260K.bin");
        string text = SharedData.Require("data/story.txt");
        var r = Kernels("perplexity", "--model", model, "--text", text);
        Assert.That(r.Code, Is.EqualTo(0), r.Error);
        double ppl = double.Parse(r.Out.Trim().Split(' ')[^1], System.Globalization.CultureInfo.InvariantCulture);
        // A trained 260K-parameter TinyStories model on a TinyStories-like text: far below the vocabulary size (512).
        Assert.That(ppl, Is.GreaterThan(1.0).And.LessThan(20.0));
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
