// One CUDA device with its retained primary context: the query (WhyUnavailable) that never crashes a process without a
// driver, the entry point (Open), and the typed operations that create the SafeHandle-owned resources.
using System.Runtime.InteropServices;
using System.Text;

namespace Kernels.Interop;

public sealed unsafe class CudaDevice : IDisposable
{
    public int Ordinal { get; }
    public string Name { get; }
    public int ComputeCapabilityMajor { get; }
    public int ComputeCapabilityMinor { get; }
    public int MultiprocessorCount { get; }
    public long TotalMemoryBytes { get; }
    /// <summary>cuDriverGetVersion: 1000 * major + 10 * minor (13000 = CUDA 13.0).</summary>
    public int DriverVersion { get; }
    public CuContextHandle Context { get; }

    private CudaDevice(int ordinal, string name, int major, int minor, int sms, long totalMemory, int driverVersion, CuContextHandle context)
    {
        Ordinal = ordinal;
        Name = name;
        ComputeCapabilityMajor = major;
        ComputeCapabilityMinor = minor;
        MultiprocessorCount = sms;
        TotalMemoryBytes = totalMemory;
        DriverVersion = driverVersion;
        Context = context;
    }

    public override string ToString() =>
        $"{Name} (device {Ordinal}, sm_{ComputeCapabilityMajor}{ComputeCapabilityMinor}, {MultiprocessorCount} SMs, " +
        $"{TotalMemoryBytes / (1L << 30)} GiB, driver CUDA {DriverVersion / 1000}.{DriverVersion % 1000 / 10})";

    // ---- opening ---------------------------------------------------------------------------------------------------

    /// <summary>
    /// Null when device <paramref name="ordinal"/> can be opened here; otherwise why not, in one sentence: no driver
    /// library, a stub library, an init failure, no device, a bad ordinal. Never throws for those, and opens nothing
    /// (cuInit and the device count only). This is how the codebase says "cannot run": a Why... query (null: it can)
    /// that the caller decides on and shows, beside the acting call (<see cref="Open"/>, a backend's constructor) that
    /// throws with the same sentence when asked anyway.
    /// </summary>
    public static string? WhyUnavailable(int ordinal)
    {
        if (CudaDriverProbe.WhyUnavailable(out int count, out _) is { } why) return why;
        return ordinal < 0 || ordinal >= count ? $"device {ordinal} does not exist: the driver reports {count} device(s)" : null;
    }

    /// <summary>
    /// Opens device <paramref name="ordinal"/> (cuInit, retain and make current its primary context). Throws
    /// InvalidOperationException("CUDA unavailable: ...") with <see cref="WhyUnavailable"/>'s sentence, or the driver's
    /// error when opening fails past that check.
    /// </summary>
    public static CudaDevice Open(int ordinal)
    {
        if (WhyUnavailable(ordinal) is { } why) throw new InvalidOperationException($"CUDA unavailable: {why}");
        try
        {
            return OpenCore(ordinal);
        }
        catch (Exception e) when (e is CudaException or ArgumentOutOfRangeException)
        {
            throw new InvalidOperationException($"CUDA unavailable: {e.Message}", e);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            throw new InvalidOperationException($"CUDA unavailable: {CuApi.Library} could not be used: {e.Message}", e);
        }
    }

