// The per-row RNG state of sample_tokens_f32 (kernels/ops/sample_tokens.cuh): the SplitMix64 state SamplerRng keeps,
// so the GPU draws the same coins as the CPU engine for the same seed and stream.
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cuda;

internal static class GpuSamplerState
{
    /// <summary>
    /// The state <c>new SamplerRng(seed, stream)</c> holds once its constructor has run (it XORs the stream in and
    /// draws once): upload this per row, and the kernel's k-th call draws what the k-th NextDouble() returns.
    /// </summary>
    public static ulong Initial(ulong seed, ulong stream = 0)
    {
        ulong state = SplitMix64.Seed(seed, stream);
        SplitMix64.Next(ref state);
        return state;
    }

    /// <summary>The kernel's draw (splitmix_coin), in C#: advances <paramref name="state"/> and returns a uniform in [0, 1).</summary>
    public static double NextCoin(ref ulong state) => SplitMix64.UnitDouble(SplitMix64.Next(ref state));
}
