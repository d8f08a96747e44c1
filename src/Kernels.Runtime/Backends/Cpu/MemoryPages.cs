// Fresh memory's pages, mapped in one call instead of one page fault each.
using System.Runtime.InteropServices;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>
/// Pre-faults freshly allocated memory that is about to be written (KV chunks): on Linux 5.14+ one
/// madvise(MADV_POPULATE_WRITE) maps every page of a range, where first writes would take a page fault per 4 KiB page. On
/// the 2-core Zen 5 VM of docs/gguf.md a fault costs ~10.7 us and the call ~0.7 us a page (a C probe, 256 MiB), so a
/// 16-sequence decode's fresh KV blocks cost ~66 ms a 1024-token run instead of ~5 ms; on bare metal both are small.
/// Elsewhere, or where the kernel refuses, nothing happens and the pages fault in as before: correctness never depends on it.
/// </summary>
internal static unsafe partial class MemoryPages
{
    private const int MadvPopulateWrite = 23;
    private static bool _unsupported = !OperatingSystem.IsLinux();

    /// <summary>Whether <see cref="Populate"/> still asks the OS (false off Linux, or once the kernel refused).</summary>
    public static bool Active => !_unsupported;

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int Madvise(nint address, nuint length, int advice);

    /// <summary>Maps the whole pages inside [<paramref name="start"/>, <paramref name="start"/> + <paramref name="bytes"/>) for writing, if the OS can.</summary>
    public static void Populate(void* start, long bytes)
    {
        if (_unsupported || bytes <= 0) return;
        long page = Environment.SystemPageSize;
        long from = ((long)start + page - 1) & ~(page - 1), to = ((long)start + bytes) & ~(page - 1);
        if (to <= from) return;
        try
        {
            if (Madvise((nint)from, (nuint)(to - from), MadvPopulateWrite) != 0) _unsupported = true; // EINVAL before Linux 5.14: stop asking
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            _unsupported = true;
        }
    }
}
