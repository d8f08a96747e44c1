// Every import from the CUDA driver (libcuda.so.1) in one place: raw, typed signatures, no logic.
//
// Types: CUdevice = int ordinal, CUdeviceptr = ulong (64-bit on every platform we run on), every other CUDA handle
// (CUcontext, CUmodule, CUfunction, CUstream, CUevent, CUgraph, CUgraphExec) = IntPtr, owned by the SafeHandles in CuHandles.cs.
// Entry points: where cuda.h #defines a name to a versioned symbol (cuMemAlloc -> cuMemAlloc_v2, ...), the import
// binds the versioned symbol, because the unversioned one is the legacy 32-bit-pointer ABI kept for old binaries
// (`nm -D libcuda.so.1` lists both). The library is resolved on the first call, not at type load: a process
// without a driver only sees a DllNotFoundException when it actually calls in, which CudaDriverProbe (and so
// CudaDevice.WhyUnavailable) turns into a reason string.
using System.Runtime.InteropServices;

namespace Kernels.Interop;

/// <summary>CUdevice_attribute values used here (cuda.h).</summary>
public enum CuDeviceAttribute
{
    MaxThreadsPerBlock = 1,
    MaxGridDimX = 5,
    MaxGridDimY = 6,
    MaxSharedMemoryPerBlock = 8,
    MultiprocessorCount = 16,
    ComputeCapabilityMajor = 75,
    ComputeCapabilityMinor = 76,
}

/// <summary>CUfunction_attribute values used here (cuda.h).</summary>
public enum CuFunctionAttribute
{
    /// <summary>The most dynamic shared memory a launch may ask for; above 48 KiB it must be raised before launching.</summary>
    MaxDynamicSharedSizeBytes = 8,
}

/// <summary>CUjit_option values used when loading a module (cuda.h).</summary>
public enum CuJitOption
{
    InfoLogBuffer = 3,
    InfoLogBufferSizeBytes = 4,
    ErrorLogBuffer = 5,
    ErrorLogBufferSizeBytes = 6,
}

/// <summary>CUstreamCaptureMode (cuda.h): which other threads' unsafe API calls a capture forbids.</summary>
public enum CuStreamCaptureMode
{
    Global = 0,
    ThreadLocal = 1,
    Relaxed = 2,
}

/// <summary>CUstreamCaptureStatus (cuda.h).</summary>
public enum CuStreamCaptureStatus
{
    None = 0,
    Active = 1,
    Invalidated = 2,
}

public static unsafe partial class CuApi
{
    public const string Library = "libcuda.so.1";

    // ---- init, driver, devices ------------------------------------------------------------------------------------
    [LibraryImport(Library)] public static partial CuResult cuInit(uint flags);
    [LibraryImport(Library)] public static partial CuResult cuDriverGetVersion(out int version);
    [LibraryImport(Library)] public static partial CuResult cuDeviceGetCount(out int count);
    [LibraryImport(Library)] public static partial CuResult cuDeviceGet(out int device, int ordinal);
    [LibraryImport(Library)] public static partial CuResult cuDeviceGetName(byte* name, int length, int device);
    [LibraryImport(Library)] public static partial CuResult cuDeviceGetAttribute(out int value, CuDeviceAttribute attribute, int device);
    [LibraryImport(Library, EntryPoint = "cuDeviceTotalMem_v2")] public static partial CuResult cuDeviceTotalMem(out nuint bytes, int device);

    // ---- errors (these two work before cuInit) -------------------------------------------------------------------
    [LibraryImport(Library)] public static partial CuResult cuGetErrorName(CuResult error, out byte* name);
    [LibraryImport(Library)] public static partial CuResult cuGetErrorString(CuResult error, out byte* description);

    // ---- primary context -------------------------------------------------------------------------------------------
    [LibraryImport(Library)] public static partial CuResult cuDevicePrimaryCtxRetain(out IntPtr context, int device);
    [LibraryImport(Library, EntryPoint = "cuDevicePrimaryCtxRelease_v2")] public static partial CuResult cuDevicePrimaryCtxRelease(int device);
    [LibraryImport(Library)] public static partial CuResult cuCtxSetCurrent(IntPtr context);
    [LibraryImport(Library)] public static partial CuResult cuCtxSynchronize();

    // ---- modules ---------------------------------------------------------------------------------------------------
    [LibraryImport(Library)]
    public static partial CuResult cuModuleLoadDataEx(out IntPtr module, void* image, uint numOptions, CuJitOption* options, void** optionValues);
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial CuResult cuModuleGetFunction(out IntPtr function, IntPtr module, string name);
    [LibraryImport(Library, EntryPoint = "cuModuleGetGlobal_v2", StringMarshalling = StringMarshalling.Utf8)]
    public static partial CuResult cuModuleGetGlobal(out ulong pointer, out nuint bytes, IntPtr module, string name);
    [LibraryImport(Library)] public static partial CuResult cuModuleUnload(IntPtr module);
    [LibraryImport(Library)] public static partial CuResult cuFuncSetAttribute(IntPtr function, CuFunctionAttribute attribute, int value);

