// Per-token symmetric int8 activation quantization of W4A8: the arithmetic the GPU's fused RMSNorm/SwiGLU epilogue
// performs and the CPU W4A8 linear performs on its input rows, defined once.
namespace Kernels.Runtime.Quantization.W4A8;

/// <summary>
/// For a row x: amax = max|x|, scale = amax / 127 (fp32), x_q = clamp(rne(x * (127 / amax)), -127, 127), all in fp32
/// with IEEE round-to-nearest division and multiplication (the GPU uses __fdiv_rn/__fmul_rn/__float2int_rn), so both
/// sides produce the same bytes from the same fp32 row. -128 is never produced: the CPU's sign trick and the
/// per-channel zero term rely on |x_q| &lt;= 127. An all-zero row has scale 0 and codes 0.
/// </summary>
internal static class Int8Activations
{
    /// <summary>Quantizes one row into <paramref name="codes"/> (at least x.Length long) and returns its scale.</summary>
    public static float QuantizeRow(ReadOnlySpan<float> x, Span<sbyte> codes)
    {
        float amax = 0;
        foreach (float v in x) amax = MathF.Max(amax, MathF.Abs(v));
        if (!float.IsFinite(amax)) throw new ArgumentException($"activation row holds {amax}; int8 quantization needs finite values", nameof(x));
        if (amax == 0)
        {
            codes[..x.Length].Clear();
            return 0;
        }
        float inverse = 127f / amax;
        for (int i = 0; i < x.Length; i++) codes[i] = (sbyte)Math.Clamp((int)MathF.Round(x[i] * inverse), -127, 127);
        return amax / 127f;
    }
}
