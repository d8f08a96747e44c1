// The CPU backend's fork-join: every index runs once, errors come back to the caller, nested and concurrent calls work.
using Kernels.Runtime.Backends.Cpu;

namespace Kernels.Tests.Backends;

public class WorkerTeamTests
{
    [Test]
    public void EveryIndexRunsExactlyOnceAcrossManyCalls()
    {
        for (int call = 0; call < 200; call++)
        {
            int count = 1 + call % 37;
            var hits = new int[count];
            WorkerTeam.For(count, i => Interlocked.Increment(ref hits[i]));
            Assert.That(hits, Is.All.EqualTo(1), $"call {call}");
        }
    }

    [Test]
    public void AnExceptionInABodyReachesTheCallerAndTheTeamStaysUsable()
    {
        var e = Assert.Throws<InvalidOperationException>(() => WorkerTeam.For(16, i => { if (i == 11) throw new InvalidOperationException("task 11"); }));
        Assert.That(e!.Message, Is.EqualTo("task 11"));
        int sum = 0;
        WorkerTeam.For(10, i => Interlocked.Add(ref sum, i));
        Assert.That(sum, Is.EqualTo(45));
    }

    [Test]
    public void NestedAndConcurrentCallsComplete()
    {
        long total = 0;
        var threads = Enumerable.Range(0, 3).Select(_ => new Thread(() =>
        {
            for (int r = 0; r < 50; r++)
                WorkerTeam.For(4, i => WorkerTeam.For(5, j => Interlocked.Add(ref total, i * 5 + j)));
        })).ToArray();
        foreach (var t in threads) t.Start();
        Assert.That(threads.All(t => t.Join(TimeSpan.FromSeconds(60))), "every caller finished");
        Assert.That(total, Is.EqualTo(3L * 50 * Enumerable.Range(0, 20).Sum()));
    }

    [Test]
    public void ASleepingWorkerIsWokenForTheNextLoop()
    {
        if (Environment.ProcessorCount < 2) Assert.Ignore("one core: the team has no worker");
        // Idle past the worker's spin (0.5 ms) so it sleeps, then a loop of tasks long enough that a woken worker takes
        // some: a lost wake-up would leave every task to the calling thread.
        for (int round = 0; round < 5; round++)
        {
            Thread.Sleep(20);
            int caller = Environment.CurrentManagedThreadId, elsewhere = 0;
            WorkerTeam.For(128, i =>
            {
                var clock = System.Diagnostics.Stopwatch.StartNew();
                while (clock.Elapsed.TotalMilliseconds < 0.2) Thread.SpinWait(10);
                if (Environment.CurrentManagedThreadId != caller) Interlocked.Increment(ref elsewhere);
            });
            Assert.That(elsewhere, Is.GreaterThan(0), $"round {round}: no task ran on the team's worker after it slept");
        }
    }
}
