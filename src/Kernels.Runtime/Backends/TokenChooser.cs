// A step's tokens from logits on the host: what the CPU backend does with its LM head's output, and what any backend
// without device-side sampling does after copying its logits back.
namespace Kernels.Runtime.Backends;

internal static class TokenChooser
{
    /// <summary>
    /// Each sequence's answer from its logits rows (<paramref name="rows"/>(s) rows of <paramref name="vocab"/> from
    /// <paramref name="logits"/>(s): every row when it asked for all logits, else its last one). A row is only read,
    /// except by a repetition penalty of the sequence's last choice (earlier choices get a copy).
    /// </summary>
    public static StepOutput Choose(SequenceStep step, Span<float> logits, int rows, int vocab)
    {
        if (step.Choose is not { Count: > 0 } && step.Score == null) return StepOutput.None;
        var last = logits.Slice((rows - 1) * vocab, vocab);
        var choices = step.Choose ?? [];
        var tokens = new int[choices.Count];
        var chosen = new ScoredToken?[choices.Count];
        for (int c = 0; c < choices.Count; c++)
        {
            var choice = choices[c];
            var usable = last[..Usable(choice.Vocab, vocab)];
            // A penalty rewrites the row it samples from: only the last choice, when nothing is scored after it,
            // samples the row itself; the scores are taken from the raw row.
            bool modifies = choice.RepetitionPenalty != 1f && choice.Seen is { Count: > 0 };
            var row = modifies && (c < choices.Count - 1 || choice.Logprobs >= 0) ? usable.ToArray() : usable;
            tokens[c] = Sampler.Sample(row, choice);
            if (choice.Logprobs >= 0) chosen[c] = Sampler.Score(usable, tokens[c], choice.Logprobs);
        }
        ScoredToken[]? targets = null;
        if (step.Score is { } score)
        {
            if (!step.AllLogits || rows != step.Tokens.Length) throw new ArgumentException("scoring a step's rows needs all of its logits (AllLogits)");
            if (score.Targets.Length > rows) throw new ArgumentException($"{score.Targets.Length} targets for {rows} rows");
            targets = new ScoredToken[score.Targets.Length];
            var t = score.Targets.Span;
            int usable = Usable(score.Vocab, vocab);
            for (int r = 0; r < targets.Length; r++) targets[r] = Sampler.Score(logits.Slice(r * vocab, usable), t[r], score.Top);
        }
        return new StepOutput(tokens, chosen, targets);
    }

    /// <summary>Every sequence's answer from the logits <see cref="IBackend.Forward"/> returned for the same batch.</summary>
    public static StepOutput[] Choose(IReadOnlyList<SequenceStep> batch, float[][] logits, int vocab)
    {
        var outputs = new StepOutput[batch.Count];
        for (int s = 0; s < batch.Count; s++) outputs[s] = Choose(batch[s], logits[s], logits[s].Length / vocab, vocab);
        return outputs;
    }

    private static int Usable(int asked, int vocab) => asked > 0 ? Math.Min(asked, vocab) : vocab;
}
