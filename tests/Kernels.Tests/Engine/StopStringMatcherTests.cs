// Stop strings split across streamed pieces are found, and nothing after them leaks out.
using Kernels.Runtime.Engine;

namespace Kernels.Tests.Engine;

public class StopStringMatcherTests
{
    [Test]
    public void HoldsBackAPossibleStartThenStops()
    {
        var m = new StopStringMatcher(["\nUser:"]);
        Assert.That(m.Push("Hello"), Is.EqualTo(("Hello", false)));
        Assert.That(m.Push(" there\nUs"), Is.EqualTo((" there", false)));
        Assert.That(m.Push("er: more"), Is.EqualTo(("", true)));
    }

    [Test]
    public void ReleasesHeldTextWhenItTurnsOutNotToBeAStop()
    {
        var m = new StopStringMatcher(["END"]);
        Assert.That(m.Push("the EN"), Is.EqualTo(("the ", false)));
        Assert.That(m.Push("D"), Is.EqualTo(("", true)));
        var n = new StopStringMatcher(["END"]);
        n.Push("an EN");
        Assert.That(n.Push("TRY"), Is.EqualTo(("ENTRY", false)));
        n.Push(" E");
        Assert.That(n.Flush(), Is.EqualTo("E"));
    }

    [Test]
    public void EarliestOfSeveralStopsWins()
    {
        var m = new StopStringMatcher(["b", "abc"]);
        Assert.That(m.Push("xxabcd"), Is.EqualTo(("xx", true))); // "abc" starts before "b"
    }

    [Test]
    public void GeneratorEndsAtAStopStringWithoutIncludingIt()
    {
        using var model = Kernels.Runtime.Models.ModelLoader.Load(SharedData.Require("models/stories260K/stories260K.bin"));
        using var backend = new Kernels.Runtime.Backends.Cpu.CpuBackend(model);
        var generator = new Generator(backend, model.Tokenizer);
        var full = generator.Generate([new GenerationRequest { PromptIds = [1], MaxNewTokens = 40 }])[0];
        Assert.That(full.Text, Does.Contain("Lily."));
        var stopped = generator.Generate([new GenerationRequest { PromptIds = [1], MaxNewTokens = 40, Stop = ["Lily."] }])[0];
        Assert.That(stopped.Finish, Is.EqualTo(FinishReason.Stop));
        Assert.That(stopped.Text, Is.EqualTo(full.Text[..full.Text.IndexOf("Lily.", StringComparison.Ordinal)]));
    }
}
