// One SafeHandle per driver resource (STYLE habit 8): primary context, module, stream, event, device memory, pinned host
// memory, captured graph, instantiated graph. ReleaseHandle calls the driver's destroy function and never throws.
using System.Runtime.InteropServices;

namespace Kernels.Interop;

/// <summary>A retained primary context; releasing it calls cuDevicePrimaryCtxRelease for its device.</summary>
public sealed class CuContextHandle : SafeHandle
{
    public int Device { get; }

    internal CuContextHandle(IntPtr context, int device) : base(IntPtr.Zero, ownsHandle: true)
    {
        Device = device;
        SetHandle(context);
    }

    public override bool IsInvalid => handle == IntPtr.Zero;

    protected override bool ReleaseHandle()
    {
        try { return CuApi.cuDevicePrimaryCtxRelease(Device) == CuResult.Success; }
        catch { return false; }
    }
}

/// <summary>
/// A resource that lives in a context. It holds a reference on its context handle, so the primary context is released
/// only after everything created in it, and it makes that context current before destroying itself: a finalizer thread
/// has no current context, and cuMemFree there would fail with CUDA_ERROR_INVALID_CONTEXT and leak.
/// </summary>
public abstract class CuContextBoundHandle : SafeHandle
{
    private readonly CuContextHandle _context;

    private protected CuContextBoundHandle(IntPtr value, CuContextHandle context) : base(IntPtr.Zero, ownsHandle: true)
    {
        bool added = false;
        context.DangerousAddRef(ref added);
        _context = context;
        SetHandle(value);
    }

    public int Device => _context.Device;

    public override bool IsInvalid => handle == IntPtr.Zero;

    protected sealed override bool ReleaseHandle()
    {
        try
        {
            if (CuApi.cuCtxSetCurrent(_context.DangerousGetHandle()) != CuResult.Success) return false;
            return Destroy(handle) == CuResult.Success;
        }
        catch
        {
            return false;
        }
        finally
        {
            _context.DangerousRelease();
        }
    }

    private protected abstract CuResult Destroy(IntPtr value);
}

public sealed class CuModuleHandle : CuContextBoundHandle
{
    internal CuModuleHandle(IntPtr module, CuContextHandle context) : base(module, context) { }
    private protected override CuResult Destroy(IntPtr value) => CuApi.cuModuleUnload(value);
}

public sealed class CuStreamHandle : CuContextBoundHandle
{
    internal CuStreamHandle(IntPtr stream, CuContextHandle context) : base(stream, context) { }
    private protected override CuResult Destroy(IntPtr value) => CuApi.cuStreamDestroy(value);
}

public sealed class CuEventHandle : CuContextBoundHandle
{
    internal CuEventHandle(IntPtr @event, CuContextHandle context) : base(@event, context) { }
    private protected override CuResult Destroy(IntPtr value) => CuApi.cuEventDestroy(value);
}

/// <summary>A graph captured from a stream (cuStreamEndCapture); only needed until it is instantiated.</summary>
public sealed class CuGraphHandle : CuContextBoundHandle
{
    internal CuGraphHandle(IntPtr graph, CuContextHandle context) : base(graph, context) { }
    private protected override CuResult Destroy(IntPtr value) => CuApi.cuGraphDestroy(value);
}

/// <summary>An executable graph (cuGraphInstantiateWithFlags), launched with cuGraphLaunch.</summary>
public sealed class CuGraphExecHandle : CuContextBoundHandle
{
    internal CuGraphExecHandle(IntPtr graphExec, CuContextHandle context) : base(graphExec, context) { }
    private protected override CuResult Destroy(IntPtr value) => CuApi.cuGraphExecDestroy(value);
}

/// <summary>Device memory from cuMemAlloc; the handle value is the CUdeviceptr.</summary>
public sealed class DeviceAllocationHandle : CuContextBoundHandle
{
    public long Bytes { get; }

    internal DeviceAllocationHandle(ulong pointer, long bytes, CuContextHandle context) : base((IntPtr)(long)pointer, context) => Bytes = bytes;

    /// <summary>The CUdeviceptr; throws ObjectDisposedException once the memory is freed.</summary>
    public ulong Pointer
    {
        get
        {
            ObjectDisposedException.ThrowIf(IsClosed, this);
            return (ulong)(long)handle;
        }
    }

    private protected override CuResult Destroy(IntPtr value) => CuApi.cuMemFree((ulong)(long)value);
}

/// <summary>Page-locked host memory from cuMemAllocHost (what async copies need to overlap with compute).</summary>
public sealed class PinnedHostHandle : CuContextBoundHandle
{
    public long Bytes { get; }

    internal PinnedHostHandle(IntPtr pointer, long bytes, CuContextHandle context) : base(pointer, context) => Bytes = bytes;

    /// <summary>The memory as a span of <typeparamref name="T"/> (whole elements only).</summary>
    public unsafe Span<T> AsSpan<T>() where T : unmanaged
    {
        ObjectDisposedException.ThrowIf(IsClosed, this);
        return new Span<T>((void*)handle, checked((int)(Bytes / sizeof(T))));
    }

    private protected override CuResult Destroy(IntPtr value) => CuApi.cuMemFreeHost(value);
}
