// The CPU backend's fork-join: one worker thread per extra core, spinning between the many short parallel loops of a
// forward pass (a decode step of a 12-layer model runs ~100 of them, each tens of microseconds long) instead of being
// woken through the thread pool each time. What llama.cpp's thread pool does; measured below Parallel.For's cost.
using System.Diagnostics;
using System.Runtime.ExceptionServices;

namespace Kernels.Runtime.Backends.Cpu;

internal static class WorkerTeam
{
    /// <summary>How long an idle worker keeps spinning for the next loop before it sleeps (the gap between two loops of one step is microseconds).</summary>
    private static readonly long SpinTicks = Stopwatch.Frequency / 2000; // 0.5 ms

    private static readonly object DispatchGate = new(), SleepGate = new();
    private static Job? _current;
    private static int _started;
    /// <summary>Workers asleep on SleepGate (or about to be): a dispatch pulses the gate only when there are some.</summary>
    private static int _sleepers;

    [ThreadStatic] private static bool _isWorker;

    /// <summary>
    /// Runs body(i) for every i in [0, count) on the calling thread and the team, and returns when all are done; the
    /// first exception a body throws is rethrown here. Nested calls (from inside a body), and calls while another
    /// thread holds the team, fall back to running inline or on Parallel.For, so any caller is safe.
    /// </summary>
    public static void For(int count, Action<int> body)
    {
        if (count <= 0) return;
        if (count == 1 || _isWorker || Environment.ProcessorCount == 1)
        {
            for (int i = 0; i < count; i++) body(i);
            return;
        }
        if (!Monitor.TryEnter(DispatchGate))
        {
            Parallel.For(0, count, body);
            return;
        }
        try
        {
            EnsureStarted();
            var job = new Job(body, count);
            // Published with a full fence before _sleepers is read, as a worker counts itself before it reads _current
            // (under the gate): either this call sees the sleeper and pulses, or the worker sees the job and stays up.
            // Spinning workers take the job without the lock and the pulse (~2 % of the calling thread in a decode).
            Interlocked.Exchange(ref _current, job);
            if (Volatile.Read(ref _sleepers) > 0)
                lock (SleepGate) Monitor.PulseAll(SleepGate);
            job.Work();
            var spin = new SpinWait();
            while (Volatile.Read(ref job.Remaining) > 0) spin.SpinOnce(sleep1Threshold: -1);
            Volatile.Write(ref _current, null);
            job.Error?.Throw();
        }
        finally
        {
            Monitor.Exit(DispatchGate);
        }
    }

    private static void EnsureStarted()
    {
        if (Interlocked.Exchange(ref _started, 1) != 0) return;
        for (int w = 1; w < Environment.ProcessorCount; w++)
            new Thread(WorkerLoop) { IsBackground = true, Name = $"kernels-cpu-{w}" }.Start();
    }

    private static void WorkerLoop()
    {
        _isWorker = true;
        Job? done = null;
        while (true)
        {
            long idleSince = Stopwatch.GetTimestamp();
            Job? job;
            while ((job = Volatile.Read(ref _current)) == null || job == done)
            {
                if (Stopwatch.GetTimestamp() - idleSince < SpinTicks)
                {
                    Thread.SpinWait(16);
                    continue;
                }
                lock (SleepGate)
                {
                    Interlocked.Increment(ref _sleepers);
                    while ((job = Volatile.Read(ref _current)) == null || job == done) Monitor.Wait(SleepGate);
                    Interlocked.Decrement(ref _sleepers);
                }
                break;
            }
            job!.Work();
            done = job;
        }
    }

    /// <summary>One loop: its tasks are claimed one at a time by whoever is free; a late worker finds none left.</summary>
    private sealed class Job(Action<int> body, int count)
    {
        private readonly int _count = count;
        private int _next;
        public int Remaining = count;
        public ExceptionDispatchInfo? Error;

        public void Work()
        {
            int i;
            while ((i = Interlocked.Increment(ref _next) - 1) < _count)
            {
                try { body(i); }
                catch (Exception e) { Interlocked.CompareExchange(ref Error, ExceptionDispatchInfo.Capture(e), null); }
                Interlocked.Decrement(ref Remaining);
            }
        }
    }
}
