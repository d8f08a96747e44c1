// The loaded kernels.fatbin: ABI handshake at load, CUfunction lookup by name (cached), unload on dispose.
using System.Collections.Concurrent;
using Kernels.Interop;

namespace Kernels.Runtime.Backends.Cuda;

internal sealed class KernelModule : IDisposable
{
    private readonly CuModuleHandle _module;
    private readonly ConcurrentDictionary<string, IntPtr> _functions = new(StringComparer.Ordinal);

    public CudaDevice Device { get; }
    /// <summary>Where the image came from ("embedded", or the path it was read from), for reports.</summary>
    public string Source { get; }
    public int ImageBytes { get; }

    private KernelModule(CudaDevice device, CuModuleHandle module, string source, int imageBytes)
    {
        Device = device;
        _module = module;
        Source = source;
        ImageBytes = imageBytes;
    }

    /// <summary>Loads the fatbin embedded in this assembly (KernelImage); throws when this build has none.</summary>
    public static KernelModule Load(CudaDevice device) =>
        Load(device, KernelImage.Load() ?? throw new InvalidOperationException(
            $"this runtime has no embedded fatbin: {KernelImage.Describe()}"), "embedded");

    /// <summary>
    /// Loads <paramref name="image"/> (a fatbin, cubin or PTX) and checks its kernels_abi_version against
    /// <see cref="KernelAbi.Version"/>; a mismatch throws InvalidOperationException naming both versions.
    /// </summary>
    public static KernelModule Load(CudaDevice device, byte[] image, string source)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(image);
        var handle = device.LoadModule(image);
        var module = new KernelModule(device, handle, source, image.Length);
        try
        {
            int version = module.ReadAbiVersion();
            if (version != KernelAbi.Version)
                throw new InvalidOperationException(
                    $"kernel image ({source}) has {KernelAbi.VersionSymbol} = {version}, but this runtime's launchers were written " +
                    $"for ABI version {KernelAbi.Version}: rebuild the kernels and the runtime from the same commit");
            return module;
        }
        catch
        {
            module.Dispose();
            throw;
        }
    }

    private unsafe int ReadAbiVersion()
    {
        var (pointer, bytes) = Device.GetGlobal(_module, KernelAbi.VersionSymbol);
        if (bytes != sizeof(int))
            throw new InvalidOperationException($"{KernelAbi.VersionSymbol} in the kernel image ({Source}) is {bytes} bytes, expected an int (4)");
        int version;
        Cu.Check(CuApi.cuMemcpyDtoH(&version, pointer, sizeof(int)), Device.Ordinal);
        return version;
    }

    /// <summary>The CUfunction of exported kernel <paramref name="name"/>, looked up once.</summary>
    public IntPtr Function(string name)
    {
        ObjectDisposedException.ThrowIf(_module.IsClosed, this);
        return _functions.GetOrAdd(name, n => Device.GetFunction(_module, n));
    }

    private readonly ConcurrentDictionary<string, int> _sharedLimits = new(StringComparer.Ordinal);

    /// <summary>
    /// Raises <paramref name="name"/>'s dynamic shared memory limit to at least <paramref name="bytes"/>
    /// (cuFuncSetAttribute MAX_DYNAMIC_SHARED_SIZE_BYTES, once per function and size): launches above 48 KiB need it.
    /// </summary>
    public void AllowSharedBytes(string name, IntPtr function, int bytes)
    {
        if (_sharedLimits.TryGetValue(name, out int have) && have >= bytes) return;
        Device.MakeCurrent();
        Cu.Check(CuApi.cuFuncSetAttribute(function, CuFunctionAttribute.MaxDynamicSharedSizeBytes, bytes), Device.Ordinal);
        _sharedLimits[name] = bytes;
    }

    public void Dispose()
    {
        _functions.Clear();
        _module.Dispose();
    }
}
