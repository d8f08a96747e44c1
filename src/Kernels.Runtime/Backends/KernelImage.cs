// The CUDA fatbin built from kernels/ and embedded in this assembly (absent when nvcc was not present at build time).
namespace Kernels.Runtime.Backends;

internal static class KernelImage
{
    private const string ResourceName = "Kernels.fatbin";
    /// <summary>The fatbin container header magic (fatbinary.h: FATBIN_MAGIC).</summary>
    public const uint FatbinMagic = 0xBA55ED50;

    /// <summary>The embedded fatbin, or null when the runtime was built without nvcc.</summary>
    public static byte[]? Load()
    {
        using var stream = typeof(KernelImage).Assembly.GetManifestResourceStream(ResourceName);
        if (stream == null) return null;
        var bytes = new byte[stream.Length];
        stream.ReadExactly(bytes);
        return bytes;
    }

    public static string Describe() => Load() is { } b
        ? $"embedded ({b.Length:N0} bytes)"
        : "not built (nvcc was not present when this runtime was built)";
}
