// CUresult, the status every CUDA driver call returns, and its driver-style names (CUDA_ERROR_...) without a driver.
namespace Kernels.Interop;

/// <summary>
/// The common CUresult codes (cuda.h). Values are the driver's; members are the CUDA names in PascalCase without the
/// CUDA_ERROR_ prefix, so <see cref="CuResultNames.Name"/> can rebuild the driver's name when no driver is loaded.
/// </summary>
public enum CuResult
{
    Success = 0,
    InvalidValue = 1,
    OutOfMemory = 2,
    NotInitialized = 3,
    Deinitialized = 4,
    StubLibrary = 34,
    DeviceUnavailable = 46,
    NoDevice = 100,
    InvalidDevice = 101,
    DeviceNotLicensed = 102,
    InvalidImage = 200,
    InvalidContext = 201,
    NoBinaryForGpu = 209,
    UnsupportedLimit = 215,
    InvalidPtx = 218,
    JitCompilerNotFound = 221,
    UnsupportedPtxVersion = 222,
    InvalidSource = 300,
    FileNotFound = 301,
    SharedObjectSymbolNotFound = 302,
    SharedObjectInitFailed = 303,
    OperatingSystem = 304,
    InvalidHandle = 400,
    IllegalState = 401,
    NotFound = 500,
    NotReady = 600,
    IllegalAddress = 700,
    LaunchOutOfResources = 701,
    LaunchTimeout = 702,
    PrimaryContextActive = 708,
    ContextIsDestroyed = 709,
    Assert = 710,
    IllegalInstruction = 715,
    MisalignedAddress = 716,
    InvalidAddressSpace = 717,
    InvalidPc = 718,
    LaunchFailed = 719,
    NotPermitted = 800,
    NotSupported = 801,
    SystemNotReady = 802,
    SystemDriverMismatch = 803,
    Unknown = 999,
}

public static class CuResultNames
{
    /// <summary>The cuda.h name: CUDA_SUCCESS, CUDA_ERROR_NO_DEVICE, ...; codes this enum lacks give "CUresult n".</summary>
    public static string Name(CuResult result)
    {
        if (result == CuResult.Success) return "CUDA_SUCCESS";
        if (!Enum.IsDefined(result)) return $"CUresult {(int)result}";
        var member = result.ToString();
        var snake = new System.Text.StringBuilder("CUDA_ERROR_", 40);
        for (int i = 0; i < member.Length; i++)
        {
            if (i > 0 && char.IsUpper(member[i])) snake.Append('_');
            snake.Append(char.ToUpperInvariant(member[i]));
        }
        return snake.ToString();
    }

    /// <summary>A short description for the codes a machine without a usable GPU reports, used when the driver cannot
    /// describe itself (library missing, or cuGetErrorString failing).</summary>
    internal static string FallbackDescription(CuResult result) => result switch
    {
        CuResult.StubLibrary => "libcuda.so.1 is the toolkit's stub library, not a driver",
        CuResult.NoDevice => "no CUDA-capable device is detected",
        CuResult.OutOfMemory => "out of device memory",
        CuResult.NotInitialized => "cuInit has not been called",
        _ => "no description available",
    };
}