    // ---- memory ----------------------------------------------------------------------------------------------------
    [LibraryImport(Library, EntryPoint = "cuMemAlloc_v2")] public static partial CuResult cuMemAlloc(out ulong pointer, nuint bytes);
    [LibraryImport(Library, EntryPoint = "cuMemFree_v2")] public static partial CuResult cuMemFree(ulong pointer);
    [LibraryImport(Library, EntryPoint = "cuMemAllocHost_v2")] public static partial CuResult cuMemAllocHost(out IntPtr pointer, nuint bytes);
    [LibraryImport(Library)] public static partial CuResult cuMemFreeHost(IntPtr pointer);
    [LibraryImport(Library, EntryPoint = "cuMemGetInfo_v2")] public static partial CuResult cuMemGetInfo(out nuint free, out nuint total);
    [LibraryImport(Library, EntryPoint = "cuMemcpyHtoD_v2")] public static partial CuResult cuMemcpyHtoD(ulong destination, void* source, nuint bytes);
    [LibraryImport(Library, EntryPoint = "cuMemcpyDtoH_v2")] public static partial CuResult cuMemcpyDtoH(void* destination, ulong source, nuint bytes);
    [LibraryImport(Library, EntryPoint = "cuMemcpyDtoD_v2")] public static partial CuResult cuMemcpyDtoD(ulong destination, ulong source, nuint bytes);
    [LibraryImport(Library, EntryPoint = "cuMemcpyHtoDAsync_v2")] public static partial CuResult cuMemcpyHtoDAsync(ulong destination, void* source, nuint bytes, IntPtr stream);
    [LibraryImport(Library, EntryPoint = "cuMemcpyDtoHAsync_v2")] public static partial CuResult cuMemcpyDtoHAsync(void* destination, ulong source, nuint bytes, IntPtr stream);
    [LibraryImport(Library, EntryPoint = "cuMemcpyDtoDAsync_v2")] public static partial CuResult cuMemcpyDtoDAsync(ulong destination, ulong source, nuint bytes, IntPtr stream);
    [LibraryImport(Library, EntryPoint = "cuMemsetD8_v2")] public static partial CuResult cuMemsetD8(ulong destination, byte value, nuint count);

    // ---- profiler (cudaProfiler.h): the range a profiler started with --profile-from-start off records ------------
    [LibraryImport(Library)] public static partial CuResult cuProfilerStart();
    [LibraryImport(Library)] public static partial CuResult cuProfilerStop();

    // ---- streams and events ----------------------------------------------------------------------------------------
    [LibraryImport(Library)] public static partial CuResult cuStreamCreate(out IntPtr stream, uint flags);
    [LibraryImport(Library, EntryPoint = "cuStreamDestroy_v2")] public static partial CuResult cuStreamDestroy(IntPtr stream);
    [LibraryImport(Library)] public static partial CuResult cuStreamSynchronize(IntPtr stream);
    [LibraryImport(Library)] public static partial CuResult cuEventCreate(out IntPtr @event, uint flags);
    [LibraryImport(Library)] public static partial CuResult cuEventRecord(IntPtr @event, IntPtr stream);
    [LibraryImport(Library)] public static partial CuResult cuEventSynchronize(IntPtr @event);
    [LibraryImport(Library)] public static partial CuResult cuEventElapsedTime(out float milliseconds, IntPtr start, IntPtr end);
    [LibraryImport(Library, EntryPoint = "cuEventDestroy_v2")] public static partial CuResult cuEventDestroy(IntPtr @event);

    // ---- CUDA graphs (stream capture) -------------------------------------------------------------------------------
    // cuda.h maps cuStreamBeginCapture to cuStreamBeginCapture_v2 (the _v1 symbol took no mode); the other graph entry
    // points are unversioned in CUDA 11.8 and 12.x (the _ptsz variants are for per-thread default streams only).
    [LibraryImport(Library, EntryPoint = "cuStreamBeginCapture_v2")] public static partial CuResult cuStreamBeginCapture(IntPtr stream, CuStreamCaptureMode mode);
    [LibraryImport(Library)] public static partial CuResult cuStreamEndCapture(IntPtr stream, out IntPtr graph);
    [LibraryImport(Library)] public static partial CuResult cuStreamIsCapturing(IntPtr stream, out CuStreamCaptureStatus status);
    [LibraryImport(Library)] public static partial CuResult cuGraphInstantiateWithFlags(out IntPtr graphExec, IntPtr graph, ulong flags);
    [LibraryImport(Library)] public static partial CuResult cuGraphLaunch(IntPtr graphExec, IntPtr stream);
    [LibraryImport(Library)] public static partial CuResult cuGraphExecDestroy(IntPtr graphExec);
    [LibraryImport(Library)] public static partial CuResult cuGraphDestroy(IntPtr graph);

    // ---- launch ----------------------------------------------------------------------------------------------------
    /// <summary>kernelParams: one pointer per kernel argument, each pointing at that argument's value.</summary>
    [LibraryImport(Library)]
    public static partial CuResult cuLaunchKernel(IntPtr function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedMemBytes, IntPtr stream, void** kernelParams, void** extra);
}
