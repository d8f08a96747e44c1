// Conversion of stored weight elements (F32, F16, BF16, GGML blocks; raw integers by value) to fp32, vectorized where the CPU allows.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kernels.Runtime.Numerics;

internal static unsafe class DTypeConvert
{
    /// <summary>Converts destination.Length elements starting at <paramref name="source"/> to fp32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void ToSingle(TensorDType type, byte* source, Span<float> destination)
    {
        switch (type)
        {
            case TensorDType.F32:
                new ReadOnlySpan<float>(source, destination.Length).CopyTo(destination);
                break;
            case TensorDType.F16:
                HalfToSingle((ushort*)source, destination);
                break;
            case TensorDType.BF16:
                BFloat16ToSingle(new ReadOnlySpan<ushort>(source, destination.Length), destination);
                break;
            case TensorDType.I8:
                for (int i = 0; i < destination.Length; i++) destination[i] = ((sbyte*)source)[i];
                break;
            case TensorDType.U8:
                for (int i = 0; i < destination.Length; i++) destination[i] = source[i];
                break;
            case TensorDType.I32:
                for (int i = 0; i < destination.Length; i++) destination[i] = ((int*)source)[i];
                break;
            default:
                if (!type.IsBlockQuantized()) throw new ArgumentOutOfRangeException(nameof(type), type, "unknown dtype");
                GgmlBlocks.Dequantize(type, source, destination);
                break;
        }
    }

    /// <summary>
    /// fp16 to fp32, 8 lanes in integer registers (.NET exposes no F16C): exponent and mantissa shifted into place and
    /// scaled by 2^112 give every normal and subnormal exactly; infinities and NaNs get an all-ones exponent; the sign
    /// goes back last. Several times faster than TensorPrimitives' Half conversion on AVX2 (measured), and exact.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> HalfToSingle8(ushort* source)
    {
        var h = Avx2.ConvertToVector256Int32(source);
        var magnitude = h & Vector256.Create(0x7FFF);
        var bits = Avx2.ShiftLeftLogical(magnitude, 13);
        var value = bits.AsSingle() * Vector256.Create(5.192296858534828e33f); // 2^112 rebias (15 -> 127)
        var special = Avx2.CompareGreaterThan(magnitude, Vector256.Create(0x7BFF)).AsSingle();
        value = Avx.BlendVariable(value, (bits | Vector256.Create(0x7F800000)).AsSingle(), special);
        return (value.AsInt32() | Avx2.ShiftLeftLogical(h & Vector256.Create(0x8000), 16)).AsSingle();
    }

