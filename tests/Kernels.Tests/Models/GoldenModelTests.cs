// Logits and greedy continuations against what Hugging Face transformers computed for the golden tiny models.
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Models;

namespace Kernels.Tests.Models;

public class GoldenModelTests
{
    // transformers ran eager attention in fp32 on the stored weights; our fp32 math differs only in summation order.
    private const float LogitTolerance = 1e-4f;

    [TestCaseSource(typeof(TestPaths), nameof(TestPaths.GoldenModels))]
    public void LogitsMatchTransformersAtEveryPosition(string name)
    {
        using var model = ModelLoader.Load(TestPaths.Golden(name));
        using var golden = SafetensorsFile.Open(Path.Combine(TestPaths.Golden(name), "golden.safetensors"));
        using var backend = new CpuBackend(model);
        for (int i = 0; i < 3; i++)
        {
            var ids = golden.ReadInt64($"input_ids.{i}").Select(x => (int)x).ToArray();
            var expected = golden.ReadSingle($"logits.{i}");
            using var cache = backend.CreateCache();
            var logits = backend.Forward([new SequenceStep(cache, ids, AllLogits: true)])[0];
            Assert.That(logits, Has.Length.EqualTo(expected.Length));
            float maxDiff = 0;
            for (int j = 0; j < logits.Length; j++)
            {
                Assert.That(float.IsFinite(logits[j]), $"logit {j} of sequence {i} is {logits[j]}");
                maxDiff = Math.Max(maxDiff, Math.Abs(logits[j] - expected[j]));
            }
            float maxAbs = expected.Max(Math.Abs);
            TestContext.Out.WriteLine($"{name} sequence {i}: max |logit diff| {maxDiff}, max |logit| {maxAbs}");
            Assert.That(maxDiff, Is.LessThan(LogitTolerance), $"{name} sequence {i}: max |logit diff| {maxDiff}");
        }
    }

    [TestCaseSource(typeof(TestPaths), nameof(TestPaths.GoldenModels))]
    public void GreedyContinuationMatchesTransformers(string name)
    {
        using var model = ModelLoader.Load(TestPaths.Golden(name));
        using var golden = SafetensorsFile.Open(Path.Combine(TestPaths.Golden(name), "golden.safetensors"));
        using var backend = new CpuBackend(model);
        for (int i = 0; i < 3; i++)
        {
            var ids = golden.ReadInt64($"input_ids.{i}").Select(x => (int)x).ToArray();
            var expected = golden.ReadInt64($"greedy.{i}").Select(x => (int)x).ToArray();
            using var cache = backend.CreateCache();
            var generated = new List<int>();
            var logits = backend.Forward([new SequenceStep(cache, ids)])[0];
            while (generated.Count < expected.Length)
            {
                int next = ArgMax(logits);
                generated.Add(next);
                logits = backend.Forward([new SequenceStep(cache, new[] { next })])[0];
            }
            Assert.That(generated, Is.EqualTo(expected), $"{name} sequence {i}");
        }
    }

    private static int ArgMax(float[] v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }
}
