// The cuBLASLt GEMM path without a GPU: the column-major problem it describes is y = x W^T (emulated on the CPU from
// the layouts), its descriptors and layouts are accepted by the installed library, failures name the call and the
// status, and the memory plan counts its workspace.
using Kernels.Interop;
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Tests.Backends.Cuda;

public class CublasLtGemmTests
{
    private static void RequireLibrary()
    {
        if (CublasLtLibrary.WhyUnavailable() is { } why) Assert.Ignore(why);
    }

    [TestCase(1, 8, 4)]
    [TestCase(3, 5, 7)]
    [TestCase(16, 24, 32)]
    public void TheColumnMajorProblemIsYEqualsXTimesWTransposed(int m, int n, int k)
    {
        // D = op(A) op(B) with op(A) = A^T (TRANSA = T), op(B) = B, every matrix column-major with its ld, over the
        // row-major buffers of W [n, k], x [m, k] and y [m, n]: must be the row-major y = x W^T.
        var rng = new Random(m * 100 + n * 10 + k);
        var w = Enumerable.Range(0, n * k).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        var x = Enumerable.Range(0, m * k).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        var (a, b, c) = CublasLtGemm.Layouts(m, n, k);
        Assert.That((a.Rows, b.Rows), Is.EqualTo(((ulong)k, (ulong)k)), "the inner dimension");
        Assert.That((c.Rows, c.Cols), Is.EqualTo(((ulong)n, (ulong)m)), "D is op(A) rows x op(B) cols");
        var d = new float[m * n];
        for (ulong i = 0; i < c.Rows; i++)          // row of op(A) = column of A
            for (ulong j = 0; j < c.Cols; j++)      // column of B
            {
                float sum = 0;
                for (ulong p = 0; p < a.Rows; p++) sum += w[(long)(p + i * (ulong)a.Ld)] * x[(long)(p + j * (ulong)b.Ld)];
                d[(long)(i + j * (ulong)c.Ld)] = sum;
            }
        for (int r = 0; r < m; r++)
            for (int col = 0; col < n; col++)
            {
                float expected = 0;
                for (int p = 0; p < k; p++) expected += x[r * k + p] * w[col * k + p];
                Assert.That(d[r * n + col], Is.EqualTo(expected).Within(1e-5f), $"y[{r}, {col}]");
            }
    }

    [Test]
    public void DescriptorsAndLayoutsAreAcceptedByTheInstalledLibrary()
    {
        RequireLibrary();
        foreach (var type in new[] { CudaDataType.R16F, CudaDataType.R16BF })
            foreach (var (m, n, k) in new[] { (1, 6144, 4096), (16, 28672, 4096), (256, 4096, 14336) })
            {
                using var plan = CublasLtGemm.Describe(m, n, k, type);
                Assert.That(new System.Runtime.InteropServices.SafeHandle[] { plan.Desc, plan.A, plan.B, plan.C }.All(h => !h.IsInvalid), $"{type} {m}x{n}x{k}");
            }
        using var pref = CublasLtApi.CreatePreference((ulong)CublasLtGemm.WorkspaceBytes);
        Assert.That(pref.IsInvalid, Is.False);
    }

    [Test]
    public void AFailedCallNamesTheFunctionAndTheStatus()
    {
        RequireLibrary();
        using var desc = CublasLtApi.CreateMatmulDesc(CublasLtApi.OpT, CublasLtApi.OpN);
        var e = Assert.Throws<CublasException>(() => CublasLtApi.SetDescAttribute(desc, CublasLtApi.DescTransA, CublasLtApi.OpT, sizeInBytes: 3));
        Assert.That(e!.Status, Is.EqualTo(CublasStatus.InvalidValue));
        Assert.That(e.Message, Does.Contain("cublasLtMatmulDescSetAttribute(3)").And.Contain("CUBLAS_STATUS_INVALID_VALUE"));
        Assert.That(CublasException.Name(CublasStatus.NotInitialized), Is.EqualTo("CUBLAS_STATUS_NOT_INITIALIZED"));
        Assert.That(CublasException.Name((CublasStatus)99), Is.EqualTo("cublasStatus_t 99"));
        if (CudaDevice.WhyUnavailable(0) != null)
        {
            // No GPU here: a handle cannot start, and says so instead of crashing.
            var noDevice = Assert.Throws<CublasException>(() => CublasLtApi.Create().Dispose());
            Assert.That(noDevice!.Message, Does.StartWith("cublasLtCreate failed: CUBLAS_STATUS_"));
        }
    }

    [Test]
    public void TheMemoryPlanCountsTheWorkspaceAndTheHalfInputWhenCublasLtIsOn()
    {
        var config = Kernels.Runtime.Models.SyntheticModels.Create("synthetic:small").Config;
        var off = CudaMemoryPlan.Compute(config, 1L << 30, 16L << 30, new CudaBackendOptions { KvCacheBytes = 1L << 30, UseCublasLt = false });
        var on = CudaMemoryPlan.Compute(config, 1L << 30, 16L << 30, new CudaBackendOptions { KvCacheBytes = 1L << 30, UseCublasLt = true });
        var byTable = CudaMemoryPlan.Compute(config, 1L << 30, 16L << 30, new CudaBackendOptions { KvCacheBytes = 1L << 30 });
        long widest = Math.Max(Math.Max(config.HiddenSize, config.QueryDim), config.IntermediateSize);
        Assert.That(on.ScratchBytes - off.ScratchBytes, Is.EqualTo(CublasLtGemm.WorkspaceBytes + (long)off.MaxTokensPerStep * widest * 2));
        Assert.That(byTable.ScratchBytes, Is.EqualTo(on.ScratchBytes), "unset: a tuning table may turn it on, so its memory is reserved");
    }

    [Test]
    public void TheMemoryPlanCountsTheTensorCoreAttentionsPartialsAndWorkUnlessItIsOff()
    {
        var config = Kernels.Runtime.Models.SyntheticModels.Create("synthetic:small").Config;
        var off = CudaMemoryPlan.Compute(config, 1L << 30, 16L << 30, new CudaBackendOptions { KvCacheBytes = 1L << 30, TensorCoreAttention = false });
        var byTable = CudaMemoryPlan.Compute(config, 1L << 30, 16L << 30, new CudaBackendOptions { KvCacheBytes = 1L << 30 });
        long rows = (long)off.MaxTokensPerStep * CudaMemoryPlan.AttentionSlotsPerRow;
        long floats = rows * config.NumHeads * (config.HeadDim + 1), ints = rows * (AttentionWork.ItemInts + 2) + off.MaxTokensPerStep + 1;
        Assert.That(byTable.ScratchBytes - off.ScratchBytes, Is.EqualTo(CudaMemoryPlan.Align(floats * 4) + CudaMemoryPlan.Align(ints * 4)));
    }
}
