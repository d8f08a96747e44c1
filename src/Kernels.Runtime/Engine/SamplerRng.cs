// The explicit random state of one sequence's sampler (SplitMix64): randomness is an input, never a global.
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Engine;

internal sealed class SamplerRng
{
    private ulong _state;

    /// <summary>Stream <paramref name="stream"/> of <paramref name="seed"/>: sample i of a request uses stream i.</summary>
    public SamplerRng(ulong seed, ulong stream = 0)
    {
        _state = SplitMix64.Seed(seed, stream);
        Next();
    }

    public ulong Next() => SplitMix64.Next(ref _state);

    /// <summary>Uniform in [0, 1) with 53 bits.</summary>
    public double NextDouble() => SplitMix64.UnitDouble(Next());
}
