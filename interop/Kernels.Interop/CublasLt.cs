// cuBLASLt's matmul API (cublasLt.h), bound by function pointer from the library CublasLtLibrary found: its path is
// decided at run time, so [LibraryImport] cannot name it. Every descriptor is a SafeHandle released with its destroy
// function; every call's status is checked and a failure names the function and the status. Descriptors and layouts
// need no GPU (tests create them here); a handle and the heuristics need a device with a current context.
using System.Runtime.InteropServices;

namespace Kernels.Interop;

/// <summary>cublasStatus_t (cublas_api.h).</summary>
public enum CublasStatus
{
    Success = 0,
    NotInitialized = 1,
    AllocFailed = 3,
    InvalidValue = 7,
    ArchMismatch = 8,
    MappingError = 11,
    ExecutionFailed = 13,
    InternalError = 14,
    NotSupported = 15,
    LicenseError = 16,
}

/// <summary>A cuBLASLt call that returned something other than CUBLAS_STATUS_SUCCESS.</summary>
public sealed class CublasException(CublasStatus status, string call)
    : Exception($"{call} failed: {Name(status)} ({(int)status})")
{
    public CublasStatus Status { get; } = status;

    /// <summary>cublas_api.h's name for a status, or the number for one it does not list.</summary>
    public static string Name(CublasStatus status) => Enum.IsDefined(status)
        ? "CUBLAS_STATUS_" + string.Concat(status.ToString().Select((c, i) => char.IsUpper(c) && i > 0 ? "_" + c : char.ToUpperInvariant(c).ToString()))
        : $"cublasStatus_t {(int)status}";
}

/// <summary>cudaDataType_t values (library_types.h) the GEMMs use.</summary>
public enum CudaDataType
{
    R32F = 0,
    R16F = 2,
    R16BF = 14,
}

/// <summary>The entry points, resolved once from <see cref="CublasLtLibrary.Load"/>.</summary>
public static unsafe class CublasLtApi
{
    // cublas_api.h / cublasLt.h constants.
    public const int ComputeType32F = 68;        // CUBLAS_COMPUTE_32F
    public const int OpN = 0, OpT = 1;            // CUBLAS_OP_N, CUBLAS_OP_T
    public const int DescTransA = 3;             // CUBLASLT_MATMUL_DESC_TRANSA (int32)
    public const int DescTransB = 4;             // CUBLASLT_MATMUL_DESC_TRANSB (int32)
    public const int PrefMaxWorkspaceBytes = 1;  // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES (uint64)
    /// <summary>sizeof(cublasLtMatmulAlgo_t): 8 x uint64.</summary>
    public const int AlgoBytes = 64;

    /// <summary>cublasLtMatmulHeuristicResult_t: algo, workspaceSize, state, wavesCount, reserved[4] (96 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct HeuristicResult
    {
        public Algo Algorithm;
        public nuint WorkspaceSize;
        public CublasStatus State;
        public float WavesCount;
        public fixed int Reserved[4];
    }

    /// <summary>cublasLtMatmulAlgo_t: opaque, copied by value.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Algo
    {
        public fixed ulong Data[8];
    }

    private sealed class Table
    {
        public readonly delegate* unmanaged<IntPtr*, CublasStatus> Create;
        public readonly delegate* unmanaged<IntPtr, CublasStatus> Destroy;
        public readonly delegate* unmanaged<IntPtr*, int, CudaDataType, CublasStatus> DescCreate;
        public readonly delegate* unmanaged<IntPtr, CublasStatus> DescDestroy;
        public readonly delegate* unmanaged<IntPtr, int, void*, nuint, CublasStatus> DescSetAttribute;
        public readonly delegate* unmanaged<IntPtr*, CudaDataType, ulong, ulong, long, CublasStatus> LayoutCreate;
        public readonly delegate* unmanaged<IntPtr, CublasStatus> LayoutDestroy;
        public readonly delegate* unmanaged<IntPtr*, CublasStatus> PreferenceCreate;
        public readonly delegate* unmanaged<IntPtr, CublasStatus> PreferenceDestroy;
        public readonly delegate* unmanaged<IntPtr, int, void*, nuint, CublasStatus> PreferenceSetAttribute;
        public readonly delegate* unmanaged<IntPtr, IntPtr, IntPtr, IntPtr, IntPtr, IntPtr, IntPtr, int, HeuristicResult*, int*, CublasStatus> AlgoGetHeuristic;
        public readonly delegate* unmanaged<IntPtr, IntPtr, void*, ulong, IntPtr, ulong, IntPtr, void*, ulong, IntPtr, ulong, IntPtr, Algo*, ulong, nuint, IntPtr, CublasStatus> Matmul;

