// Asks the CUDA driver (libcuda.so.1) whether a usable GPU exists, without ever crashing a process that has none.
using System.Runtime.InteropServices;

namespace Kernels.Interop;

public static partial class CudaDriverProbe
{
    private const string Library = "libcuda.so.1";

    [LibraryImport(Library)]
    private static partial int cuInit(uint flags);

    [LibraryImport(Library)]
    private static partial int cuDeviceGetCount(out int count);

    [LibraryImport(Library)]
    private static partial int cuDriverGetVersion(out int version);

    /// <summary>The CUresult names a machine without a usable GPU most often reports.</summary>
    private static string ResultName(int code) => code switch
    {
        3 => "CUDA_ERROR_NOT_INITIALIZED (3)",
        34 => "CUDA_ERROR_STUB_LIBRARY (34): libcuda.so.1 is the toolkit's stub, not a driver",
        35 => "CUDA_ERROR_INSUFFICIENT_DRIVER (35)",
        100 => "CUDA_ERROR_NO_DEVICE (100): no CUDA-capable device",
        101 => "CUDA_ERROR_INVALID_DEVICE (101)",
        999 => "CUDA_ERROR_UNKNOWN (999)",
        _ => $"CUresult {code}",
    };

    /// <summary>Null when a device is usable; otherwise why not (no driver library, init failure, no device).</summary>
    public static string? WhyUnavailable(out int deviceCount, out int driverVersion)
    {
        deviceCount = 0;
        driverVersion = 0;
        if (!NativeLibrary.TryLoad(Library, out var handle))
            return $"{Library} not found (no NVIDIA driver on this machine)";
        NativeLibrary.Free(handle);
        try
        {
            int rc = cuInit(0);
            if (rc != 0) return $"cuInit failed: {ResultName(rc)}";
            cuDriverGetVersion(out driverVersion);
            rc = cuDeviceGetCount(out deviceCount);
            if (rc != 0) return $"cuDeviceGetCount failed: {ResultName(rc)}";
            return deviceCount == 0 ? "the driver reports no CUDA device" : null;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return $"{Library} could not be used: {e.Message}";
        }
    }
}
