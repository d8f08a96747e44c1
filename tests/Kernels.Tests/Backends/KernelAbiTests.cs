// The boundary with kernels/: dtype codes on both sides, every exported kernel checked by a kernels-bench verify case
// against its CPU reference, and the embedded fatbin when one was built.
using System.Text.RegularExpressions;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Numerics;

namespace Kernels.Tests.Backends;

public class KernelAbiTests
{
    internal static string RepoFile(string relative)
    {
        for (var dir = new DirectoryInfo(TestContext.CurrentContext.TestDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Kernels.sln"))) return Path.Combine(dir.FullName, relative);
        Assert.Fail("repository root (Kernels.sln) not found above the test directory");
        return "";
    }

    [Test]
    public void DTypeCodesInAbiHeaderEqualTensorDType()
    {
        string header = File.ReadAllText(RepoFile("kernels/include/abi.h"));
        var body = Regex.Match(header, @"enum class DType : int\s*\{(?<body>[^}]*)\}").Groups["body"].Value;
        var codes = Regex.Matches(body, @"(\w+)\s*=\s*(\d+)").ToDictionary(m => m.Groups[1].Value, m => int.Parse(m.Groups[2].Value));
        Assert.That(codes, Is.Not.Empty);
        foreach (var (name, code) in codes)
            Assert.That((int)Enum.Parse<TensorDType>(name), Is.EqualTo(code), name);
    }

    /// <summary>
    /// The kernels `kernels-bench verify` compares with their CPU reference: the Kernel of every case of its harness
    /// (Cuda.VerifyHarness lists them without a device; Cuda.KernelVerifyTests runs them where there is one).
    /// </summary>
    private static HashSet<string> VerifiedKernels() => Cuda.VerifyHarness.Cases(null, null).Select(c => c.Kernel).ToHashSet();

    private static string[] Exports() =>
        File.ReadAllLines(RepoFile("kernels/exports.txt")).Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToArray();

    [Test]
    public void EveryExportedKernelIsComparedWithItsCpuReferenceByAVerifyCase()
    {
        // STYLE habit 2: every kernel of the fatbin is checked against the CPU reference. Four kernels only run inside
        // another's launch and are checked through it: attention_merge_f32 merges the splits of a split decode (the
        // verify case "lens 5000 ... (split)" asks for more than one split), kivi_merge_partials_f32 merges every KIVI
        // decode's partials, attention_merge_slots_f32 merges paged_attention_mma's levels and splits (its "decode tree"
        // cases), w4a8_splitk_reduce adds a split-K W4A8 GEMM's sums. The plans below show those launches contain them.
        var exports = Exports();
        Assert.That(exports, Is.Not.Empty);
        var verified = VerifiedKernels();
        var split = OpsLaunchPlans.PagedDecodeAttention("f32", 28 * 128, 28, 28 * 128, 1L << 30, 1L << 30, 512, 1, 1L << 30,
            1, 28, 4, 128, 32, 512, 4096, 5000, 132)!.Value;
        Assert.That(split.Merge?.Kernel, Is.EqualTo("attention_merge_f32"), "a 5000-key decode of one sequence is split and merged");
        var insideOf = new Dictionary<string, string>
        {
            [split.Merge!.Value.Kernel] = split.Attention.Kernel,
            [OpsLaunchPlans.KiviMergePartials(4 * 128, 4, 4L * 3 * 128, 12, 1, 4, 3, 128)!.Value.Kernel] = "kivi_decode_attention_f32",
            // A leveled or split AttentionWork merges its partial rows (the verify cases' decode trees have levels).
            // A W4A8 layer of 4096 x 4096 at M = 1 splits K over 132 SMs; the verify cases run that shape.
            [OpsLaunchPlans.W4A8GemmSplitK(4096, 4096, 1, -1, 4096L * 2048, 4096, 32L * 4096, 32L * 4096, 16L * 4096, 1, 4096, 4096, 128, 264)!.Value.Reduce!.Value.Kernel] =
                "w4a8_gemm_group_splitk",
            [OpsLaunchPlans.AttentionMergeSlots(10 * 32 * 128, 10 * 32, 40 * 32 * 128, 40 * 32, 11, 40, 10, 40, 32, 128)!.Value.Kernel] =
                OpsLaunchPlans.MmaAttentionKernel("f16", 128, 64),
        };
        var unchecked_ = exports.Where(k => !verified.Contains(k) && !(insideOf.TryGetValue(k, out var outer) && verified.Contains(outer))).ToArray();
        Assert.That(unchecked_, Is.Empty, "exported kernels no verify case compares with the CPU reference");
        // cublaslt_gemm_*: the cuBLASLt GEMM path (a library call behind convert_f32_to_*), verified like a kernel.
        Assert.That(verified.Where(k => k.StartsWith("cublaslt_gemm_", StringComparison.Ordinal)), Is.EquivalentTo(new[] { "cublaslt_gemm_f16", "cublaslt_gemm_bf16" }));
        Assert.That(verified.Where(k => !k.StartsWith("cublaslt_gemm_", StringComparison.Ordinal)).Except(exports).ToArray(), Is.Empty,
            "verify cases name kernels the fatbin does not export");
    }

    [Test]
    public void EmbeddedFatbinStartsWithTheFatbinMagic()
    {
        var image = KernelImage.Load();
        if (image == null) Assert.Ignore("this build has no fatbin (nvcc was not present); CI builds one");
        Assert.That(BitConverter.ToUInt32(image!, 0), Is.EqualTo(KernelImage.FatbinMagic));
    }
}
