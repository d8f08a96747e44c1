// Perplexity of a token sequence under the model: exp of the mean negative log-likelihood of each next token.
using Kernels.Runtime.Backends;

namespace Kernels.Runtime.Engine;

internal sealed record PerplexityResult(double Perplexity, double MeanNll, int Tokens, int Windows);

internal static class Perplexity
{
    /// <summary>Tokens per forward step inside a window (bounds the logits buffer: PieceTokens x vocab floats).</summary>
    private const int PieceTokens = 256;

    /// <summary>
    /// Scores ids[1..] given their prefixes, in non-overlapping windows of at most <paramref name="window"/> tokens
    /// (the model's context by default); each window starts a fresh cache, as llama.cpp's perplexity does.
    /// log-softmax subtracts the row max and sums in double.
    /// </summary>
    public static PerplexityResult Compute(IBackend backend, IReadOnlyList<int> ids, int? window = null)
    {
        int w = Math.Min(window ?? backend.Config.MaxPositions, backend.Config.MaxPositions);
        if (w < 2) throw new RequestValidationException(nameof(window), $"must be at least 2 tokens, got {w}");
        if (ids.Count < 2) throw new RequestValidationException(nameof(ids), $"needs at least 2 tokens to score, got {ids.Count}");
        int vocab = backend.Config.VocabSize;
        double nll = 0;
        int scored = 0, windows = 0;
        for (int start = 0; start + 1 < ids.Count; start += w)
        {
            var chunk = ids.Skip(start).Take(w).ToArray();
            if (chunk.Length < 2) break;
            using var cache = backend.CreateCache();
            // The window runs through one cache in pieces, so the logits of a piece (rows x vocab) stay bounded.
            for (int p = 0; p < chunk.Length - 1; p += PieceTokens)
            {
                int len = Math.Min(PieceTokens, chunk.Length - p);
                var logits = backend.Forward([new SequenceStep(cache, chunk.AsMemory(p, len), AllLogits: true)])[0];
                for (int r = 0; r < len && p + r + 1 < chunk.Length; r++)
                {
                    int t = p + r;
                    var row = logits.AsSpan(r * vocab, vocab);
                    float max = float.NegativeInfinity;
                    foreach (float v in row) max = Math.Max(max, v);
                    double sum = 0;
                    foreach (float v in row) sum += Math.Exp(v - max);
                    nll += -(row[chunk[t + 1]] - max - Math.Log(sum));
                    scored++;
                }
            }
            windows++;
        }
        double mean = nll / scored;
        return new PerplexityResult(Math.Exp(mean), mean, scored, windows);
    }
}
