// Conversion of stored weight elements (F32, F16, BF16, Q8_0) to fp32, vectorized where the CPU allows.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Kernels.Runtime.Models;

namespace Kernels.Runtime.Numerics;

public static unsafe class DTypeConvert
{
    /// <summary>Converts destination.Length elements starting at <paramref name="source"/> to fp32.</summary>
    public static void ToSingle(TensorDType type, byte* source, Span<float> destination)
    {
        switch (type)
        {
            case TensorDType.F32:
                new ReadOnlySpan<float>(source, destination.Length).CopyTo(destination);
                break;
            case TensorDType.F16:
                TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(source, destination.Length), destination);
                break;
            case TensorDType.BF16:
                BFloat16ToSingle(new ReadOnlySpan<ushort>(source, destination.Length), destination);
                break;
            case TensorDType.Q8_0:
                Q8_0ToSingle(source, destination);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, "unknown dtype");
        }
    }

    /// <summary>bf16 is the top half of an fp32: widen and shift, 8 lanes at a time.</summary>
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

    private static void Q8_0ToSingle(byte* source, Span<float> destination)
    {
        int n = destination.Length;
        if (n % TensorDTypeInfo.Q8_0BlockSize != 0)
            throw new ArgumentException($"Q8_0 rows must be a multiple of {TensorDTypeInfo.Q8_0BlockSize} elements, got {n}");
        for (int b = 0; b < n / TensorDTypeInfo.Q8_0BlockSize; b++)
        {
            byte* block = source + b * TensorDTypeInfo.Q8_0BlockBytes;
            float scale = (float)Unsafe.ReadUnaligned<Half>(block);
            sbyte* q = (sbyte*)(block + 2);
            for (int j = 0; j < TensorDTypeInfo.Q8_0BlockSize; j++)
                destination[b * TensorDTypeInfo.Q8_0BlockSize + j] = q[j] * scale;
        }
    }
}
