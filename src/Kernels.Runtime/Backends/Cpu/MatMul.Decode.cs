// The matmul for one x row (decode, AVX2): every weight row streamed once, widened in registers, prefetched a fixed
// distance ahead; finite F16 rows against x paired to their unpack order.
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

internal static unsafe partial class MatMul
{
    /// <summary>
    /// How far ahead of its reads a decode row prefetches (bytes). One x row streams the weights one row at a time,
    /// front to back, with one prefetch per 64-byte line this far on: measured on the 2-core EPYC (all 85 matmuls of a
    /// 100M F16 decode step, interleaved A/B, medians of 28), 10-15 % less time than four rows at a time fetching the
    /// next four rows; 2-4 KiB leads were alike, 1.5 KiB slower.
    /// </summary>
    internal const int DecodeLead = 3072;

    private readonly partial struct Job
    {
        /// <summary>One x row against weight rows start..end, each streamed through <see cref="DotStreaming{L}"/>.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void StreamRows<L>(int start, int end) where L : IRowLoad
        {
            WarmRange(start);
            int rowBytes = (int)w.DType.ByteCount(k);
            for (int j = start; j < end; j++) y[j] = DotStreaming<L>(data + (long)j * rowBytes, x, k) + (bias != null ? bias[j] : 0f);
        }

        /// <summary>One x row against finite F16 weights, with x paired (and prescaled when <typeparamref name="S"/> says so).</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void PairedDecode<S>(int start, int end) where S : struct, IScaling
        {
            ushort* w16 = (ushort*)data;
            WarmRange(start);
            for (int j = start; j < end; j++) y[j] = DotPaired<S>(w16 + (long)j * k, k, paired, x) + (bias != null ? bias[j] : 0f);
        }

        /// <summary>
        /// A decode task's first <see cref="DecodeLead"/> bytes, fetched before its rows stream (a task starts where
        /// no earlier read prefetched; measured 2-3 % on the step).
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void WarmRange(int start)
        {
            byte* first = data + w.DType.ByteCount((long)start * k);
            for (int b = 0; b < DecodeLead; b += 64) Sse.Prefetch0(first + b);
        }
    }

    /// <summary>
    /// One finite F16 weight row against a paired x row, 16 columns per step (FiniteHalfFields16), then one 8-column
    /// step in place and the scalar tail: the order of the blocked kernel over FiniteHalfToSinglePaired rows. Streams:
    /// each 64-byte line of weights is fetched <see cref="DecodeLead"/> bytes ahead.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float DotPaired<S>(ushort* w, int k, float* xp, float* x) where S : struct, IScaling
    {
        Vector256<float> a = Vector256<float>.Zero, b = a;
        var scale = Vector256.Create(DTypeConvert.HalfFieldsScale);
        int kp = k & ~15, k8 = k & ~7, i = 0;
        for (; i < kp; i += 16)
        {
            if ((i & 31) == 0) Sse.Prefetch0((byte*)(w + i) + DecodeLead);
            DTypeConvert.FiniteHalfFields16(w + i, out var l, out var h);
            if (!S.Prescaled) { l *= scale; h *= scale; }
            a = Fma.MultiplyAdd(l, Avx.LoadVector256(xp + i), a);
            b = Fma.MultiplyAdd(h, Avx.LoadVector256(xp + i + 8), b);
        }
        a = DotTile.Fold(a, b, paired: true);
        if (k8 > kp) a = Fma.MultiplyAdd(Fields8<S>(w + kp), Avx.LoadVector256(xp + kp), a);
        return Tail<F16Rows>(a, (byte*)w, x, k8, k);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Fields8<S>(ushort* w) where S : struct, IScaling =>
        S.Prescaled ? DTypeConvert.FiniteHalfFields8(w) : DTypeConvert.FiniteHalfFields8(w) * Vector256.Create(DTypeConvert.HalfFieldsScale);

    /// <summary>Whether x was prescaled by 2^112 (the weights' fields are used as they are) or not (they are scaled).</summary>
    private interface IScaling { static abstract bool Prescaled { get; } }
    private readonly struct PrescaledX : IScaling { public static bool Prescaled => true; }
    private readonly struct UnscaledX : IScaling { public static bool Prescaled => false; }

    /// <summary><see cref="Dot{L}"/> for a decode row: each 64-byte line of weights fetched <see cref="DecodeLead"/> bytes ahead.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float DotStreaming<L>(byte* w, float* x, int k) where L : IRowLoad
    {
        Vector256<float> a = Vector256<float>.Zero, b = a;
        int i = 0, line = 64 / L.ElementBytes; // 16 or 32 elements
        for (; i + 16 <= k; i += 16)
        {
            if ((i & (line - 1)) == 0) Sse.Prefetch0(w + i * L.ElementBytes + DecodeLead);
            a = Fma.MultiplyAdd(L.Load(w, i), Avx.LoadVector256(x + i), a);
            b = Fma.MultiplyAdd(L.Load(w, i + 8), Avx.LoadVector256(x + i + 8), b);
        }
        a += b;
        if (i + 8 <= k) a = Fma.MultiplyAdd(L.Load(w, i), Avx.LoadVector256(x + i), a);
        return Tail<L>(a, w, x, k & ~7, k);
    }
}
