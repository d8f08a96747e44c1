// Software prefetch spread over a kernel's loop: the bytes the next rows will need, evenly over the loop's steps.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics.X86;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>
/// The bytes a batched kernel reads next (its next weight rows), fetched a 64-byte line at a time over the
/// <see cref="Step"/>s of the loop that works on the rows fetched before, so the lines arrive while the current rows are
/// multiplied. Issued in one burst per row group instead, the prefetches queue on the core's outstanding-miss slots and
/// the kernel waits on memory at each group. Spread evenly over the loop (<see cref="LineFeed(byte*, long, long)"/>) or a
/// line per step from the first (<see cref="PerStep"/>), whichever measured faster for the kernel (the 2-core AMD EPYC
/// Zen 5, docs/gguf.md). A kernel takes its feed by ref and copies it to a local for its loop, writing it back at the
/// end: stepped through the ref, the JIT loaded and stored the cursor and the countdown every step, a chain through
/// memory the loop waited on (AVX-512 F16 batch at 16 rows 12-18 % slower in cache, AVX2 Q8_0 8-13 % in a step).
/// </summary>
internal unsafe struct LineFeed
{
    private byte* _next;
    private readonly byte* _end;
    private readonly int _every, _perStep;
    private int _wait;

    /// <summary>
    /// The lines of [start, start + bytes) spread evenly over <paramref name="steps"/> calls of <see cref="Step"/>: a line
    /// every steps / lines calls, or lines / steps lines a call where there are more lines than steps (a remainder is left
    /// to <see cref="Rest"/>).
    /// </summary>
    public LineFeed(byte* start, long bytes, long steps)
    {
        _next = start;
        _end = start + Math.Max(0, bytes);
        long lines = (Math.Max(0, bytes) + 63) / 64;
        steps = Math.Max(1, steps);
        _every = lines == 0 || lines >= steps ? 1 : (int)(steps / lines);
        _perStep = lines <= steps ? 1 : (int)(lines / steps);
        _wait = _every;
    }

    /// <summary>The lines of [start, start + bytes), one per call of <see cref="Step"/> from the first.</summary>
    public static LineFeed PerStep(byte* start, long bytes) => new(start, bytes, (Math.Max(0, bytes) + 63) / 64);

    /// <summary>Bytes not fetched yet.</summary>
    internal long Pending => _end - _next;

    /// <summary>Nothing to fetch.</summary>
    public static LineFeed None => new(null, 0, 1);

    /// <summary>Fetches the next line (or lines), if any is left and this step is one that fetches.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Step()
    {
        if (--_wait > 0) return;
        _wait = _every;
        if (_next < _end)
        {
            Fetch(_next);
            _next += 64;
            if (_perStep > 1) More();
        }
    }

    /// <summary>The rest of a step's lines where the rows have more lines than the loop has steps.</summary>
    private void More()
    {
        for (int i = 1; i < _perStep && _next < _end; i++, _next += 64) Fetch(_next);
    }

    /// <summary>A prefetch where the instruction set is enabled (with hardware intrinsics off the cursor still moves, so the schedule is the same).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Fetch(byte* line)
    {
        if (Sse.IsSupported) Sse.Prefetch0(line);
    }

    /// <summary>Fetches every line left (the loop ran out of steps before the range did).</summary>
    public void Rest()
    {
        for (; _next < _end; _next += 64) Fetch(_next);
    }
}
