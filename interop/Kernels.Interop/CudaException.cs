// The one exception a failed driver call becomes: CUresult, the driver's name and description, the call text, the device.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Kernels.Interop;

public sealed class CudaException : Exception
{
    public CuResult Result { get; }
    /// <summary>The driver's name for <see cref="Result"/> (cuGetErrorName), e.g. CUDA_ERROR_OUT_OF_MEMORY.</summary>
    public string ErrorName { get; }
    /// <summary>The driver's description (cuGetErrorString), or ours when the driver cannot give one.</summary>
    public string ErrorString { get; }
    /// <summary>The source text of the failed call, captured by <see cref="Cu.Check"/>.</summary>
    public string Call { get; }
    /// <summary>The device ordinal the call was made for; -1 when it concerns no particular device (cuInit, ...).</summary>
    public int Device { get; }
    /// <summary>Extra text from the driver, such as the JIT error log of a module load; null when there is none.</summary>
    public string? Detail { get; }

    public CudaException(CuResult result, string call, int device = -1, string? detail = null)
        : this(result, call, device, detail, DriverName(result), DriverString(result)) { }

    private CudaException(CuResult result, string call, int device, string? detail, string name, string description)
        : base(Compose(result, call, device, detail, name, description))
    {
        Result = result;
        ErrorName = name;
        ErrorString = description;
        Call = call;
        Device = device;
        Detail = detail;
    }

    private static string Compose(CuResult result, string call, int device, string? detail, string name, string description)
    {
        string where = device >= 0 ? $" on device {device}" : "";
        string text = $"{name} ({(int)result}): {description}; in `{call}`{where}";
        return string.IsNullOrWhiteSpace(detail) ? text : $"{text}\n{detail.TrimEnd()}";
    }

    // The driver's own words when it can give them. The strings it returns are static (never freed). A missing
    // library must not turn an error report into a DllNotFoundException, so that case falls back to our names.
    private static unsafe string DriverName(CuResult result)
    {
        try
        {
            if (CuApi.cuGetErrorName(result, out byte* p) == CuResult.Success && p != null)
                return Marshal.PtrToStringUTF8((IntPtr)p) ?? CuResultNames.Name(result);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
        return CuResultNames.Name(result);
    }

    private static unsafe string DriverString(CuResult result)
    {
        try
        {
            if (CuApi.cuGetErrorString(result, out byte* p) == CuResult.Success && p != null)
                return Marshal.PtrToStringUTF8((IntPtr)p) ?? CuResultNames.FallbackDescription(result);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
        return CuResultNames.FallbackDescription(result);
    }
}

/// <summary>Every driver call goes through <see cref="Check"/> (STYLE habit 9).</summary>
public static class Cu
{
    /// <summary>Throws a <see cref="CudaException"/> naming the call when <paramref name="result"/> is not success.</summary>
    public static void Check(CuResult result, int device = -1, [CallerArgumentExpression(nameof(result))] string call = "")
    {
        if (result != CuResult.Success) throw new CudaException(result, call, device);
    }
}
