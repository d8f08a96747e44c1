// What every GPU suite of kernels-bench starts with: the device and the fatbin (or a printed reason and exit code 2),
// and the device-to-device copy bandwidth that their rooflines divide by.
using Kernels.Interop;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cuda;

namespace Kernels.Bench;

internal static class GpuBench
{
    /// <summary>
    /// Opens device <paramref name="ordinal"/> and reads the fatbin (<paramref name="fatbinPath"/>, else the embedded
    /// one). Null, with the reason printed, when either is missing; the caller exits with 2.
    /// </summary>
    public static (CudaDevice Device, byte[] Image)? Open(string? fatbinPath, int ordinal)
    {
        CudaDevice device;
        try
        {
            device = CudaDevice.Open(ordinal);
        }
        catch (InvalidOperationException e) // "CUDA unavailable: <why>" (CudaDevice.WhyUnavailable, or the driver's error past it)
        {
            Console.WriteLine(e.Message);
            return null;
        }
        byte[]? image = fatbinPath != null ? File.ReadAllBytes(fatbinPath) : KernelImage.Load();
        if (image == null)
        {
            device.Dispose();
            Console.WriteLine($"kernels unavailable: no embedded fatbin ({KernelImage.Describe()}); pass --fatbin PATH");
            return null;
        }
        return (device, image);
    }

    /// <summary>cuMemcpyDtoD of 1 GiB, best of 5 after a warm-up copy: bytes read + written per second (GPU.md's 4.28 TB/s measure).</summary>
    public static double CopyBandwidthGBps(CudaDevice device)
    {
        const long Bytes = 1L << 30;
        using var a = DeviceBuffer<byte>.Allocate(device, Bytes);
        using var b = DeviceBuffer<byte>.Allocate(device, Bytes);
        a.FillBytes(1);
        using var start = device.CreateEvent();
        using var stop = device.CreateEvent();
        double best = double.MaxValue;
        for (int i = 0; i < 6; i++)
        {
            Cu.Check(CuApi.cuEventRecord(start.DangerousGetHandle(), IntPtr.Zero));
            Cu.Check(CuApi.cuMemcpyDtoD(b.Pointer, a.Pointer, (nuint)Bytes));
            Cu.Check(CuApi.cuEventRecord(stop.DangerousGetHandle(), IntPtr.Zero));
            Cu.Check(CuApi.cuEventSynchronize(stop.DangerousGetHandle()));
            Cu.Check(CuApi.cuEventElapsedTime(out float ms, start.DangerousGetHandle(), stop.DangerousGetHandle()));
            if (i > 0) best = Math.Min(best, ms * 1e-3); // the first copy warms up
        }
        return 2.0 * Bytes / best / 1e9;
    }
}
