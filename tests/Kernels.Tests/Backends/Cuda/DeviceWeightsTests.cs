// The CUDA backend's weight arena, the part that needs no GPU: q, k, v and gate, up lie back to back, so that their
// rows are one matrix the fused q|k|v and gate|up GEMMs read (GpuLayer.Qkv, GateUp); a joined view exists only there.
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Tests.Backends.Cuda;

public class DeviceWeightsTests
{
    [TestCase("synthetic:tiny")]
    [TestCase("synthetic:mini")]
    public void TheFusedProjectionsWeightsAreOneMatrixWhereTheirDTypesAgree(string source)
    {
        using var model = ModelLoader.Load(source);
        using var weights = DeviceWeights.Place(model);
        var c = model.Config;
        int joined = 0;
        foreach (var layer in weights.Layers)
            foreach (var (parts, view, rows) in new[] { (new[] { layer.Wq, layer.Wk, layer.Wv }, layer.Qkv, c.QueryDim + 2 * c.KvDim), (new[] { layer.Gate, layer.Up }, layer.GateUp, 2 * c.IntermediateSize) })
            {
                var tensors = parts.Select(p => ((GpuDense)p).Weight).ToArray();
                if (tensors.Any(t => t.DType != tensors[0].DType))
                {
                    // MatrixTarget decides per tensor (a BF16 matrix becomes F16 only where that is exact).
                    Assert.That(view, Is.Null, $"{tensors[0].Name}: {string.Join(", ", tensors.Select(t => t.DType))} are not one matrix");
                    continue;
                }
                joined++;
                Assert.That(view, Is.Not.Null, $"{tensors[0].Name}: dense in one dtype and adjacent");
                for (int i = 1; i < tensors.Length; i++)
                    Assert.That(tensors[i].Offset, Is.EqualTo(tensors[i - 1].Offset + tensors[i - 1].DType.ByteCount(tensors[i - 1].Elements)), $"{tensors[i].Name} follows");
                Assert.That((view!.Weight.Offset, view.Weight.DType, view.Weight.Elements), Is.EqualTo((tensors[0].Offset, tensors[0].DType, (long)rows * c.HiddenSize)));
            }
        Assert.That(joined, Is.GreaterThan(0), "some layer's projections share a dtype");
    }

    [Test]
    public void AJoinedViewNeedsAdjacentDenseMatricesOfOneDType()
    {
        GpuDense Dense(TensorDType t, long offset, long elements) => new(new GpuTensor("w", t, offset, elements));
        var joined = GpuTensor.Joined("a|b", Dense(TensorDType.F16, 512, 128), Dense(TensorDType.F16, 768, 64));
        Assert.That((joined!.Offset, joined.Elements, joined.DType), Is.EqualTo((512L, 192L, TensorDType.F16)));
        Assert.That(GpuTensor.Joined("gap", Dense(TensorDType.F16, 0, 100), Dense(TensorDType.F16, 256, 100)), Is.Null, "alignment padding between them");
        Assert.That(GpuTensor.Joined("dtypes", Dense(TensorDType.F16, 0, 128), Dense(TensorDType.BF16, 256, 128)), Is.Null, "two dtypes");
        Assert.That(GpuTensor.Joined("order", Dense(TensorDType.F16, 256, 128), Dense(TensorDType.F16, 0, 128)), Is.Null, "the second before the first");
        var w4a8 = new GpuW4A8("q", 64, 64, 0, 64, new GpuTensor("c", TensorDType.U8, 0, 2048), new GpuTensor("s", TensorDType.F16, 2048, 64), null,
            new GpuTensor("z", TensorDType.U8, 2176, 64));
        Assert.That(GpuTensor.Joined("quantized", Dense(TensorDType.F16, 0, 128), w4a8), Is.Null, "not dense");
    }
}
