// Software prefetch spread over a kernel's loop: the bytes the next rows will need, one 64-byte line per step.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics.X86;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>
/// The bytes a batched kernel reads next (its next weight rows), fetched one 64-byte line per <see cref="Step"/> of the
/// loop that works on the rows fetched before: the lines arrive while the current rows are multiplied, and no more
/// than a line or two are in flight per step. Issued in one burst per row group instead, the prefetches queue on the
/// core's outstanding-miss slots and the kernel waits on memory at each group (measured on the 2-core AMD EPYC Zen 5,
/// docs/gguf.md).
/// </summary>
internal unsafe struct LineFeed(byte* start, long bytes)
{
    private byte* _next = start;
    private readonly byte* _end = start + bytes;

    /// <summary>Nothing to fetch.</summary>
    public static LineFeed None => new(null, 0);

    /// <summary>Fetches the next line, if any is left.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Step()
    {
        if (_next < _end)
        {
            Sse.Prefetch0(_next);
            _next += 64;
        }
    }

    /// <summary>Fetches every line left (the loop ran out of steps before the range did).</summary>
    public void Rest()
    {
        for (; _next < _end; _next += 64) Sse.Prefetch0(_next);
    }
}
