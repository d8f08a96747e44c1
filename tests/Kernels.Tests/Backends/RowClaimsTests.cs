// How a matmul's weight rows are handed to the cores: every row once, long ranges first, shorter as a weight runs out.
using Kernels.Runtime.Backends.Cpu;

namespace Kernels.Tests.Backends;

public class RowClaimsTests
{
    private static List<(int Job, int Start, int End)> Drain(MatMul.RowClaims claims)
    {
        var all = new List<(int, int, int)>();
        while (claims.Next(out int job, out int start, out int end)) all.Add((job, start, end));
        return all;
    }

    [TestCase(new[] { 2048, 2048 }, 8, 2)]       // gate and up, 16 rows, two cores
    [TestCase(new[] { 768, 256, 256 }, 8, 2)]    // q, k, v
    [TestCase(new[] { 32000 }, 2, 2)]            // the LM head in decode
    [TestCase(new[] { 100, 1, 7, 0, 65 }, 8, 4)] // odd sizes, an empty weight, four cores
    public void HandsOutEveryRowOnceInOrder(int[] rows, int quantum, int cores)
    {
        var claims = Drain(new MatMul.RowClaims(rows, quantum, cores));
        int job = 0, next = 0;
        foreach (var (j, start, end) in claims)
        {
            while (job < rows.Length && next == rows[job]) { job++; next = 0; }
            Assert.That((j, start), Is.EqualTo((job, next)), "claims follow each other without gaps, weight by weight");
            Assert.That(end, Is.GreaterThan(start).And.LessThanOrEqualTo(rows[j]));
            next = end;
        }
        while (job < rows.Length && next == rows[job]) { job++; next = 0; }
        Assert.That(job, Is.EqualTo(rows.Length), "every row of every weight was handed out");
    }

    [Test]
    public void ClaimsShrinkFromAQuarterOfTheWeightOnTwoCores()
    {
        var sizes = Drain(new MatMul.RowClaims([2048], 8, 2)).Select(c => c.End - c.Start).ToArray();
        Assert.That(sizes[0], Is.EqualTo(512), "the first claim is the static split's task: 2048 / (2 tasks x 2 cores)");
        Assert.That(sizes[1], Is.EqualTo(384), "then a quarter of what is left");
        for (int i = 1; i < sizes.Length; i++) Assert.That(sizes[i], Is.LessThanOrEqualTo(sizes[i - 1]), $"claim {i} no longer than the one before");
        Assert.That(sizes.Take(sizes.Length - 1), Has.All.Matches<int>(s => s % 8 == 0 && s >= MatMul.RowsPerTask), "whole chunks of 8, at least RowsPerTask");
        Assert.That(sizes[^1], Is.GreaterThanOrEqualTo(MatMul.RowsPerTask / 2), "no sliver left for a claim of its own");
        Assert.That(sizes.Length, Is.InRange(8, 16), "a few long claims, not one per 64 rows");
    }

    [Test]
    public void ConcurrentClaimersCoverEveryRowExactlyOnce()
    {
        int[] rows = [32000, 768, 2048, 2048, 256];
        var claims = new MatMul.RowClaims(rows, 2, 4);
        var hits = rows.Select(n => new int[n]).ToArray();
        Parallel.For(0, 4, _ =>
        {
            while (claims.Next(out int job, out int start, out int end))
                for (int r = start; r < end; r++) Interlocked.Increment(ref hits[job][r]);
        });
        for (int j = 0; j < rows.Length; j++) Assert.That(hits[j], Has.All.EqualTo(1), $"weight {j}");
    }
}
