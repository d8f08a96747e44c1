// Which steps the CUDA backend samples on the device (only token ids come back) and which go to the host chooser:
// decided without a GPU from the step's draws.
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.KvCache;

namespace Kernels.Tests.Backends.Cuda;

public class DeviceDrawsTests
{
    private const int Vocab = 1000;

    private static SequenceStep Step(params TokenChoice[] choices) => new(null!, new[] { 1 }) { Choose = choices.Length > 0 ? choices : null };

    [Test]
    public void PlainDrawsGoToTheDeviceWithTheirOptionsAndCoins()
    {
        var greedy = TokenChoice.Greedy with { Coin = 0.25, Vocab = 900 };
        var sampled = new TokenChoice { Temperature = 0.7f, TopK = 40, TopP = 0.9f, MinP = 0.05f, Coin = 0.5, Vocab = 900 };
        var emptyPenalty = sampled with { RepetitionPenalty = 1.2f, Seen = new HashSet<int>() }; // nothing to penalize yet
        var plan = DeviceDraws.Plan([Step(greedy), Step(sampled), Step(), Step(emptyPenalty)], Vocab);
        Assert.That(plan, Is.Not.Null);
        var (draws, vocab) = plan!.Value;
        Assert.That(vocab, Is.EqualTo(900), "the usable vocabulary, not the LM head's");
        Assert.That(draws[0], Is.EqualTo(new DeviceDraw(0f, 0, 1f, 0f, 0.25)));
        Assert.That(draws[1], Is.EqualTo(new DeviceDraw(0.7f, 40, 0.9f, 0.05f, 0.5)));
        Assert.That(draws[2], Is.EqualTo(DeviceDraw.Unused), "a row nobody draws from");
        Assert.That(draws[3].Temperature, Is.EqualTo(0.7f));
        Assert.That(DeviceDraws.Plan([Step(TokenChoice.Greedy)], Vocab)!.Value.Vocab, Is.EqualTo(Vocab), "Vocab 0: the whole row");

        var outputs = DeviceDraws.Outputs([Step(greedy), Step(), Step(sampled)], [7, 8, 9]);
        Assert.That(outputs[0].Tokens, Is.EqualTo(new[] { 7 }));
        Assert.That(outputs[1].Tokens, Is.Empty, "no draw, no token");
        Assert.That(outputs[2].Tokens, Is.EqualTo(new[] { 9 }));
        Assert.That(outputs[2].Chosen, Is.EqualTo(new ScoredToken?[] { null }));
    }

    [Test]
    public void AnyDrawTheKernelCannotMakeSendsTheStepToTheHost()
    {
        var plain = TokenChoice.Greedy;
        var cases = new (string Why, SequenceStep Step)[]
        {
            ("log-probabilities", Step(plain with { Logprobs = 0 })),
            ("a penalty with tokens to penalize", Step(new TokenChoice { Temperature = 1f, RepetitionPenalty = 1.3f, Seen = new HashSet<int> { 3 } })),
            ("several draws from one row", Step(plain, plain with { Coin = 0.5 })),
            ("all logits", new SequenceStep(null!, new[] { 1, 2 }, AllLogits: true) { Choose = [plain] }),
            ("scored rows", new SequenceStep(null!, new[] { 1, 2 }, AllLogits: true) { Score = new TargetScoring(new[] { 2 }, 0, 0) }),
            ("another usable vocabulary", Step(plain with { Vocab = 500 })),
        };
        foreach (var (why, step) in cases)
            Assert.That(DeviceDraws.Plan([Step(plain), step], Vocab), Is.Null, why);
    }
}
