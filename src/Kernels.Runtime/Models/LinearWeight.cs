// A linear layer's weight W[out, in] in whatever form it is stored: dense (one tensor) or quantized (codes + scales).
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

/// <summary>
/// y = x . W^T for a linear layer of <see cref="OutFeatures"/> x <see cref="InFeatures"/>. Backends multiply through
/// it (Backends/Cpu/Linear.cs dispatches on the concrete type); formats live in Quantization/.
/// </summary>
internal abstract class LinearWeight
{
    /// <summary>The layer's Hugging Face name without the ".weight" suffix, e.g. "model.layers.0.self_attn.q_proj".</summary>
    public string Name { get; }
    public int OutFeatures { get; }
    public int InFeatures { get; }

    protected LinearWeight(string name, int outFeatures, int inFeatures)
    {
        Name = name;
        OutFeatures = outFeatures;
        InFeatures = inFeatures;
    }

    /// <summary>A short description of the storage, e.g. "BF16" or "W4A8 g128".</summary>
    public abstract string Format { get; }

    /// <summary>Every stored tensor of the layer (for byte counts and listings).</summary>
    public abstract IEnumerable<WeightTensor> Tensors { get; }

    public long ByteLength => Tensors.Sum(t => t.ByteLength);

    /// <summary>Row <paramref name="row"/> of W as fp32 (dequantized where the weight is quantized).</summary>
    public abstract void ReadRow(int row, Span<float> destination);

    public override string ToString() => $"{Name} {Format} [{OutFeatures}, {InFeatures}]";
}

/// <summary>A weight stored as one tensor in its dtype (F32, F16, BF16, or a GGML block type such as Q4_K).</summary>
internal sealed class DenseLinear : LinearWeight
{
    public WeightTensor Weight { get; }

    public DenseLinear(string name, WeightTensor weight) : base(name, weight.Rows, weight.Columns)
    {
        if (weight.Shape.Length != 2) throw new ArgumentException($"{weight.Name}: a linear weight is 2-D, not {weight.ShapeText}");
        Weight = weight;
    }

    public override string Format => Weight.DType.Name();
    public override IEnumerable<WeightTensor> Tensors => [Weight];
    public override void ReadRow(int row, Span<float> destination) => Weight.ReadRow(row, destination);
}
