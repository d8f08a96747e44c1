// The boundary with kernels/: dtype codes on both sides, exported names, and the embedded fatbin when one was built.
using System.Text.RegularExpressions;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Models;

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

    [Test]
    public void EveryExportedOpHasItsCpuReference()
    {
        // STYLE habit 2: kernels/ops/<op> <-> Backends/Cpu/<Op>.
        var exports = File.ReadAllLines(RepoFile("kernels/exports.txt")).Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToArray();
        Assert.That(exports, Is.Not.Empty);
        var references = new Dictionary<string, Type>
        {
            ["embedding_gather"] = typeof(Kernels.Runtime.Backends.Cpu.Embedding),
            ["rms_norm"] = typeof(Kernels.Runtime.Backends.Cpu.RmsNorm),
            ["rope"] = typeof(Kernels.Runtime.Backends.Cpu.Rope),
            ["swiglu"] = typeof(Kernels.Runtime.Backends.Cpu.SwiGlu),
            ["swiglu_fused"] = typeof(Kernels.Runtime.Backends.Cpu.SwiGlu),
            ["residual_add"] = typeof(Kernels.Runtime.Backends.Cpu.ResidualAdd),
            ["dense_gemm"] = typeof(Kernels.Runtime.Backends.Cpu.MatMul),
            ["dense_gemm_small_m"] = typeof(Kernels.Runtime.Backends.Cpu.MatMul),
            ["dense_gemv"] = typeof(Kernels.Runtime.Backends.Cpu.MatMul),
            ["paged_decode_attention"] = typeof(Kernels.Runtime.Backends.Cpu.Attention),
            ["paged_prefill_attention"] = typeof(Kernels.Runtime.Backends.Cpu.Attention),
            ["attention_merge"] = typeof(Kernels.Runtime.Numerics.AttentionState),
            ["sample_tokens"] = typeof(Kernels.Runtime.Engine.Sampler),
            ["rms_norm_quant_int8"] = typeof(Kernels.Runtime.Quantization.W4A8.Int8Activations), // after RmsNorm
            ["w4a8_gemm_group_m16"] = typeof(Kernels.Runtime.Backends.Cpu.W4A8Gemm),
            ["w4a8_gemm_group_m64"] = typeof(Kernels.Runtime.Backends.Cpu.W4A8Gemm),
            ["w4a8_gemm_channel_m16"] = typeof(Kernels.Runtime.Backends.Cpu.W4A8Gemm),
            ["w4a8_gemm_channel_m64"] = typeof(Kernels.Runtime.Backends.Cpu.W4A8Gemm),
            ["kv_append"] = typeof(Kernels.Runtime.Backends.Cpu.CpuBackend), // the K/V row copy in Forward, rounded as DTypeConvert
            ["kivi_quantize_block"] = typeof(Kernels.Runtime.Quantization.Kivi),
            ["kivi_decode_attention"] = typeof(Kernels.Runtime.Backends.Cpu.Attention),
            ["kivi_merge_partials"] = typeof(Kernels.Runtime.Numerics.AttentionState),
        };
        foreach (var name in exports)
        {
            string op = Regex.Replace(name, "(_hd[0-9]+)?_(f32|f16|bf16)$", ""); // attention entries carry _hd<D>
            Assert.That(references.ContainsKey(op), $"kernel {name} has no CPU reference listed");
        }
    }

    [Test]
    public void EmbeddedFatbinStartsWithTheFatbinMagic()
    {
        var image = KernelImage.Load();
        if (image == null) Assert.Ignore("this build has no fatbin (nvcc was not present); CI builds one");
        Assert.That(BitConverter.ToUInt32(image!, 0), Is.EqualTo(KernelImage.FatbinMagic));
    }
}