    /// <summary>
    /// fp16 to fp32 for halves known to be finite (no exponent 31): the half moved to the top 16 bits and shifted right
    /// arithmetically by 3 lands sign, exponent and mantissa in fp32's fields (the masked-off bits 28-30 held sign
    /// copies); the 2^112 multiply rebiases the exponent and makes subnormals exact. 4 integer/float ops instead of 9.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> FiniteHalfToSingle8(ushort* source)
    {
        var top = Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(source), 16);
        var fields = Avx2.ShiftRightArithmetic(top, 3) & Vector256.Create(unchecked((int)0x8FFFE000));
        return fields.AsSingle() * Vector256.Create(5.192296858534828e33f);
    }

    /// <summary>2^112: turns the fp32 fields of a half (sign, exponent and mantissa moved into place) into its value.</summary>
    public const float HalfFieldsScale = 5.192296858534828e33f;

    /// <summary>
    /// 16 finite halves as fp32 fields (each value times 2^-112, exact, see <see cref="FiniteHalfToSingle8"/>) in
    /// unpack order: <paramref name="lo"/> holds halves 0-3 and 8-11, <paramref name="hi"/> 4-7 and 12-15. Placing each
    /// half in the top 16 bits of a lane costs one unpack instead of a widening load and a shift; the multiply by
    /// <see cref="HalfFieldsScale"/> can be moved onto the other operand of a product (exact: powers of two).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void FiniteHalfFields16(ushort* source, out Vector256<float> lo, out Vector256<float> hi)
    {
        var h = Avx.LoadVector256((short*)source);
        var mask = Vector256.Create(unchecked((int)0x8FFFE000));
        lo = (Avx2.ShiftRightArithmetic(Avx2.UnpackLow(Vector256<short>.Zero, h).AsInt32(), 3) & mask).AsSingle();
        hi = (Avx2.ShiftRightArithmetic(Avx2.UnpackHigh(Vector256<short>.Zero, h).AsInt32(), 3) & mask).AsSingle();
    }

    /// <summary>8 finite halves as fp32 fields (value times 2^-112), in place: <see cref="FiniteHalfToSingle8"/> without its multiply.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> FiniteHalfFields8(ushort* source) =>
        (Avx2.ShiftRightArithmetic(Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(source), 16), 3) & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle();

    /// <summary>
    /// n finite halves to fp32 with every whole 16-block among the first <paramref name="paired"/> (a multiple of 16)
    /// in the order of <see cref="FiniteHalfFields16"/>, the rest in place. With <paramref name="fields"/> the vector
    /// part (the first n &amp; ~7 halves) stays fp32 fields, without the 2^112 multiply, for products with an x prescaled
    /// by 2^112 (exact, the same bits); the scalar tail is always converted to values. Needs AVX2.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void FiniteHalfToSinglePaired(ushort* source, float* destination, int paired, int n, bool fields)
    {
        int i = 0;
        if (fields)
        {
            for (; i + 16 <= paired; i += 16)
            {
                FiniteHalfFields16(source + i, out var lo, out var hi);
                Avx.Store(destination + i, lo);
                Avx.Store(destination + i + 8, hi);
            }
            for (; i + 8 <= n; i += 8) Avx.Store(destination + i, FiniteHalfFields8(source + i));
        }
        else
        {
            var scale = Vector256.Create(HalfFieldsScale);
            for (; i + 16 <= paired; i += 16)
            {
                FiniteHalfFields16(source + i, out var lo, out var hi);
                Avx.Store(destination + i, lo * scale);
                Avx.Store(destination + i + 8, hi * scale);
            }
        }
        FiniteHalfToSingle(source + i, destination + i, n - i);
    }

    /// <summary>n finite halves (see <see cref="FiniteHalfToSingle8"/>) to fp32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void FiniteHalfToSingle(ushort* source, float* destination, int n)
    {
        int i = 0;
        if (Avx2.IsSupported)
            for (; i + 8 <= n; i += 8) Avx.Store(destination + i, FiniteHalfToSingle8(source + i));
        for (; i < n; i++) destination[i] = (float)BitConverter.UInt16BitsToHalf(source[i]);
    }

    /// <summary>Whether no half in the span is an infinity or NaN (exponent field all ones).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static bool AllFiniteHalves(ReadOnlySpan<ushort> halves)
    {
        int i = 0;
        fixed (ushort* p = halves)
        {
            if (Vector256.IsHardwareAccelerated)
            {
                var mask = Vector256.Create((ushort)0x7C00);
                for (; i + 16 <= halves.Length; i += 16)
                    if (Vector256.EqualsAny(Vector256.Load(p + i) & mask, mask)) return false;
            }
            for (; i < halves.Length; i++)
                if ((p[i] & 0x7C00) == 0x7C00) return false;
        }
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void HalfToSingle(ushort* source, Span<float> destination)
    {
        int n = destination.Length, i = 0;
        fixed (float* d = destination)
        {
            if (Avx2.IsSupported)
                for (; i + 8 <= n; i += 8) Avx.Store(d + i, HalfToSingle8(source + i));
            for (; i < n; i++) d[i] = (float)BitConverter.UInt16BitsToHalf(source[i]);
        }
    }

    /// <summary>bf16 is the top half of an fp32: widen and shift, 8 lanes at a time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void BFloat16ToSingle(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        int n = source.Length, i = 0;
        fixed (ushort* s = source)
        fixed (float* d = destination)
        {
            if (Vector256.IsHardwareAccelerated)
            {
                for (; i + 16 <= n; i += 16)
                {
                    var v = Vector256.Load(s + i);
                    var (lo, hi) = Vector256.Widen(v);
                    Vector256.Store(Vector256.ShiftLeft(lo, 16).AsSingle(), d + i);
                    Vector256.Store(Vector256.ShiftLeft(hi, 16).AsSingle(), d + i + 8);
                }
            }
            for (; i < n; i++) d[i] = BFloat16ToSingle(s[i]);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float BFloat16ToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>Round-to-nearest-even fp32 -> bf16 (NaN stays NaN).</summary>
    public static ushort SingleToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((bits >> 16) | 0x40);
        uint rounding = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }
}
