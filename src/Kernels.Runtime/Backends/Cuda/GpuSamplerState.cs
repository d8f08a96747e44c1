// The per-row RNG state of sample_tokens_f32 (kernels/ops/sample_tokens.cuh): the SplitMix64 state SamplerRng keeps,
// so the GPU draws the same coins as the CPU engine for the same seed and stream.
namespace Kernels.Runtime.Backends.Cuda;

public static class GpuSamplerState
{
    private const ulong Golden = 0x9E3779B97F4A7C15UL;

    /// <summary>
    /// The state <c>new SamplerRng(seed, stream)</c> holds once its constructor has run (it XORs the stream in and
    /// draws once): upload this per row, and the kernel's k-th call draws what the k-th NextDouble() returns.
    /// </summary>
    public static ulong Initial(ulong seed, ulong stream = 0) => (seed ^ (stream * 0xD1B54A32D192ED03UL)) + Golden;

    /// <summary>The kernel's draw (splitmix_coin), in C#: advances <paramref name="state"/> and returns a uniform in [0, 1).</summary>
    public static double NextCoin(ref ulong state)
    {
        ulong z = state += Golden;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (z >> 11) * (1.0 / (1UL << 53));
    }
}
