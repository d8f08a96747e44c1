// Which steps the CUDA backend answers by sampling on the device (sample_tokens_f32), so that only token ids cross to
// the host; the rest go through the host chooser on copied logits.
namespace Kernels.Runtime.Backends.Cuda;

/// <summary>One row's draw in sample_tokens_f32's terms (off values: top-k 0, top-p 1, min-p 0; temperature 0 is greedy).</summary>
internal readonly record struct DeviceDraw(float Temperature, int TopK, float TopP, float MinP, double Coin)
{
    /// <summary>A row whose token nobody asked for (a prompt chunk before the last): greedy, the token dropped.</summary>
    public static DeviceDraw Unused => new(0f, 0, 1f, 0f, 0.0);
}

internal static class DeviceDraws
{
    /// <summary>
    /// Per sequence its device draw and the candidates per row (the usable vocabulary), or null when some sequence
    /// needs the host: it asks for log-probabilities or all logits, scores rows, draws several tokens from one row
    /// (a prompt's samples), has a repetition penalty with tokens to penalize, or the draws disagree on the
    /// vocabulary. The kernel samples in index order, the host in probability order under top-k/top-p: the same
    /// distribution and the same coins, not always the same token (greedy is identical).
    /// </summary>
    public static (DeviceDraw[] Draws, int Vocab)? Plan(IReadOnlyList<SequenceStep> batch, int modelVocab)
    {
        var draws = new DeviceDraw[batch.Count];
        int vocab = 0;
        for (int s = 0; s < batch.Count; s++)
        {
            var step = batch[s];
            if (step.AllLogits || step.Score != null) return null;
            if (step.Choose is not { Count: > 0 } choices)
            {
                draws[s] = DeviceDraw.Unused;
                continue;
            }
            if (choices.Count > 1) return null;
            var c = choices[0];
            if (c.Logprobs >= 0 || (c.RepetitionPenalty != 1f && c.Seen is { Count: > 0 })) return null;
            int v = c.Vocab > 0 ? Math.Min(c.Vocab, modelVocab) : modelVocab;
            if (vocab != 0 && v != vocab) return null;
            vocab = v;
            draws[s] = new DeviceDraw(c.Temperature, c.TopK, c.TopP, c.MinP, c.Coin);
        }
        return (draws, vocab == 0 ? modelVocab : vocab);
    }

    /// <summary>The answers of a step sampled on the device: each drawing sequence's token, nothing for the others.</summary>
    public static StepOutput[] Outputs(IReadOnlyList<SequenceStep> batch, int[] tokens)
    {
        var outputs = new StepOutput[batch.Count];
        for (int s = 0; s < batch.Count; s++)
            outputs[s] = batch[s].Choose is { Count: > 0 } ? new StepOutput([tokens[s]], [null], null) : StepOutput.None;
        return outputs;
    }
}