    private static CudaDevice OpenCore(int ordinal)
    {
        Cu.Check(CuApi.cuInit(0));
        Cu.Check(CuApi.cuDriverGetVersion(out int driverVersion));
        Cu.Check(CuApi.cuDeviceGetCount(out int count));
        if (ordinal < 0 || ordinal >= count)
            throw new ArgumentOutOfRangeException(nameof(ordinal), ordinal, $"device {ordinal} does not exist: the driver reports {count} device(s)");
        Cu.Check(CuApi.cuDeviceGet(out int device, ordinal), ordinal);

        byte* nameBytes = stackalloc byte[256];
        Cu.Check(CuApi.cuDeviceGetName(nameBytes, 256, device), ordinal);
        string name = Marshal.PtrToStringUTF8((IntPtr)nameBytes) ?? $"device {ordinal}";
        Cu.Check(CuApi.cuDeviceGetAttribute(out int major, CuDeviceAttribute.ComputeCapabilityMajor, device), ordinal);
        Cu.Check(CuApi.cuDeviceGetAttribute(out int minor, CuDeviceAttribute.ComputeCapabilityMinor, device), ordinal);
        Cu.Check(CuApi.cuDeviceGetAttribute(out int sms, CuDeviceAttribute.MultiprocessorCount, device), ordinal);
        Cu.Check(CuApi.cuDeviceTotalMem(out nuint total, device), ordinal);

        Cu.Check(CuApi.cuDevicePrimaryCtxRetain(out IntPtr context, device), ordinal);
        var handle = new CuContextHandle(context, device);
        try
        {
            Cu.Check(CuApi.cuCtxSetCurrent(context), ordinal);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
        return new CudaDevice(ordinal, name, major, minor, sms, (long)total, driverVersion, handle);
    }

    // ---- context ---------------------------------------------------------------------------------------------------

    /// <summary>Makes this device's primary context current on the calling thread (cheap; call before driver work on
    /// a thread that may not have it current).</summary>
    public void MakeCurrent() => Cu.Check(CuApi.cuCtxSetCurrent(ContextPointer), Ordinal);

    public void Synchronize()
    {
        MakeCurrent();
        Cu.Check(CuApi.cuCtxSynchronize(), Ordinal);
    }

    public (long Free, long Total) GetMemoryInfo()
    {
        MakeCurrent();
        Cu.Check(CuApi.cuMemGetInfo(out nuint free, out nuint total), Ordinal);
        return ((long)free, (long)total);
    }

    private IntPtr ContextPointer
    {
        get
        {
            ObjectDisposedException.ThrowIf(Context.IsClosed, this);
            return Context.DangerousGetHandle();
        }
    }

    // ---- resources -------------------------------------------------------------------------------------------------

    /// <summary>cuMemAlloc of <paramref name="bytes"/> (> 0) bytes; out of memory throws with the size and free memory.</summary>
    public DeviceAllocationHandle Allocate(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bytes);
        MakeCurrent();
        var result = CuApi.cuMemAlloc(out ulong pointer, (nuint)bytes);
        if (result == CuResult.OutOfMemory)
        {
            CuApi.cuMemGetInfo(out nuint free, out nuint total);
            throw new CudaException(result, $"cuMemAlloc({bytes} bytes)", Ordinal, $"free {(long)free:N0} of {(long)total:N0} bytes");
        }
        Cu.Check(result, Ordinal);
        return new DeviceAllocationHandle(pointer, bytes, Context);
    }

