// Asks the CUDA driver (libcuda.so.1) whether a usable GPU exists, without ever crashing a process that has none.
using System.Runtime.InteropServices;

namespace Kernels.Interop;

public static class CudaDriverProbe
{
    /// <summary>Null when a device is usable; otherwise why not (no driver library, init failure, no device).</summary>
    public static string? WhyUnavailable(out int deviceCount, out int driverVersion)
    {
        deviceCount = 0;
        driverVersion = 0;
        if (!NativeLibrary.TryLoad(CuApi.Library, out var handle))
            return $"{CuApi.Library} not found (no NVIDIA driver on this machine)";
        NativeLibrary.Free(handle);
        try
        {
            var rc = CuApi.cuInit(0);
            if (rc != CuResult.Success) return $"cuInit failed: {Describe(rc)}";
            CuApi.cuDriverGetVersion(out driverVersion);
            rc = CuApi.cuDeviceGetCount(out deviceCount);
            if (rc != CuResult.Success) return $"cuDeviceGetCount failed: {Describe(rc)}";
            return deviceCount == 0 ? "the driver reports no CUDA device" : null;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return $"{CuApi.Library} could not be used: {e.Message}";
        }
    }

    private static string Describe(CuResult rc)
    {
        var e = new CudaException(rc, "", -1);
        return $"{e.ErrorName} ({(int)rc}): {e.ErrorString}";
    }
}
