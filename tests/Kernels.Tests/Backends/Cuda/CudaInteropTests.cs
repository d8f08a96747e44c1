// Kernels.Interop without a GPU: error reporting (CudaException, CuResult names), the graph imports' symbols, and opening a device that is not there.
using Kernels.Interop;

namespace Kernels.Tests.Backends.Cuda;

public class CudaInteropTests
{
    [Test]
    public void CudaExceptionCarriesNameDescriptionCallAndDevice()
    {
        var e = new CudaException(CuResult.OutOfMemory, "CuApi.cuMemAlloc(out p, 4096)", device: 3);
        Assert.Multiple(() =>
        {
            Assert.That(e.Result, Is.EqualTo(CuResult.OutOfMemory));
            Assert.That(e.ErrorName, Is.EqualTo("CUDA_ERROR_OUT_OF_MEMORY"));
            Assert.That(e.ErrorString, Is.Not.Empty);
            Assert.That(e.Call, Is.EqualTo("CuApi.cuMemAlloc(out p, 4096)"));
            Assert.That(e.Device, Is.EqualTo(3));
            Assert.That(e.Message, Does.Contain("CUDA_ERROR_OUT_OF_MEMORY (2)"));
            Assert.That(e.Message, Does.Contain(e.ErrorString));
            Assert.That(e.Message, Does.Contain("`CuApi.cuMemAlloc(out p, 4096)`"));
            Assert.That(e.Message, Does.Contain("on device 3"));
        });
    }

    [Test]
    public void CudaExceptionPutsTheJitLogIntoTheMessage()
    {
        var e = new CudaException(CuResult.InvalidPtx, "cuModuleLoadDataEx(image)", 0, "ptxas fatal: Unresolved extern function 'foo'");
        Assert.That(e.Message, Does.Contain("CUDA_ERROR_INVALID_PTX (218)"));
        Assert.That(e.Message, Does.Contain("ptxas fatal: Unresolved extern function 'foo'"));
        Assert.That(e.Detail, Does.Contain("Unresolved extern"));
    }

    [Test]
    public void CheckCapturesTheCallTextAndPassesSuccess()
    {
        Assert.DoesNotThrow(() => Cu.Check(CuResult.Success));
        var e = Assert.Throws<CudaException>(() => Cu.Check(Fails(CuResult.NoBinaryForGpu), 1))!;
        Assert.That(e.Call, Is.EqualTo("Fails(CuResult.NoBinaryForGpu)"));
        Assert.That(e.Result, Is.EqualTo(CuResult.NoBinaryForGpu));
        Assert.That(e.Message, Does.Contain("CUDA_ERROR_NO_BINARY_FOR_GPU (209)").And.Contain("on device 1"));
    }

    private static CuResult Fails(CuResult result) => result;

