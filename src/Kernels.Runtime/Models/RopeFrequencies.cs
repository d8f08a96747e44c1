// Rotary embedding inverse frequencies, with Llama-3.1 and linear scaling: computed once per model, used by every backend.
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

internal static class RopeFrequencies
{
    /// <summary>
    /// inv_freq[i] = theta^(-2i/d) for i in [0, d/2), then scaled as the config says. Computed in double and rounded
    /// to fp32 once, so the CPU and GPU backends rotate by the same angles (angle = (float)pos * inv_freq[i] in fp32).
    /// </summary>
    public static float[] Compute(ModelConfig config)
    {
        int half = config.HeadDim / 2;
        var inv = new double[half];
        for (int i = 0; i < half; i++)
            inv[i] = 1.0 / Math.Pow(config.RopeTheta, 2.0 * i / config.HeadDim);

        var s = config.RopeScaling;
        switch (s.Type)
        {
            case RopeScalingType.None:
                break;
            case RopeScalingType.Linear:
                for (int i = 0; i < half; i++) inv[i] /= s.Factor;
                break;
            case RopeScalingType.Llama3:
                // Same rule as transformers' _compute_llama3_parameters: wavelengths longer than
                // original/low_freq_factor are divided by the factor, shorter than original/high_freq_factor kept,
                // and the band between interpolated linearly in original/wavelen.
                double lowWavelen = s.OriginalMaxPositions / s.LowFreqFactor;
                double highWavelen = s.OriginalMaxPositions / s.HighFreqFactor;
                for (int i = 0; i < half; i++)
                {
                    double wavelen = 2 * Math.PI / inv[i];
                    if (wavelen > lowWavelen)
                    {
                        inv[i] /= s.Factor;
                    }
                    else if (wavelen >= highWavelen)
                    {
                        double smooth = (s.OriginalMaxPositions / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                        inv[i] = (1 - smooth) * inv[i] / s.Factor + smooth * inv[i];
                    }
                }
                break;
        }

        if (config.RopeFrequencyFactors is { } factors)
        {
            if (factors.Length != half) throw new ModelFormatException("rope_freqs", $"has {factors.Length} factors, head_dim/2 is {half}");
            for (int i = 0; i < half; i++) inv[i] /= factors[i];
        }

        var result = new float[half];
        for (int i = 0; i < half; i++)
        {
            result[i] = config.RopeInvFreqDType switch
            {
                TensorDType.BF16 => DTypeConvert.BFloat16ToSingle(DTypeConvert.SingleToBFloat16((float)inv[i])),
                TensorDType.F16 => (float)(Half)(float)inv[i],
                _ => (float)inv[i],
            };
        }
        return result;
    }
}
