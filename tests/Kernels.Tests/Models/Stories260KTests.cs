// stories260K (a really trained llama2.c model) in its .bin and .gguf forms against its reference outputs.
using System.Text.Json;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Models;

namespace Kernels.Tests.Models;

public class Stories260KTests
{
    public static readonly string[] Forms = ["stories260K.bin", "stories260K.gguf"];

    private static JsonElement Reference()
    {
        string path = SharedData.Require("models/stories260K/reference_vectors.json");
        return JsonDocument.Parse(File.ReadAllText(path)).RootElement;
    }

    private static LoadedModel Load(string form) => ModelLoader.Load(SharedData.Require($"models/stories260K/{form}"));

    [TestCaseSource(nameof(Forms))]
    public void GreedyFromBosMatchesReferenceFor256Steps(string form)
    {
        var reference = Reference().GetProperty("greedy_256");
        var expectedIds = reference.GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        using var model = Load(form);
        using var backend = new CpuBackend(model);
        var result = new Generator(backend, model.Tokenizer).Generate([new GenerationRequest { PromptIds = [1], MaxNewTokens = 256 }])[0];
        Assert.That(result.Tokens, Is.EqualTo(expectedIds));
        Assert.That(result.Text, Is.EqualTo(reference.GetProperty("text").GetString()));
    }

    [TestCaseSource(nameof(Forms))]
    public void PromptedGreedyMatchesReference(string form)
    {
        var reference = Reference().GetProperty("prompted_greedy_40");
        using var model = Load(form);
        using var backend = new CpuBackend(model);
        var generator = new Generator(backend, model.Tokenizer);
        var request = new GenerationRequest { Prompt = reference.GetProperty("prompt").GetString(), MaxNewTokens = 40 };
        Assert.That(generator.PromptIds(request), Is.EqualTo(reference.GetProperty("prompt_ids").EnumerateArray().Select(x => x.GetInt32())));
        var result = generator.Generate([request])[0];
        // run.c counts steps over every position: the reference ids are the prompt (after BOS) and its continuation,
        // 40 in all.
        var expected = reference.GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        var ours = result.PromptIds.Skip(1).Concat(result.Tokens).Take(expected.Length);
        Assert.That(ours, Is.EqualTo(expected));
        Assert.That((request.Prompt + result.Text)[..reference.GetProperty("text").GetString()!.Length], Is.EqualTo(reference.GetProperty("text").GetString()));
    }

    [TestCaseSource(nameof(Forms))]
    public void LogitsOfFirstPositionsMatchReference(string form)
    {
        using var model = Load(form);
        using var backend = new CpuBackend(model);
        var positions = Reference().GetProperty("logits_first_3_positions").EnumerateArray().ToArray();
        var ids = positions.Select(p => p.GetProperty("input_token").GetInt32()).ToArray();
        using var cache = backend.CreateCache();
        var logits = backend.Forward([new SequenceStep(cache, ids, AllLogits: true)])[0];
        for (int p = 0; p < positions.Length; p++)
        {
            var expected = positions[p].GetProperty("logits").EnumerateArray().Select(x => x.GetSingle()).ToArray();
            var row = logits.AsSpan(p * expected.Length, expected.Length).ToArray();
            float maxDiff = expected.Select((e, i) => Math.Abs(e - row[i])).Max();
            // Independent fp32 implementation; logits are ~17 in magnitude, so 1e-4 is a few ulps of accumulated rounding.
            Assert.That(maxDiff, Is.LessThan(1e-4f), $"position {p}");
            Assert.That(Sampler.ArgMax(row), Is.EqualTo(positions[p].GetProperty("argmax").GetInt32()));
        }
    }

    [Test]
    public void BinAndGgufFormsGiveTheSameLogits()
    {
        // The two files store RoPE weights in different orders (llama2.c and GGML adjacent pairs); both are turned
        // into rotate-half order at load, so the logits must agree to rounding.
        using var bin = Load("stories260K.bin");
        using var gguf = Load("stories260K.gguf");
        int[] ids = [1, 403, 407, 261, 378, 432, 383, 286];
        float[] Run(LoadedModel m)
        {
            using var backend = new CpuBackend(m);
            using var cache = backend.CreateCache();
            return backend.Forward([new SequenceStep(cache, ids, AllLogits: true)])[0];
        }
        var a = Run(bin);
        var b = Run(gguf);
        Assert.That(a.Select((x, i) => Math.Abs(x - b[i])).Max(), Is.LessThan(1e-5f));
    }

    [Test]
    public void HfDirectoryFromGoldenModelPlusTokenizerModelLoadsAndRuns()
    {
        string tokenizer = SharedData.Require("models/stories260K/tokenizer.model");
        string dir = Path.Combine(Path.GetTempPath(), "kernels-hfdir-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            foreach (var f in Directory.GetFiles(TestPaths.Golden("tiny-llama-f32")))
                if (!f.EndsWith("golden.safetensors")) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            File.Copy(tokenizer, Path.Combine(dir, "tokenizer.model"));
            using var model = ModelLoader.Load(dir);
            using var backend = new CpuBackend(model);
            var result = new Generator(backend, model.Tokenizer).Generate([new GenerationRequest { Prompt = "Once upon a time", MaxNewTokens = 8 }])[0];
            Assert.That(result.PromptIds, Is.EqualTo(new[] { 1, 403, 407, 261, 378 }));
            // Random weights: nothing to compare the text with, but 8 tokens (or an earlier EOS) must come out and decode.
            Assert.That(result.Finish == FinishReason.EndOfSequence ? result.Tokens.Count <= 8 : result.Tokens.Count == 8);
            Assert.That(result.Tokens, Has.All.InRange(0, model.Config.VocabSize - 1));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