    public PinnedHostHandle AllocatePinned(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bytes);
        MakeCurrent();
        Cu.Check(CuApi.cuMemAllocHost(out IntPtr pointer, (nuint)bytes), Ordinal);
        return new PinnedHostHandle(pointer, bytes, Context);
    }

    public CuStreamHandle CreateStream()
    {
        MakeCurrent();
        Cu.Check(CuApi.cuStreamCreate(out IntPtr stream, 0), Ordinal);
        return new CuStreamHandle(stream, Context);
    }

    // ---- CUDA graphs -------------------------------------------------------------------------------------------------

    /// <summary>
    /// Records everything <paramref name="enqueue"/> puts on <paramref name="stream"/> into a graph instead of running it,
    /// and instantiates it (thread-local capture mode: other threads may keep using the driver). Nothing is executed. If
    /// enqueueing or capturing fails, the capture is ended (the stream leaves capture mode), the partial graph is
    /// destroyed and the exception propagates.
    /// </summary>
    public CuGraphExecHandle CaptureGraph(CuStreamHandle stream, Action enqueue)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(enqueue);
        MakeCurrent();
        IntPtr s = stream.DangerousGetHandle();
        Cu.Check(CuApi.cuStreamBeginCapture(s, CuStreamCaptureMode.ThreadLocal), Ordinal);
        IntPtr raw = IntPtr.Zero;
        try
        {
            enqueue();
        }
        catch
        {
            // Leave capture mode whatever happened; the partial graph (if any) is discarded.
            if (CuApi.cuStreamEndCapture(s, out raw) == CuResult.Success && raw != IntPtr.Zero) CuApi.cuGraphDestroy(raw);
            throw;
        }
        Cu.Check(CuApi.cuStreamEndCapture(s, out raw), Ordinal);
        using var graph = new CuGraphHandle(raw, Context);
        Cu.Check(CuApi.cuGraphInstantiateWithFlags(out IntPtr exec, raw, 0), Ordinal);
        return new CuGraphExecHandle(exec, Context);
    }

    /// <summary>Enqueues an instantiated graph on <paramref name="stream"/>.</summary>
    public void LaunchGraph(CuGraphExecHandle graph, CuStreamHandle stream)
    {
        ArgumentNullException.ThrowIfNull(graph);
        ArgumentNullException.ThrowIfNull(stream);
        ObjectDisposedException.ThrowIf(graph.IsClosed, graph);
        Cu.Check(CuApi.cuGraphLaunch(graph.DangerousGetHandle(), stream.DangerousGetHandle()), Ordinal);
    }

    /// <summary>An event with timing enabled (flags 0 = CU_EVENT_DEFAULT).</summary>
    public CuEventHandle CreateEvent()
    {
        MakeCurrent();
        Cu.Check(CuApi.cuEventCreate(out IntPtr @event, 0), Ordinal);
        return new CuEventHandle(@event, Context);
    }

    /// <summary>
    /// Loads a cubin, PTX or fatbin image with cuModuleLoadDataEx. The driver's JIT error log (PTX compilation for an
    /// architecture without SASS in the image) goes into the exception instead of being lost.
    /// </summary>
    public CuModuleHandle LoadModule(ReadOnlySpan<byte> image)
    {
        if (image.IsEmpty) throw new ArgumentException("the module image is empty", nameof(image));
        MakeCurrent();
        const int LogBytes = 16 * 1024;
        byte* errorLog = (byte*)NativeMemory.AllocZeroed(LogBytes);
        try
        {
            CuJitOption* options = stackalloc CuJitOption[] { CuJitOption.ErrorLogBuffer, CuJitOption.ErrorLogBufferSizeBytes };
            // Option values are passed by value in the pointer slot; the driver writes the log length back into [1].
            void** values = stackalloc void*[] { errorLog, (void*)(nint)LogBytes };
            CuResult result;
            IntPtr module;
            fixed (byte* p = image) result = CuApi.cuModuleLoadDataEx(out module, p, 2, options, values);
            if (result != CuResult.Success)
            {
                int logLength = (int)Math.Clamp((nint)values[1], 0, LogBytes);
                string log = Encoding.UTF8.GetString(errorLog, logLength).TrimEnd('\0', '\n', ' ');
                string detail = $"image: {image.Length:N0} bytes; JIT error log: {(log.Length == 0 ? "(empty)" : "\n" + log)}";
                throw new CudaException(result, "cuModuleLoadDataEx(image)", Ordinal, detail);
            }
            return new CuModuleHandle(module, Context);
        }
        finally
        {
            NativeMemory.Free(errorLog);
        }
    }

    /// <summary>cuModuleGetFunction; a missing name throws with CUDA_ERROR_NOT_FOUND and the name in the call text.</summary>
    public IntPtr GetFunction(CuModuleHandle module, string name)
    {
        MakeCurrent();
        var result = CuApi.cuModuleGetFunction(out IntPtr function, module.DangerousGetHandle(), name);
        if (result != CuResult.Success) throw new CudaException(result, $"cuModuleGetFunction(\"{name}\")", Ordinal);
        return function;
    }

    /// <summary>cuModuleGetGlobal: the device address and size of a __device__/__constant__ variable.</summary>
    public (ulong Pointer, long Bytes) GetGlobal(CuModuleHandle module, string name)
    {
        MakeCurrent();
        var result = CuApi.cuModuleGetGlobal(out ulong pointer, out nuint bytes, module.DangerousGetHandle(), name);
        if (result != CuResult.Success) throw new CudaException(result, $"cuModuleGetGlobal(\"{name}\")", Ordinal);
        return (pointer, (long)bytes);
    }

    public void Dispose() => Context.Dispose();
}
