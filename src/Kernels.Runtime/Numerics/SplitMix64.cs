// SplitMix64 (Steele, Lea and Flood 2014, with Stafford's "mix13" finaliser): the random generator of sampling
// (Engine/SamplerRng). The engine draws every coin and hands it to the backend with the draw (TokenChoice.Coin), so
// the CPU and the GPU sample with the same coins without a second generator.
namespace Kernels.Runtime.Numerics;

internal static class SplitMix64
{
    /// <summary>The state's increment per draw (2^64 / golden ratio).</summary>
    public const ulong Gamma = 0x9E3779B97F4A7C15UL;

    /// <summary>The starting state of stream <paramref name="stream"/> of <paramref name="seed"/> (streams are spread by an odd constant).</summary>
    public static ulong Seed(ulong seed, ulong stream) => seed ^ (stream * 0xD1B54A32D192ED03UL);

    /// <summary>Advances <paramref name="state"/> by <see cref="Gamma"/> and returns the mixed new state.</summary>
    public static ulong Next(ref ulong state)
    {
        ulong z = state += Gamma;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>A uniform double in [0, 1) from the top 53 bits of <paramref name="bits"/>.</summary>
    public static double UnitDouble(ulong bits) => (bits >> 11) * (1.0 / (1UL << 53));
}
