// Typed device memory (STYLE habit 11): a CUdeviceptr that knows its element type and length, with bounds-checked copies.
using Kernels.Interop;

namespace Kernels.Runtime.Backends.Cuda;

/// <summary>
/// <paramref name="Length"/> elements of <typeparamref name="T"/> in device memory. bf16 tensors use ushort (the raw
/// bits), f16 tensors Half. Copies are synchronous (cuMemcpy*_v2 on the legacy default stream, which waits for work
/// queued on blocking streams). A zero-length buffer owns no allocation and has pointer 0. A view
/// (<see cref="View{U}"/>) owns nothing: it addresses part of another buffer's memory (an arena), keeps that buffer
/// reachable, and fails with ObjectDisposedException once the owner is disposed.
/// </summary>
internal sealed unsafe class DeviceBuffer<T> : IDisposable where T : unmanaged
{
    private readonly DeviceAllocationHandle? _allocation;
    private readonly IDeviceMemoryOwner? _owner; // set for views only
    private readonly long _ownerByteOffset;

    public CudaDevice Device { get; }
    public long Length { get; }
    public Type ElementType => typeof(T);
    public long ByteLength => Length * sizeof(T);

    private DeviceBuffer(CudaDevice device, long length, DeviceAllocationHandle? allocation)
    {
        Device = device;
        Length = length;
        _allocation = allocation;
    }

    private DeviceBuffer(CudaDevice device, long length, IDeviceMemoryOwner owner, long byteOffset)
    {
        Device = device;
        Length = length;
        _owner = owner;
        _ownerByteOffset = byteOffset;
    }

    /// <summary>
    /// <paramref name="length"/> elements of <typeparamref name="U"/> starting <paramref name="byteOffset"/> bytes into
    /// this buffer, without a copy or an allocation (disposing the view does nothing; disposing this buffer ends it).
    /// </summary>
    public DeviceBuffer<U> View<U>(long byteOffset, long length) where U : unmanaged
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegative(byteOffset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        long bytes = checked(length * sizeof(U));
        if (byteOffset > ByteLength || bytes > ByteLength - byteOffset)
            throw new ArgumentOutOfRangeException(nameof(length),
                $"bytes [{byteOffset}, {byteOffset + bytes}) are outside this device buffer of {ByteLength} bytes");
        if (byteOffset % sizeof(U) != 0)
            throw new ArgumentException($"byte offset {byteOffset} is not a multiple of {typeof(U).Name}'s size ({sizeof(U)})", nameof(byteOffset));
        return new DeviceBuffer<U>(Device, length, new ViewOwner<T>(this), byteOffset);
    }

    public static DeviceBuffer<T> Allocate(CudaDevice device, long length)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        long bytes = checked(length * sizeof(T));
        return new DeviceBuffer<T>(device, length, bytes == 0 ? null : device.Allocate(bytes));
    }

    /// <summary>A buffer holding a copy of <paramref name="source"/>.</summary>
    public static DeviceBuffer<T> From(CudaDevice device, ReadOnlySpan<T> source)
    {
        var buffer = Allocate(device, source.Length);
        try
        {
            buffer.CopyFrom(source);
            return buffer;
        }
        catch
        {
            buffer.Dispose();
            throw;
        }
    }

    /// <summary>The CUdeviceptr (0 for an empty buffer); throws ObjectDisposedException after Dispose.</summary>
    public ulong Pointer
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_owner != null) return Length == 0 ? 0 : _owner.BasePointer + (ulong)_ownerByteOffset;
            return _allocation?.Pointer ?? 0;
        }
    }

    /// <summary>Copies <paramref name="source"/> into elements [offset, offset + source.Length).</summary>
    public void CopyFrom(ReadOnlySpan<T> source, long offset = 0)
    {
        CheckRange(offset, source.Length, nameof(source));
        if (source.IsEmpty) return;
        Device.MakeCurrent();
        fixed (T* p = source)
            Cu.Check(CuApi.cuMemcpyHtoD(Pointer + (ulong)(offset * sizeof(T)), p, (nuint)((long)source.Length * sizeof(T))), Device.Ordinal);
    }

    /// <summary>Copies elements [offset, offset + destination.Length) into <paramref name="destination"/>.</summary>
    public void CopyTo(Span<T> destination, long offset = 0)
    {
        CheckRange(offset, destination.Length, nameof(destination));
        if (destination.IsEmpty) return;
        Device.MakeCurrent();
        fixed (T* p = destination)
            Cu.Check(CuApi.cuMemcpyDtoH(p, Pointer + (ulong)(offset * sizeof(T)), (nuint)((long)destination.Length * sizeof(T))), Device.Ordinal);
    }

    public T[] ToArray()
    {
        var result = new T[checked((int)Length)];
        CopyTo(result);
        return result;
    }

    /// <summary>Sets every byte to <paramref name="value"/> (cuMemsetD8), e.g. a sentinel pattern or zero.</summary>
    public void FillBytes(byte value)
    {
        if (Length == 0) return;
        Device.MakeCurrent();
        Cu.Check(CuApi.cuMemsetD8(Pointer, value, (nuint)ByteLength), Device.Ordinal);
    }

    private void CheckRange(long offset, int count, string argument)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (offset < 0 || offset > Length || count > Length - offset)
            throw new ArgumentOutOfRangeException(argument,
                $"elements [{offset}, {offset + count}) are outside this device buffer of {Length} {typeof(T).Name}");
    }

    private bool _disposed;

    public void Dispose()
    {
        _disposed = true;
        _allocation?.Dispose();
    }

    /// <summary>The start of the allocation behind this buffer (views resolve through it, so they see its disposal).</summary>
    internal ulong BasePointer => _owner != null ? _owner.BasePointer + (ulong)_ownerByteOffset : Pointer;

    public override string ToString() => $"DeviceBuffer<{typeof(T).Name}>[{Length}]";
}

/// <summary>What a view resolves its address through: the allocation-owning buffer it was cut from.</summary>
internal interface IDeviceMemoryOwner
{
    ulong BasePointer { get; }
}

internal sealed class ViewOwner<T>(DeviceBuffer<T> owner) : IDeviceMemoryOwner where T : unmanaged
{
    public ulong BasePointer => owner.BasePointer;
}
