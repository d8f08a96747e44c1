// llama.cpp's own GGML code (the libggml-base/libggml-cpu that LLamaSharp.Backend.Cpu ships, AVX2 build) as the
// reference for the GGML block formats: its quantizers make test data, its dequantize_row_* and vec_dot_* are what ours
// must reproduce. Tests skip with a message where the library or AVX2 is absent.
using System.Runtime.InteropServices;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Tests.Numerics;

public static unsafe class GgmlNative
{
    private static readonly Lazy<(nint Base, nint Cpu, string? Why)> Libraries = new(Load);

    private static (nint, nint, string?) Load()
    {
        if (!System.Runtime.Intrinsics.X86.Avx2.IsSupported) return (0, 0, "llama.cpp's AVX2 build needs AVX2");
        string dir = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "avx2");
        string basePath = Path.Combine(dir, "libggml-base.so"), cpuPath = Path.Combine(dir, "libggml-cpu.so");
        if (!OperatingSystem.IsLinux() || !File.Exists(cpuPath)) return (0, 0, $"llama.cpp's CPU library not found at {cpuPath}");
        nint b = NativeLibrary.Load(basePath), c = NativeLibrary.Load(cpuPath);
        ((delegate* unmanaged<void>)NativeLibrary.GetExport(c, "ggml_cpu_init"))();
        return (b, c, null);
    }

    /// <summary>Assert.Ignore unless llama.cpp's library is loadable here.</summary>
    public static void Require()
    {
        if (Libraries.Value.Why is { } why) Assert.Ignore(why);
    }

    private static nint Export(bool cpu, string name) =>
        NativeLibrary.GetExport(cpu ? Libraries.Value.Cpu : Libraries.Value.Base, name);

    public static string Suffix(TensorDType t) => t switch
    {
        TensorDType.Q2_K or TensorDType.Q3_K or TensorDType.Q4_K or TensorDType.Q5_K or TensorDType.Q6_K => t.Name()[..2].ToLowerInvariant() + "_K",
        _ => t.Name().ToLowerInvariant(),
    };

    /// <summary>llama.cpp's quantizer (ggml_quantize_chunk, no importance matrix): rows x perRow values to bytes.</summary>
    public static byte[] Quantize(TensorDType type, float[] values, int rows, int perRow)
    {
        var fn = (delegate* unmanaged<int, float*, void*, long, long, long, float*, nuint>)Export(false, "ggml_quantize_chunk");
        var dst = new byte[type.ByteCount((long)rows * perRow)];
        fixed (float* s = values)
        fixed (byte* d = dst)
        {
            nuint written = fn((int)GgmlTypes.ToId(type), s, d, 0, rows, perRow, null);
            Assert.That((long)written, Is.EqualTo(dst.Length), "ggml_quantize_chunk wrote another size than ours");
        }
        return dst;
    }

    /// <summary>llama.cpp's dequantize_row_{type}.</summary>
    public static float[] Dequantize(TensorDType type, byte[] data, int count)
    {
        var fn = (delegate* unmanaged<byte*, float*, long, void>)Export(false, "dequantize_row_" + Suffix(type));
        var y = new float[count];
        fixed (byte* x = data)
        fixed (float* p = y) fn(x, p, count);
        return y;
    }

    /// <summary>
    /// llama.cpp's activation quantizer for <paramref name="format"/> ("q8_0", "q8_1" or "q8_K"), the x86 build's
    /// quantize_row_* that its matmul runs.
    /// </summary>
    public static byte[] QuantizeActivations(string format, float[] x, int blockBytes, int block)
    {
        var fn = (delegate* unmanaged<float*, void*, long, void>)Export(true, "quantize_row_" + format);
        var y = new byte[x.Length / block * blockBytes];
        fixed (float* s = x)
        fixed (byte* d = y) fn(s, d, x.Length);
        return y;
    }

    /// <summary>llama.cpp's x86 (AVX2) ggml_vec_dot_{type}_{activation format}: one weight row against one activation row.</summary>
    public static float VecDot(TensorDType type, string activations, byte[] w, byte[] x, int n)
    {
        var fn = (delegate* unmanaged<int, float*, nuint, void*, nuint, void*, nuint, int, void>)Export(true, $"ggml_vec_dot_{Suffix(type)}_{activations}");
        float s;
        fixed (byte* a = w)
        fixed (byte* b = x) fn(n, &s, 0, a, 0, b, 0, 1);
        return s;
    }
}
