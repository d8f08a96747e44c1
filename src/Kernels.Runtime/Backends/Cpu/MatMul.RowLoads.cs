// How a weight row's elements become fp32 lanes (one struct per stored form, specialised per struct by the JIT), and
// the dot order every dense strategy shares (DotTile's summary, the AVX-512 path's order): two 8-lane accumulators
// over 16-column steps folded, one 8-column step, Vector256.Sum, the scalar tail.
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

internal static unsafe partial class MatMul
{
    /// <summary>One dot product in the order of every dense kernel (DotTile's summary).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Dot<L>(byte* w, float* x, int k) where L : IRowLoad
    {
        if (!Vectorized)
        {
            float s = 0;
            for (int j = 0; j < k; j++) s += L.LoadScalar(w, j) * x[j];
            return s;
        }
        Vector256<float> a = Vector256<float>.Zero, b = a;
        int i = 0;
        for (; i + 16 <= k; i += 16)
        {
            a = Fma.MultiplyAdd(L.Load(w, i), Avx.LoadVector256(x + i), a);
            b = Fma.MultiplyAdd(L.Load(w, i + 8), Avx.LoadVector256(x + i + 8), b);
        }
        a += b;
        if (i + 8 <= k) a = Fma.MultiplyAdd(L.Load(w, i), Avx.LoadVector256(x + i), a);
        return Tail<L>(a, w, x, k & ~7, k);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Tail<L>(Vector256<float> acc, byte* w, float* x, int i, int k) where L : IRowLoad
    {
        float s = Vector256.Sum(acc);
        for (; i < k; i++) s += L.LoadScalar(w, i) * x[i];
        return s;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // How a weight row's elements become fp32 lanes (specialized per struct by the JIT).
    private interface IRowLoad
    {
        static abstract int ElementBytes { get; }
        static abstract Vector256<float> Load(byte* row, int i);
        static abstract float LoadScalar(byte* row, int i);
    }

    private readonly struct F32Rows : IWideLoad
    {
        public static int ElementBytes => 4;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(byte* row, int i) => Vector512.Load((float*)row + i);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load(byte* row, int i) => Avx.LoadVector256((float*)row + i);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float LoadScalar(byte* row, int i) => ((float*)row)[i];
    }

    /// <summary>bf16 is the top half of an fp32: zero-extend 8 lanes to 32 bits and shift left by 16.</summary>
    private readonly struct Bf16Rows : IWideLoad
    {
        public static int ElementBytes => 2;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(byte* row, int i) =>
            Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512Int32(Vector256.Load((ushort*)row + i)), 16).AsSingle();
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load(byte* row, int i) =>
            Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32((ushort*)row + i), 16).AsSingle();
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float LoadScalar(byte* row, int i) => DTypeConvert.BFloat16ToSingle(((ushort*)row)[i]);
    }

    /// <summary>fp16 rows of a tensor without infinities or NaNs: the cheaper exact widening (DTypeConvert.FiniteHalfToSingle8).</summary>
    private readonly struct FiniteF16Rows : IRowLoad
    {
        public static int ElementBytes => 2;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load(byte* row, int i) => DTypeConvert.FiniteHalfToSingle8((ushort*)row + i);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float LoadScalar(byte* row, int i) => (float)((Half*)row)[i];
    }

    /// <summary>fp16 rows widened in registers (DTypeConvert.HalfToSingle8: exact, including subnormals, inf, NaN).</summary>
    private readonly struct F16Rows : IWideLoad
    {
        public static int ElementBytes => 2;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(byte* row, int i) =>
            Vector512.Create(DTypeConvert.HalfToSingle8((ushort*)row + i), DTypeConvert.HalfToSingle8((ushort*)row + i + 8));
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load(byte* row, int i) => DTypeConvert.HalfToSingle8((ushort*)row + i);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float LoadScalar(byte* row, int i) => (float)((Half*)row)[i];
    }
}
