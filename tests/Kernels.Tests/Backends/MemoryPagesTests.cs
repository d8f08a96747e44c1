// Pre-faulting fresh memory (the KV chunks): pages become resident, their contents stay.
using System.Runtime.InteropServices;
using Kernels.Runtime.Backends.Cpu;

namespace Kernels.Tests.Backends;

public unsafe class MemoryPagesTests
{
    [DllImport("libc", EntryPoint = "mincore")]
    private static extern int Mincore(void* address, nuint length, byte* residency);

    [DllImport("libc", EntryPoint = "mmap")]
    private static extern void* Mmap(void* address, nuint length, int protection, int flags, int fd, nint offset);

    [DllImport("libc", EntryPoint = "munmap")]
    private static extern int Munmap(void* address, nuint length);

    private static int ResidentPages(byte* start, nuint bytes)
    {
        int pages = (int)(bytes / (nuint)Environment.SystemPageSize);
        var vec = new byte[pages];
        fixed (byte* v = vec)
            Assert.That(Mincore(start, bytes, v), Is.EqualTo(0), "mincore");
        return vec.Count(b => (b & 1) != 0);
    }

    [Test]
    public void PopulateMakesFreshPagesResidentAndKeepsWhatIsWritten()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("madvise(MADV_POPULATE_WRITE) is Linux's; elsewhere Populate does nothing");
        nuint bytes = 32u << 20, page = (nuint)Environment.SystemPageSize;
        // Fresh anonymous pages straight from the kernel (malloc may hand back memory an earlier test touched).
        byte* p = (byte*)Mmap(null, bytes, 3 /* PROT_READ | PROT_WRITE */, 0x22 /* MAP_PRIVATE | MAP_ANONYMOUS */, -1, 0);
        Assert.That((nint)p, Is.Not.EqualTo((nint)(-1)), "mmap");
        try
        {
            p[0] = 7;
            p[bytes / 2] = 8;
            p[bytes - 1] = 9;
            int before = ResidentPages(p, bytes);
            MemoryPages.Populate(p + 1, (long)bytes - 2); // not page-aligned: the whole pages inside are mapped
            if (!MemoryPages.Active) Assert.Ignore("this kernel refused MADV_POPULATE_WRITE (Linux < 5.14): the pages fault in as written");
            int after = ResidentPages(p, bytes);
            int pages = (int)(bytes / page);
            Assert.That(before, Is.LessThan(pages / 2), "the block was fresh");
            Assert.That(after, Is.EqualTo(pages), $"resident pages after Populate: {after} of {pages} (before: {before})");
            Assert.That((p[0], p[bytes / 2], p[bytes - 1], p[page + 5]), Is.EqualTo(((byte)7, (byte)8, (byte)9, (byte)0)), "contents");
        }
        finally
        {
            Munmap(p, bytes);
        }
    }
}
