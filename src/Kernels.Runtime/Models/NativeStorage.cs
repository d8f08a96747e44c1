// Where tensor bytes live: a read-only memory-mapped file, or native memory we own (converted or permuted weights).
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

/// <summary>
/// What holds a model's tensor bytes (a mapped file, owned memory, a file reader over a mapping): every tensor a
/// loader hands out must lie inside one of its owners, which <see cref="ModelWeights.Build"/> checks.
/// </summary>
internal interface ITensorStorage
{
    /// <summary>The native memory holding the bytes (the mapping of a file, or owned memory).</summary>
    NativeStorage Memory { get; }
}

/// <summary>A pinned, unmanaged byte range that stays valid until the storage is disposed.</summary>
internal abstract unsafe class NativeStorage : ITensorStorage, IDisposable
{
    public abstract byte* Pointer { get; }
    public abstract long Length { get; }
    public abstract void Dispose();

    public NativeStorage Memory => this;

    /// <summary>Whether [start, start + length) lies inside this storage.</summary>
    public bool Holds(byte* start, long length)
    {
        byte* p = Pointer;
        return length >= 0 && start >= p && (ulong)(start - p) <= (ulong)Length && (ulong)length <= (ulong)Length - (ulong)(start - p);
    }
}

/// <summary>A whole file mapped read-only; nothing is copied into managed memory.</summary>
internal sealed unsafe class MappedFile : NativeStorage
{
    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private byte* _pointer;

    public string Path { get; }
    public override long Length { get; }

    public override byte* Pointer => _pointer != null ? _pointer : throw new ObjectDisposedException(Path);

    private MappedFile(string path, MemoryMappedFile map, MemoryMappedViewAccessor view, long length)
    {
        Path = path;
        _map = map;
        _view = view;
        Length = length;
        byte* p = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _pointer = p + view.PointerOffset;
    }

    public static MappedFile Open(string path)
    {
        FileInfo info;
        try
        {
            info = new FileInfo(path);
            if (!info.Exists) throw new ModelFormatException(path, "file not found");
        }
        catch (Exception e) when (e is not ModelFormatException)
        {
            throw new ModelFormatException(path, e.Message, e);
        }
        if (info.Length == 0) throw new ModelFormatException(path, "file is empty");
        try
        {
            var map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            var view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            return new MappedFile(path, map, view, info.Length);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException(path, $"cannot map file: {e.Message}", e);
        }
    }

    public ReadOnlySpan<byte> Span(long offset, int length)
    {
        if (offset < 0 || length < 0 || offset > Length - length)
            throw new ModelFormatException(Path, $"read of {length} bytes at offset {offset} runs past the end of the file ({Length} bytes)");
        return new ReadOnlySpan<byte>(Pointer + offset, length);
    }

    public override void Dispose()
    {
        if (_pointer == null) return;
        _pointer = null;
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }
}

/// <summary>An aligned native allocation; a SafeHandle, so memory a caller forgot to dispose is still freed.</summary>
internal sealed unsafe class AlignedMemoryHandle : SafeHandle
{
    public long Bytes { get; }

    public AlignedMemoryHandle(long bytes) : base(IntPtr.Zero, ownsHandle: true)
    {
        Bytes = Math.Max(bytes, 1);
        SetHandle((IntPtr)NativeMemory.AlignedAlloc((nuint)Bytes, 64));
        GC.AddMemoryPressure(Bytes);
    }

    public override bool IsInvalid => handle == IntPtr.Zero;

    protected override bool ReleaseHandle()
    {
        NativeMemory.AlignedFree((void*)handle);
        GC.RemoveMemoryPressure(Bytes);
        return true;
    }
}

/// <summary>Native memory owned by the model (64-byte aligned for SIMD loads).</summary>
internal sealed unsafe class OwnedStorage : NativeStorage
{
    private readonly AlignedMemoryHandle _memory;
    public override long Length { get; }
    public override byte* Pointer => !_memory.IsClosed ? (byte*)_memory.DangerousGetHandle() : throw new ObjectDisposedException(nameof(OwnedStorage));

    public OwnedStorage(long length)
    {
        Length = length;
        _memory = new AlignedMemoryHandle(length);
    }

    public Span<T> AsSpan<T>() where T : unmanaged => new(Pointer, checked((int)(Length / sizeof(T))));

    public override void Dispose() => _memory.Dispose();
}