        public Table(IntPtr lib)
        {
            IntPtr F(string name) => NativeLibrary.GetExport(lib, name);
            Create = (delegate* unmanaged<IntPtr*, CublasStatus>)F("cublasLtCreate");
            Destroy = (delegate* unmanaged<IntPtr, CublasStatus>)F("cublasLtDestroy");
            DescCreate = (delegate* unmanaged<IntPtr*, int, CudaDataType, CublasStatus>)F("cublasLtMatmulDescCreate");
            DescDestroy = (delegate* unmanaged<IntPtr, CublasStatus>)F("cublasLtMatmulDescDestroy");
            DescSetAttribute = (delegate* unmanaged<IntPtr, int, void*, nuint, CublasStatus>)F("cublasLtMatmulDescSetAttribute");
            LayoutCreate = (delegate* unmanaged<IntPtr*, CudaDataType, ulong, ulong, long, CublasStatus>)F("cublasLtMatrixLayoutCreate");
            LayoutDestroy = (delegate* unmanaged<IntPtr, CublasStatus>)F("cublasLtMatrixLayoutDestroy");
            PreferenceCreate = (delegate* unmanaged<IntPtr*, CublasStatus>)F("cublasLtMatmulPreferenceCreate");
            PreferenceDestroy = (delegate* unmanaged<IntPtr, CublasStatus>)F("cublasLtMatmulPreferenceDestroy");
            PreferenceSetAttribute = (delegate* unmanaged<IntPtr, int, void*, nuint, CublasStatus>)F("cublasLtMatmulPreferenceSetAttribute");
            AlgoGetHeuristic = (delegate* unmanaged<IntPtr, IntPtr, IntPtr, IntPtr, IntPtr, IntPtr, IntPtr, int, HeuristicResult*, int*, CublasStatus>)
                F("cublasLtMatmulAlgoGetHeuristic");
            Matmul = (delegate* unmanaged<IntPtr, IntPtr, void*, ulong, IntPtr, ulong, IntPtr, void*, ulong, IntPtr, ulong, IntPtr, Algo*, ulong, nuint, IntPtr, CublasStatus>)
                F("cublasLtMatmul");
        }
    }

    private static readonly Lazy<Table> Api = new(() => new Table(CublasLtLibrary.Load()));
    private static Table T => Api.Value;

    private static void Check(CublasStatus status, string call)
    {
        if (status != CublasStatus.Success) throw new CublasException(status, call);
    }

    /// <summary>cublasLtCreate: needs a CUDA context current on this thread (CudaDevice.MakeCurrent).</summary>
    public static CublasLtHandle Create()
    {
        IntPtr h;
        Check(T.Create(&h), "cublasLtCreate");
        return new CublasLtHandle(h);
    }

    /// <summary>A matmul descriptor: fp32 compute and scale, op(A) and op(B) as given.</summary>
    public static CublasLtMatmulDescHandle CreateMatmulDesc(int transA, int transB)
    {
        IntPtr d;
        Check(T.DescCreate(&d, ComputeType32F, CudaDataType.R32F), "cublasLtMatmulDescCreate");
        var desc = new CublasLtMatmulDescHandle(d);
        try
        {
            SetDescAttribute(desc, DescTransA, transA);
            SetDescAttribute(desc, DescTransB, transB);
            return desc;
        }
        catch
        {
            desc.Dispose();
            throw;
        }
    }

    /// <summary>cublasLtMatmulDescSetAttribute with an int32 value (a wrong size is CUBLAS_STATUS_INVALID_VALUE).</summary>
    public static void SetDescAttribute(CublasLtMatmulDescHandle desc, int attribute, int value, int sizeInBytes = sizeof(int)) =>
        Check(T.DescSetAttribute(desc.DangerousGetHandle(), attribute, &value, (nuint)sizeInBytes), $"cublasLtMatmulDescSetAttribute({attribute})");

    /// <summary>A column-major layout: rows x cols with leading dimension ld.</summary>
    public static CublasLtLayoutHandle CreateLayout(CudaDataType type, ulong rows, ulong cols, long ld)
    {
        IntPtr l;
        Check(T.LayoutCreate(&l, type, rows, cols, ld), $"cublasLtMatrixLayoutCreate({type}, {rows}, {cols}, {ld})");
        return new CublasLtLayoutHandle(l);
    }