    [TestCase(CuResult.Success, "CUDA_SUCCESS")]
    [TestCase(CuResult.InvalidValue, "CUDA_ERROR_INVALID_VALUE")]
    [TestCase(CuResult.NotInitialized, "CUDA_ERROR_NOT_INITIALIZED")]
    [TestCase(CuResult.StubLibrary, "CUDA_ERROR_STUB_LIBRARY")]
    [TestCase(CuResult.NoDevice, "CUDA_ERROR_NO_DEVICE")]
    [TestCase(CuResult.InvalidImage, "CUDA_ERROR_INVALID_IMAGE")]
    [TestCase(CuResult.NoBinaryForGpu, "CUDA_ERROR_NO_BINARY_FOR_GPU")]
    [TestCase(CuResult.InvalidPtx, "CUDA_ERROR_INVALID_PTX")]
    [TestCase(CuResult.NotFound, "CUDA_ERROR_NOT_FOUND")]
    [TestCase(CuResult.IllegalAddress, "CUDA_ERROR_ILLEGAL_ADDRESS")]
    [TestCase(CuResult.LaunchOutOfResources, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES")]
    [TestCase(CuResult.Unknown, "CUDA_ERROR_UNKNOWN")]
    public void CuResultNamesMatchCudaH(CuResult result, string name)
    {
        Assert.That(CuResultNames.Name(result), Is.EqualTo(name));
    }

    [Test]
    public void GraphImportsBindTheDriversSymbolsAndEnumValues()
    {
        // cuda.h (11.8 and 12.x): cuStreamBeginCapture is #defined to cuStreamBeginCapture_v2, the rest are unversioned.
        var bound = typeof(CuApi).GetMethods(System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Static)
            .Select(m => (m.Name, Attr: m.GetCustomAttributes(typeof(System.Runtime.InteropServices.LibraryImportAttribute), false)
                .Cast<System.Runtime.InteropServices.LibraryImportAttribute>().SingleOrDefault()))
            .Where(x => x.Attr != null)
            .ToDictionary(x => x.Name, x => x.Attr!.EntryPoint ?? x.Name);
        var expected = new Dictionary<string, string>
        {
            ["cuStreamBeginCapture"] = "cuStreamBeginCapture_v2",
            ["cuStreamEndCapture"] = "cuStreamEndCapture",
            ["cuStreamIsCapturing"] = "cuStreamIsCapturing",
            ["cuGraphInstantiateWithFlags"] = "cuGraphInstantiateWithFlags",
            ["cuGraphLaunch"] = "cuGraphLaunch",
            ["cuGraphExecDestroy"] = "cuGraphExecDestroy",
            ["cuGraphDestroy"] = "cuGraphDestroy",
            ["cuProfilerStart"] = "cuProfilerStart", // cudaProfiler.h, unversioned
            ["cuProfilerStop"] = "cuProfilerStop",
        };
        foreach (var (method, symbol) in expected)
        {
            Assert.That(bound.ContainsKey(method), $"CuApi.{method} is not imported");
            Assert.That(bound[method], Is.EqualTo(symbol), method);
        }
        Assert.That(((int)CuStreamCaptureMode.Global, (int)CuStreamCaptureMode.ThreadLocal, (int)CuStreamCaptureMode.Relaxed), Is.EqualTo((0, 1, 2)));
        Assert.That(((int)CuStreamCaptureStatus.None, (int)CuStreamCaptureStatus.Active, (int)CuStreamCaptureStatus.Invalidated), Is.EqualTo((0, 1, 2)));
    }

    [Test]
    public void UnknownCuResultIsNamedByNumber()
    {
        Assert.That(CuResultNames.Name((CuResult)12345), Is.EqualTo("CUresult 12345"));
        Assert.That(new CudaException((CuResult)12345, "x()").Message, Does.Contain("12345"));
    }

    [Test]
    public void EveryCuResultValueHasTheDriversName()
    {
        // cuGetErrorName needs no cuInit and no device, so any installed driver (even one without a GPU) can confirm
        // that the enum's values are the driver's codes.
        string? driverName = DriverErrorName(CuResult.NoDevice, out string? why);
        if (driverName == null) Assert.Ignore($"no CUDA driver library to compare against: {why}");
        var wrong = Enum.GetValues<CuResult>()
            .Select(r => (Result: r, Ours: CuResultNames.Name(r), Driver: DriverErrorName(r, out _)))
            .Where(x => x.Ours != x.Driver).Select(x => $"{x.Result} = {(int)x.Result}: ours {x.Ours}, driver {x.Driver}").ToList();
        Assert.That(wrong, Is.Empty);
    }

    private static unsafe string? DriverErrorName(CuResult result, out string? why)
    {
        why = null;
        try
        {
            var rc = CuApi.cuGetErrorName(result, out byte* name);
            if (rc != CuResult.Success) return $"(cuGetErrorName failed: {rc})";
            return System.Runtime.InteropServices.Marshal.PtrToStringUTF8((IntPtr)name);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            why = e.Message;
            return null;
        }
    }

    [Test]
    public void AskingForADeviceNeverThrowsAndSaysWhyNot()
    {
        string? why = null;
        Assert.DoesNotThrow(() => why = CudaDevice.WhyUnavailable(0));
        if (why != null)
        {
            // This machine: a driver library that finds no GPU (CUDA_ERROR_NO_DEVICE from cuInit), a stub, or none.
            Assert.That(why, Is.Not.Empty);
            Assert.That(why, Does.Contain("CUDA_ERROR_").Or.Contain("not found").Or.Contain("could not be used").Or.Contain("no CUDA device"));
            var e = Assert.Throws<InvalidOperationException>(() => CudaDevice.Open(0))!;
            Assert.That(e.Message, Is.EqualTo($"CUDA unavailable: {why}"));
        }
        else
        {
            using var device = CudaDevice.Open(0);
            Assert.That(device.Name, Is.Not.Empty);
            Assert.That(device.ComputeCapabilityMajor, Is.GreaterThanOrEqualTo(5));
        }
    }

    [Test]
    public void ANegativeOrdinalIsReportedNotThrown()
    {
        string? why = CudaDevice.WhyUnavailable(-1);
        Assert.That(why, Is.Not.Null.And.Not.Empty);
        Assert.That(Assert.Throws<InvalidOperationException>(() => CudaDevice.Open(-1))!.Message, Does.StartWith("CUDA unavailable: "));
    }

    [Test]
    public void DriverProbeAgreesWithOpeningADevice()
    {
        // The probe (what `kernels info` and backend selection ask) must say "usable" exactly when device 0 opens.
        string? why = CudaDriverProbe.WhyUnavailable(out int count, out int version);
        CudaDevice? device = null;
        string? openWhy = null;
        try
        {
            device = CudaDevice.Open(0);
        }
        catch (InvalidOperationException e)
        {
            openWhy = e.Message;
        }
        using var _ = device;
        if (why == null)
        {
            Assert.That(count, Is.GreaterThanOrEqualTo(1), "usable: the driver counts a device");
            Assert.That(version, Is.GreaterThan(0), "usable: the driver reported its version (1000 * major + 10 * minor)");
            Assert.That(device, Is.Not.Null, $"the probe says usable but device 0 did not open: {openWhy}");
        }
        else
        {
            Assert.That(why, Does.Contain("not found").Or.Contain("failed").Or.Contain("no CUDA device").Or.Contain("could not be used"));
            Assert.That(device, Is.Null, $"the probe says '{why}' but device 0 opened");
            if (why.Contains("not found")) Assert.That((count, version), Is.EqualTo((0, 0)), "no driver library: nothing was queried");
        }
    }
}
