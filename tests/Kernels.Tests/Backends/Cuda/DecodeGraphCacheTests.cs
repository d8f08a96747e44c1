// DecodeGraphCache without a GPU: block-table bucketing, the disabled state and its description.
using Kernels.Runtime.Backends.Cuda;

namespace Kernels.Tests.Backends.Cuda;

public class DecodeGraphCacheTests
{
    [TestCase(1, 512, 1)]
    [TestCase(2, 512, 2)]
    [TestCase(3, 512, 4)]
    [TestCase(64, 512, 64)]
    [TestCase(65, 512, 128)]
    [TestCase(300, 300, 300)]
    [TestCase(257, 300, 300)]
    public void BucketsRoundUpToPowersOfTwoWithinTheTable(int width, int max, int bucket)
    {
        Assert.That(DecodeGraphCache.BucketBlocks(width, max), Is.EqualTo(bucket));
    }

    [Test]
    public void BucketRejectsEmptyAndOversizedWidths()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => DecodeGraphCache.BucketBlocks(0, 8))!;
        Assert.That(e.ParamName, Is.EqualTo("blocksPerSeq"));
        e = Assert.Throws<ArgumentOutOfRangeException>(() => DecodeGraphCache.BucketBlocks(9, 8))!;
        Assert.That(e.ParamName, Is.EqualTo("maxBlocksPerSeq"));
    }

    [Test]
    public void DisabledCacheSaysWhyAndEnabledCacheCounts()
    {
        using var off = new DecodeGraphCache(enabled: false);
        Assert.That(off.Enabled, Is.False);
        Assert.That(off.Describe(), Is.EqualTo("CUDA graphs for decode: off (disabled by CudaBackendOptions.UseCudaGraphs)"));
        using var on = new DecodeGraphCache(enabled: true, capacity: 4);
        Assert.That(on.Enabled, Is.True);
        Assert.That(on.Describe(), Is.EqualTo("CUDA graphs for decode: on (0 cached, 0 captured, 0 replays)"));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DecodeGraphCache(true, capacity: 0));
    }
}
