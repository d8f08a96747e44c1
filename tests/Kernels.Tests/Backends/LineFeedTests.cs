// The batched kernels' prefetch schedule: how many lines each step of a loop fetches.
using Kernels.Runtime.Backends.Cpu;

namespace Kernels.Tests.Backends;

public unsafe class LineFeedTests
{
    /// <summary>Lines still pending after each of <paramref name="steps"/> calls of Step, then after Rest.</summary>
    private static (long[] After, long AfterRest) Run(LineFeed feed, int steps)
    {
        var after = new long[steps];
        for (int i = 0; i < steps; i++)
        {
            feed.Step();
            after[i] = (feed.Pending + 63) / 64;
        }
        feed.Rest();
        return (after, feed.Pending);
    }

    private static readonly byte[] Memory = new byte[64 * 256];

    [TestCase(96, 192, 2, 1)]   // F16 at 16 rows (AVX-512): a line every other step
    [TestCase(144, 768, 5, 1)]  // six F16 rows, eight tiles of two passes (AVX2): a line every fifth step
    [TestCase(96, 96, 1, 1)]    // as many lines as steps
    [TestCase(96, 48, 1, 2)]    // F16 at 4 rows: two lines a step
    public void SpreadsTheLinesEvenlyOverTheSteps(int lines, int steps, int every, int perStep)
    {
        fixed (byte* p = Memory)
        {
            var (after, afterRest) = Run(new LineFeed(p, 64L * lines, steps), steps);
            for (int i = 0; i < steps; i++)
            {
                long fetched = Math.Min(lines, (long)(i + 1) / every * perStep);
                Assert.That(lines - after[i], Is.EqualTo(fetched), $"lines fetched after step {i + 1}");
            }
            Assert.That(after[^1], Is.EqualTo(lines - Math.Min(lines, (long)steps / every * perStep)));
            Assert.That(afterRest, Is.Zero, "Rest fetches what the steps left");
        }
    }

    [Test]
    public void LeavesARemainderToRestWhenTheStepsRunOut()
    {
        fixed (byte* p = Memory)
        {
            // 102 lines over 96 steps (eight Q8_0 rows at 16 activation rows): a line a step, six left for Rest.
            var (after, afterRest) = Run(new LineFeed(p, 64L * 102, 96), 96);
            Assert.That(after[^1], Is.EqualTo(6));
            Assert.That(afterRest, Is.Zero);
        }
    }

    [Test]
    public void PerStepFetchesALineEveryStepFromTheFirst()
    {
        fixed (byte* p = Memory)
        {
            var (after, _) = Run(LineFeed.PerStep(p, 64L * 14), 96);
            for (int i = 0; i < 96; i++) Assert.That(after[i], Is.EqualTo(Math.Max(0, 14 - (i + 1))), $"after step {i + 1}");
        }
    }

    [Test]
    public void NoneFetchesNothing()
    {
        var (after, afterRest) = Run(LineFeed.None, 4);
        Assert.That(after, Is.All.Zero);
        Assert.That(afterRest, Is.Zero);
    }
}
