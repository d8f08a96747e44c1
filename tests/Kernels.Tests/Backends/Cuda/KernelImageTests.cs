// The fatbin shipped in Kernels.Runtime against kernels/: ABI version, fatbin magic, every exported name present.
using System.Text;
using System.Text.RegularExpressions;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cuda;

namespace Kernels.Tests.Backends.Cuda;

public class KernelImageTests
{
    private static string[] Exports() => File.ReadAllLines(KernelAbiTests.RepoFile("kernels/exports.txt"))
        .Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToArray();

    private static byte[] EmbeddedImage() =>
        KernelImage.Load() ?? throw new IgnoreException("this build has no fatbin (nvcc was not present); CI builds one");

    [Test]
    public void KernelAbiVersionEqualsAbiHeader()
    {
        string header = File.ReadAllText(KernelAbiTests.RepoFile("kernels/include/abi.h"));
        var m = Regex.Match(header, @"^#define\s+KERNELS_ABI_VERSION\s+(\d+)\s*$", RegexOptions.Multiline);
        Assert.That(m.Success, "KERNELS_ABI_VERSION not found in abi.h");
        Assert.That(KernelAbi.Version, Is.EqualTo(int.Parse(m.Groups[1].Value)));
        Assert.That(header, Does.Contain($"__constant__ int {KernelAbi.VersionSymbol}"));
    }

    [Test]
    public void EmbeddedFatbinHasTheMagicAndEveryExportedName()
    {
        var image = EmbeddedImage();
        Assert.That(BitConverter.ToUInt32(image, 0), Is.EqualTo(KernelImage.FatbinMagic));
        // Each SASS ELF in the fatbin names its entries in a NUL-terminated string table (".text.<name>" and the
        // symbol itself), so an exact name is a NUL-terminated run preceded by NUL or '.': "swiglu_f32" cannot match
        // inside "swiglu_fused_f32".
        foreach (var name in Exports().Append(KernelAbi.VersionSymbol))
            Assert.That(ContainsSymbol(image, name), $"the embedded fatbin does not contain '{name}'");
    }

    [Test]
    public void SymbolSearchDoesNotMatchInsideLongerNames()
    {
        var bytes = Encoding.ASCII.GetBytes("\0.text.swiglu_fused_f32\0rope_f32x\0");
        Assert.That(ContainsSymbol(bytes, "swiglu_fused_f32"), Is.True);
        Assert.That(ContainsSymbol(bytes, "swiglu_f32"), Is.False);
        Assert.That(ContainsSymbol(bytes, "fused_f32"), Is.False);
        Assert.That(ContainsSymbol(bytes, "rope_f32"), Is.False);
    }

    private static bool ContainsSymbol(ReadOnlySpan<byte> image, string name)
    {
        var needle = Encoding.ASCII.GetBytes(name + "\0");
        for (int from = 0; ;)
        {
            int i = image[from..].IndexOf(needle);
            if (i < 0) return false;
            int at = from + i;
            if (at > 0 && (image[at - 1] == 0 || image[at - 1] == (byte)'.')) return true;
            from = at + 1;
        }
    }
}
