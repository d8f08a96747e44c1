// Dense GEMMs through cuBLASLt (issue 16, item 2): y[M, N] (fp32) = x[M, K] . W[N, K]^T, or y += it (the residual
// add folded into the GEMM as beta = 1), with x rounded to the weight's 16-bit type (convert_f32_to_*) and fp32
// accumulation. One plan per problem shape (descriptor, layouts, the heuristic's best algorithm), made on first use
// and kept; a 32 MiB workspace, as NVIDIA recommends for Hopper.
using Kernels.Interop;

namespace Kernels.Runtime.Backends.Cuda;

internal sealed class CublasLtGemm : IDisposable
{
    public const long WorkspaceBytes = 32L << 20;

    private readonly CudaDevice _device;
    private readonly CublasLtHandle _handle;
    private readonly CublasLtPreferenceHandle _preference;
    private readonly DeviceBuffer<byte> _workspace;
    private readonly Dictionary<(int M, int N, int K, CudaDataType Type), Plan?> _plans = new();

    /// <summary>A shape's descriptor, layouts and algorithm.</summary>
    internal sealed class Plan(CublasLtMatmulDescHandle desc, CublasLtLayoutHandle a, CublasLtLayoutHandle b, CublasLtLayoutHandle c) : IDisposable
    {
        public CublasLtMatmulDescHandle Desc { get; } = desc;
        public CublasLtLayoutHandle A { get; } = a;
        public CublasLtLayoutHandle B { get; } = b;
        public CublasLtLayoutHandle C { get; } = c;
        public CublasLtApi.Algo Algo;
        public nuint Workspace;

        public void Dispose()
        {
            C.Dispose();
            B.Dispose();
            A.Dispose();
            Desc.Dispose();
        }
    }

    /// <summary>
    /// cuBLASLt on <paramref name="device"/>: throws DllNotFoundException (CublasLtLibrary's sentence) when the library
    /// is absent, CublasException when it cannot start on this device.
    /// </summary>
    public CublasLtGemm(CudaDevice device)
    {
        _device = device;
        device.MakeCurrent();
        CublasLtLibrary.Load();
        try
        {
            _handle = CublasLtApi.Create();
            _preference = CublasLtApi.CreatePreference(WorkspaceBytes);
            _workspace = DeviceBuffer<byte>.Allocate(device, WorkspaceBytes);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>
    /// The column-major problem cuBLASLt solves for row-major y[M, N] = x[M, K] W[N, K]^T: y^T[N, M] = op(A) B with A
    /// = W read as the column-major K x N matrix (ld K) transposed, B = x as the column-major K x M matrix (ld K), and
    /// C = D = y as the column-major N x M matrix (ld N).
    /// </summary>
    internal static ((ulong Rows, ulong Cols, long Ld) A, (ulong Rows, ulong Cols, long Ld) B, (ulong Rows, ulong Cols, long Ld) C) Layouts(int m, int n, int k) =>
        (((ulong)k, (ulong)n, k), ((ulong)k, (ulong)m, k), ((ulong)n, (ulong)m, n));

    /// <summary>The descriptor and layouts of a shape (no GPU needed); the algorithm is filled in by <see cref="PlanFor"/>.</summary>
    internal static Plan Describe(int m, int n, int k, CudaDataType type)
    {
        var (a, b, c) = Layouts(m, n, k);
        var desc = CublasLtApi.CreateMatmulDesc(CublasLtApi.OpT, CublasLtApi.OpN);
        CublasLtLayoutHandle? la = null, lb = null;
        try
        {
            la = CublasLtApi.CreateLayout(type, a.Rows, a.Cols, a.Ld);
            lb = CublasLtApi.CreateLayout(type, b.Rows, b.Cols, b.Ld);
            var lc = CublasLtApi.CreateLayout(CudaDataType.R32F, c.Rows, c.Cols, c.Ld);
            return new Plan(desc, la, lb, lc);
        }
        catch
        {
            lb?.Dispose();
            la?.Dispose();
            desc.Dispose();
            throw;
        }
    }

    /// <summary>The shape's plan, made on first use; null when the heuristic offers no algorithm (the caller falls back).</summary>
    private Plan? PlanFor(int m, int n, int k, CudaDataType type)
    {
        if (_plans.TryGetValue((m, n, k, type), out var cached)) return cached;
        var plan = Describe(m, n, k, type);
        if (CublasLtApi.BestAlgorithm(_handle, plan.Desc, plan.A, plan.B, plan.C, _preference) is { } best && best.WorkspaceSize <= (nuint)WorkspaceBytes)
        {
            plan.Algo = best.Algorithm;
            plan.Workspace = best.WorkspaceSize;
        }
        else
        {
            plan.Dispose();
            plan = null;
        }
        _plans[(m, n, k, type)] = plan;
        return plan;
    }

    /// <summary>
    /// Enqueues y = x W^T (or y += x W^T when <paramref name="accumulate"/>) on <paramref name="stream"/>; false when
    /// cuBLASLt has no algorithm for the shape (nothing enqueued).
    /// </summary>
    public bool TryRun<T>(DeviceBuffer<float> y, DeviceBuffer<T> x, DeviceBuffer<T> w, int m, int n, int k, bool accumulate, IntPtr stream)
        where T : unmanaged
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(m, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(n, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        if (y.Length < (long)m * n) throw new ArgumentException($"y holds {y.Length} floats, the GEMM writes {(long)m * n}", nameof(y));
        if (x.Length < (long)m * k) throw new ArgumentException($"x holds {x.Length} values, the GEMM reads {(long)m * k}", nameof(x));
        if (w.Length < (long)n * k) throw new ArgumentException($"w holds {w.Length} values, the GEMM reads {(long)n * k}", nameof(w));
        var type = DeviceElement<T>.DType switch
        {
            Numerics.TensorDType.F16 => CudaDataType.R16F,
            Numerics.TensorDType.BF16 => CudaDataType.R16BF,
            var other => throw new NotSupportedException($"cuBLASLt GEMM for {other} operands"),
        };
        _device.MakeCurrent();
        if (PlanFor(m, n, k, type) is not { } plan) return false;
        CublasLtApi.Matmul(_handle, plan.Desc, 1f, w.Pointer, plan.A, x.Pointer, plan.B, accumulate ? 1f : 0f, y.Pointer, plan.C, plan.Algo,
            _workspace.Pointer, plan.Workspace, stream);
        return true;
    }

    public void Dispose()
    {
        foreach (var plan in _plans.Values) plan?.Dispose();
        _plans.Clear();
        _workspace?.Dispose();
        _preference?.Dispose();
        _handle?.Dispose();
    }
}
