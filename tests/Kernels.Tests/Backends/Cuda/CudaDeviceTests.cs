// On a machine with a GPU: the embedded fatbin loads, passes the ABI handshake, and one kernel round-trips through
// DeviceBuffer and OpsLauncher. Elsewhere these tests are ignored with the reason (kernels-bench verify does the parity).
using Kernels.Interop;
using Kernels.Runtime.Backends.Cuda;

namespace Kernels.Tests.Backends.Cuda;

public class CudaDeviceTests
{
    private static CudaDevice OpenOrIgnore() =>
        CudaDevice.WhyUnavailable(0) is { } why ? throw new IgnoreException($"no CUDA device: {why}") : CudaDevice.Open(0);

    [Test]
    public void EmbeddedFatbinLoadsAndEveryExportResolves()
    {
        using var device = OpenOrIgnore();
        using var module = KernelModule.Load(device);
        foreach (var name in File.ReadAllLines(KernelAbiTests.RepoFile("kernels/exports.txt")).Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')))
            Assert.That(module.Function(name), Is.Not.EqualTo(IntPtr.Zero), name);
        var e = Assert.Throws<CudaException>(() => module.Function("no_such_kernel"))!;
        Assert.That(e.Result, Is.EqualTo(CuResult.NotFound));
    }

    [Test]
    public void ResidualAddRoundTripsAndBuffersAreBoundsChecked()
    {
        using var device = OpenOrIgnore();
        using var module = KernelModule.Load(device);
        var ops = new OpsLauncher(module);
        float[] x = Enumerable.Range(0, 1027).Select(i => (float)i).ToArray();
        float[] y = Enumerable.Range(0, 1027).Select(i => 0.5f * i).ToArray();
        using var dx = DeviceBuffer<float>.From(device, x);
        using var dy = DeviceBuffer<float>.From(device, y);
        ops.ResidualAddF32(dx, dy, x.Length);
        device.Synchronize();
        Assert.That(dx.ToArray(), Is.EqualTo(x.Zip(y, (a, b) => a + b).ToArray()));
        Assert.Throws<ArgumentOutOfRangeException>(() => dx.CopyFrom(new float[1028]));
        Assert.Throws<ArgumentOutOfRangeException>(() => dx.CopyTo(new float[2], 1026));
        var before = device.GetMemoryInfo().Free;
        for (int i = 0; i < 20; i++) DeviceBuffer<float>.Allocate(device, 1 << 24).Dispose();
        Assert.That(device.GetMemoryInfo().Free, Is.GreaterThanOrEqualTo(before - (64L << 20)), "64 MiB allocations freed on dispose");
    }
}
