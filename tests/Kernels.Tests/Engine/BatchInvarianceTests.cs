// Batched generation gives exactly what one-at-a-time generation gives: greedy and seeded sampling, any batch.
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Models;

namespace Kernels.Tests.Engine;

public class BatchInvarianceTests
{
    private static readonly string[] Prompts =
    [
        "Once upon a time",
        "The cat sat on the mat!",
        "Lily and Tom went to the park.",
        "Hello world",
        "A",
        "She was very happy because the sun was shining and the birds were singing",
        "café 123",
        "Tim had a red ball. He",
    ];

    private static IReadOnlyList<GenerationResult> Alone(Generator g, GenerationRequest[] requests) =>
        requests.Select(r => g.Generate([r])[0]).ToArray();

    [TestCase("synthetic:tiny")]
    [TestCase("stories260K")]
    public void GreedyOutputsOfEightPromptsTogetherEqualOneAtATime(string name)
    {
        using var model = name == "stories260K" ? ModelLoader.Load(SharedData.Require("models/stories260K/stories260K.bin")) : ModelLoader.Load(name);
        using var backend = new CpuBackend(model);
        var generator = new Generator(backend, model.Tokenizer, new GeneratorOptions { PrefillTokenBudget = 24 });
        var requests = Prompts.Select(p => new GenerationRequest { Prompt = p, MaxNewTokens = 32 }).ToArray();
        var together = generator.Generate(requests);
        var alone = Alone(generator, requests);
        Assert.That(together, Has.Count.EqualTo(8));
        for (int i = 0; i < requests.Length; i++)
        {
            Assert.That(together[i].Tokens, Is.EqualTo(alone[i].Tokens), $"prompt {i}");
            Assert.That(together[i].Text, Is.EqualTo(alone[i].Text), $"prompt {i}");
        }
    }

    [Test]
    public void SeededSamplesAreTheSameWhateverTheBatch()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        using var backend = new CpuBackend(model);
        var generator = new Generator(backend, model.Tokenizer);
        var sampling = new SamplingOptions { Temperature = 1.0f, TopP = 0.9f, TopK = 50, Seed = 42 };
        var requests = Prompts.Take(4).Select(p => new GenerationRequest { Prompt = p, N = 3, MaxNewTokens = 16, Sampling = sampling, IgnoreEos = true }).ToArray();
        var together = generator.Generate(requests);
        var alone = Alone(generator, requests.Select(r => r with { N = 1 }).ToArray());
        // Sample 0 of each request run alone equals sample 0 of the batched run; samples of one request differ.
        for (int r = 0; r < requests.Length; r++)
        {
            Assert.That(together[r * 3].Tokens, Is.EqualTo(alone[r].Tokens), $"request {r}");
            Assert.That(together[r * 3 + 1].Tokens, Is.Not.EqualTo(together[r * 3].Tokens), $"request {r}: samples 0 and 1 should differ");
        }
        var again = generator.Generate(requests);
        Assert.That(again.Select(x => x.Tokens), Is.EqualTo(together.Select(x => x.Tokens)));
    }

    [Test]
    public void MatMulRowsAreBitIdenticalAloneAndInGroups()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        var w = ((DenseLinear)model.Weights.Layers[0].Gate).Weight; // bf16 [176, 64]
        var rng = new Random(3);
        int rows = 7;
        var x = Enumerable.Range(0, rows * w.Columns).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var batched = new float[rows * w.Rows];
        MatMul.Multiply(x, rows, w, batched);
        for (int t = 0; t < rows; t++)
        {
            var single = new float[w.Rows];
            MatMul.Multiply(x.AsSpan(t * w.Columns, w.Columns), 1, w, single);
            Assert.That(single, Is.EqualTo(batched.AsSpan(t * w.Rows, w.Rows).ToArray()), $"row {t}");
        }
    }
}
