// The one place a device dtype becomes the element type of its buffers: F32 as float, F16 as Half, BF16 as its raw
// ushort bits (as OpsLauncher takes them), with the kernels' name suffix for each.
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cuda;

/// <summary>
/// Work on a device buffer whose dtype is known only at run time (a weight's, the KV cache's): written once as a
/// generic <see cref="Run{T}"/> and specialised by the JIT per element type (the struct carries the arguments, so a
/// launch allocates nothing). <see cref="DeviceDType.Dispatch"/> picks T.
/// </summary>
internal interface IDeviceDTypeAction
{
    void Run<T>() where T : unmanaged;
}

internal static class DeviceDType
{
    /// <summary>
    /// Runs <paramref name="action"/> with T the element type of <paramref name="dtype"/> (F32, F16 or BF16); any other
    /// dtype throws NotSupportedException "<paramref name="subject"/>: <paramref name="what"/> DTYPE" (without the
    /// subject when it is null).
    /// </summary>
    public static void Dispatch<TAction>(TensorDType dtype, ref TAction action, string? subject, string what) where TAction : struct, IDeviceDTypeAction
    {
        switch (dtype)
        {
            case TensorDType.F32: action.Run<float>(); break;
            case TensorDType.F16: action.Run<Half>(); break;
            case TensorDType.BF16: action.Run<ushort>(); break;
            default: throw new NotSupportedException(subject == null ? $"{what} {dtype.Name()}" : $"{subject}: {what} {dtype.Name()}");
        }
    }
}

/// <summary>What a device element type stands for: its dtype and the suffix of the kernels compiled for it.</summary>
internal static class DeviceElement<T> where T : unmanaged
{
    public static readonly TensorDType DType =
        typeof(T) == typeof(float) ? TensorDType.F32
        : typeof(T) == typeof(Half) ? TensorDType.F16
        : typeof(T) == typeof(ushort) ? TensorDType.BF16
        : throw new NotSupportedException($"{typeof(T).Name} is not a device element type (float, Half, ushort for bf16)");

    /// <summary>"f32", "f16" or "bf16", as the kernels' entry names end.</summary>
    public static readonly string Suffix = DType switch
    {
        TensorDType.F32 => "f32",
        TensorDType.F16 => "f16",
        _ => "bf16",
    };
}
