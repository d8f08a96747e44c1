// The explicit random state of one sequence's sampler (SplitMix64): randomness is an input, never a global.
namespace Kernels.Runtime.Engine;

public sealed class SamplerRng
{
    private ulong _state;

    /// <summary>Stream <paramref name="stream"/> of <paramref name="seed"/>: sample i of a request uses stream i.</summary>
    public SamplerRng(ulong seed, ulong stream = 0)
    {
        _state = seed ^ (stream * 0xD1B54A32D192ED03UL);
        Next();
    }

    public ulong Next()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, 1) with 53 bits.</summary>
    public double NextDouble() => (Next() >> 11) * (1.0 / (1UL << 53));
}