    /// <summary>A heuristic preference allowing up to <paramref name="workspaceBytes"/> of workspace.</summary>
    public static CublasLtPreferenceHandle CreatePreference(ulong workspaceBytes)
    {
        IntPtr p;
        Check(T.PreferenceCreate(&p), "cublasLtMatmulPreferenceCreate");
        var pref = new CublasLtPreferenceHandle(p);
        try
        {
            Check(T.PreferenceSetAttribute(p, PrefMaxWorkspaceBytes, &workspaceBytes, sizeof(ulong)), "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)");
            return pref;
        }
        catch
        {
            pref.Dispose();
            throw;
        }
    }

    /// <summary>The heuristic's best algorithm for the problem (D = C's layout), or null when it offers none.</summary>
    public static HeuristicResult? BestAlgorithm(CublasLtHandle handle, CublasLtMatmulDescHandle desc, CublasLtLayoutHandle a, CublasLtLayoutHandle b,
        CublasLtLayoutHandle c, CublasLtPreferenceHandle preference)
    {
        HeuristicResult result;
        int count = 0;
        Check(T.AlgoGetHeuristic(handle.DangerousGetHandle(), desc.DangerousGetHandle(), a.DangerousGetHandle(), b.DangerousGetHandle(),
            c.DangerousGetHandle(), c.DangerousGetHandle(), preference.DangerousGetHandle(), 1, &result, &count), "cublasLtMatmulAlgoGetHeuristic");
        return count > 0 && result.State == CublasStatus.Success ? result : null;
    }

    /// <summary>D = alpha op(A) op(B) + beta C with D = C (in place when beta is 1), enqueued on <paramref name="stream"/>.</summary>
    public static void Matmul(CublasLtHandle handle, CublasLtMatmulDescHandle desc, float alpha, ulong a, CublasLtLayoutHandle aLayout, ulong b,
        CublasLtLayoutHandle bLayout, float beta, ulong c, CublasLtLayoutHandle cLayout, in Algo algo, ulong workspace, nuint workspaceBytes, IntPtr stream)
    {
        Algo copy = algo;
        Check(T.Matmul(handle.DangerousGetHandle(), desc.DangerousGetHandle(), &alpha, a, aLayout.DangerousGetHandle(), b, bLayout.DangerousGetHandle(),
            &beta, c, cLayout.DangerousGetHandle(), c, cLayout.DangerousGetHandle(), &copy, workspace, workspaceBytes, stream), "cublasLtMatmul");
    }

    internal static CublasStatus DestroyHandle(IntPtr h) => T.Destroy(h);
    internal static CublasStatus DestroyDesc(IntPtr h) => T.DescDestroy(h);
    internal static CublasStatus DestroyLayout(IntPtr h) => T.LayoutDestroy(h);
    internal static CublasStatus DestroyPreference(IntPtr h) => T.PreferenceDestroy(h);
}

/// <summary>A cuBLASLt object released by its destroy function (the status is the release's result).</summary>
public abstract class CublasLtObject : SafeHandle
{
    private protected CublasLtObject(IntPtr h) : base(IntPtr.Zero, true) => SetHandle(h);
    public override bool IsInvalid => handle == IntPtr.Zero;
    private protected abstract CublasStatus Destroy(IntPtr h);
    protected override bool ReleaseHandle() => Destroy(handle) == CublasStatus.Success;
}

/// <summary>A cublasLtHandle_t, destroyed with cublasLtDestroy.</summary>
public sealed class CublasLtHandle : CublasLtObject
{
    internal CublasLtHandle(IntPtr h) : base(h) { }
    private protected override CublasStatus Destroy(IntPtr h) => CublasLtApi.DestroyHandle(h);
}

/// <summary>A cublasLtMatmulDesc_t, destroyed with cublasLtMatmulDescDestroy.</summary>
public sealed class CublasLtMatmulDescHandle : CublasLtObject
{
    internal CublasLtMatmulDescHandle(IntPtr h) : base(h) { }
    private protected override CublasStatus Destroy(IntPtr h) => CublasLtApi.DestroyDesc(h);
}

/// <summary>A cublasLtMatrixLayout_t, destroyed with cublasLtMatrixLayoutDestroy.</summary>
public sealed class CublasLtLayoutHandle : CublasLtObject
{
    internal CublasLtLayoutHandle(IntPtr h) : base(h) { }
    private protected override CublasStatus Destroy(IntPtr h) => CublasLtApi.DestroyLayout(h);
}

/// <summary>A cublasLtMatmulPreference_t, destroyed with cublasLtMatmulPreferenceDestroy.</summary>
public sealed class CublasLtPreferenceHandle : CublasLtObject
{
    internal CublasLtPreferenceHandle(IntPtr h) : base(h) { }
    private protected override CublasStatus Destroy(IntPtr h) => CublasLtApi.DestroyPreference(h);
}
