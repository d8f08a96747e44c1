// Batched generation: many prompts, n samples each, one KV cache per sample, every step one forward for all.
using Kernels.Runtime.Backends;
using Kernels.Runtime.Tokenization;

namespace Kernels.Runtime.Engine;

public sealed record GeneratorOptions
{
    /// <summary>Most prompt tokens run through one forward step (bounds activation memory; longer prompts are chunked).</summary>
    public int PrefillTokenBudget { get; init; } = 2048;
}

/// <summary>
/// Runs a set of requests to completion on one backend. Prompts are prefilled in batches (chunked to the token
/// budget), samples of one prompt fork its cache, then every decode step runs all live samples together. Each
/// sample has its own sampler state seeded by (request seed, sample index), so outputs do not depend on the batch.
/// </summary>
public sealed class Generator
{
    private readonly IBackend backend;
    private readonly ITextTokenizer tokenizer;
    private readonly GeneratorOptions _options;
    /// <summary>Ids that can be generated: the model's vocabulary may have padding rows the tokenizer lacks (Qwen2).</summary>
    private readonly int _usableVocab;

    public Generator(IBackend backend, ITextTokenizer tokenizer, GeneratorOptions? options = null)
    {
        this.backend = backend;
        this.tokenizer = tokenizer;
        _options = options ?? new GeneratorOptions();
        ArgumentOutOfRangeException.ThrowIfLessThan(_options.PrefillTokenBudget, 1, nameof(options));
        _usableVocab = Math.Min(tokenizer.VocabSize, backend.Config.VocabSize);
    }

    private sealed class Sample
    {
        public required int Request;
        public required int Index;
        public required IKvCache Cache;
        public required SamplerRng Rng;
        public required TokenTextStream Text;
        public required StopStringMatcher Stops;
        public readonly List<int> Tokens = new();
        public required HashSet<int> Seen;
        public int LastToken;
        public FinishReason? Finish;
    }

    /// <summary>Tokenizes and checks a request; throws <see cref="RequestValidationException"/> when it cannot run.</summary>
    public int[] PromptIds(GenerationRequest request)
    {
        if (request.N < 1) throw new RequestValidationException("n", $"must be at least 1, got {request.N}");
        if (request.MaxNewTokens < 0) throw new RequestValidationException("max-tokens", $"must be >= 0, got {request.MaxNewTokens}");
        request.Sampling.Validate();
        int[] ids = request.PromptIds?.ToArray()
                    ?? tokenizer.Encode(request.Prompt ?? throw new RequestValidationException("prompt", "no prompt given"),
                        request.AddBos ?? tokenizer.AddBosByDefault);
        if (ids.Length == 0) throw new RequestValidationException("prompt", "is empty and the tokenizer adds no BOS");
        int context = backend.Config.MaxPositions;
        if (ids.Length >= context)
            throw new RequestValidationException("prompt", $"is {ids.Length} tokens, the model's context is {context}: no room to generate");
        foreach (int id in ids)
            if ((uint)id >= (uint)_usableVocab)
                throw new RequestValidationException("prompt", $"token id {id} is outside the vocabulary of {_usableVocab}");
        return ids;
    }

    /// <summary>Runs every request; yields events as tokens are produced. Caches are released when the run ends.</summary>
    public IEnumerable<GenerationEvent> Run(IReadOnlyList<GenerationRequest> requests, CancellationToken cancellation = default)
    {
        var prompts = requests.Select(PromptIds).ToArray(); // validate everything before any work
        var samples = new List<Sample>();
        var prefillCaches = new IKvCache[requests.Count];
        try
        {
            // ---- prefill: chunks of prompts up to the token budget per forward step
            var lastLogits = new float[requests.Count][];
            var offsets = new int[requests.Count];
            for (int r = 0; r < requests.Count; r++) prefillCaches[r] = backend.CreateCache();
            int next = 0;
            while (next < requests.Count)
            {
                cancellation.ThrowIfCancellationRequested();
                var batch = new List<(int Request, SequenceStep Step)>();
                int budget = _options.PrefillTokenBudget;
                for (int r = next; r < requests.Count && budget > 0; r++)
                {
                    int take = Math.Min(budget, prompts[r].Length - offsets[r]);
                    batch.Add((r, new SequenceStep(prefillCaches[r], prompts[r].AsMemory(offsets[r], take))));
                    offsets[r] += take;
                    budget -= take;
                }
                var logits = backend.Forward(batch.Select(b => b.Step).ToArray());
                for (int i = 0; i < batch.Count; i++) lastLogits[batch[i].Request] = logits[i];
                while (next < requests.Count && offsets[next] == prompts[next].Length) next++;
            }

            // ---- samples: sample 0 keeps the prompt's cache, the others fork it
            for (int r = 0; r < requests.Count; r++)
            {
                var req = requests[r];
                ulong seed = req.Sampling.Seed ?? (ulong)Random.Shared.NextInt64();
                bool promptIsControlOnly = prompts[r].All(id => tokenizer.TokenBytes(id).Length == 0);
                for (int n = 0; n < req.N; n++)
                {
                    var s = new Sample
                    {
                        Request = r,
                        Index = n,
                        Cache = n == 0 ? prefillCaches[r] : prefillCaches[r].Fork(),
                        Rng = new SamplerRng(seed, (ulong)n),
                        // A continuation keeps its leading space; text decoded from BOS drops the dummy prefix.
                        Text = new TokenTextStream(tokenizer, atStart: promptIsControlOnly),
                        Stops = new StopStringMatcher(req.Stop),
                        Seen = req.Sampling.RepetitionPenalty != 1f ? new HashSet<int>(prompts[r]) : [],
                    };
                    samples.Add(s);
                }
                prefillCaches[r] = null!; // owned by sample 0 now: disposed once, with the samples
            }

            // ---- first token of every sample from its prompt's last logits, then decode steps for all live samples
            foreach (var s in samples)
                foreach (var e in Advance(s, requests[s.Request], (float[])lastLogits[s.Request].Clone())) yield return e;

            while (true)
            {
                var live = samples.Where(s => s.Finish == null).ToArray();
                if (live.Length == 0) break;
                if (cancellation.IsCancellationRequested)
                {
                    foreach (var s in live) yield return Finish(s, FinishReason.Cancelled, null);
                    break;
                }
                var logits = backend.Forward(live.Select(s => new SequenceStep(s.Cache, new[] { s.LastToken })).ToArray());
                for (int i = 0; i < live.Length; i++)
                    foreach (var e in Advance(live[i], requests[live[i].Request], logits[i])) yield return e;
            }
        }
        finally
        {
            foreach (var c in prefillCaches) c?.Dispose();
            foreach (var s in samples) s.Cache.Dispose(); // disposing a finished sample's cache again is a no-op
        }
    }

    /// <summary>Runs the requests and collects each sample's full result.</summary>
    public IReadOnlyList<GenerationResult> Generate(IReadOnlyList<GenerationRequest> requests, CancellationToken cancellation = default)
    {
        var prompts = requests.Select(PromptIds).ToArray();
        var tokens = new Dictionary<(int, int), List<int>>();
        var text = new Dictionary<(int, int), System.Text.StringBuilder>();
        var results = new List<GenerationResult>();
        foreach (var e in Run(requests, cancellation))
        {
            var key = (e.Request, e.Sample);
            if (!tokens.TryGetValue(key, out var list)) { tokens[key] = list = new(); text[key] = new(); }
            if (e.Token is int t) list.Add(t);
            text[key].Append(e.Text);
            if (e.Finish is FinishReason f) results.Add(new GenerationResult(e.Request, e.Sample, prompts[e.Request], list, text[key].ToString(), f));
        }
        return results.OrderBy(r => r.Request).ThenBy(r => r.Sample).ToArray();
    }

    private IEnumerable<GenerationEvent> Advance(Sample s, GenerationRequest req, float[] logits)
    {
        if (req.MaxNewTokens == 0)
        {
            yield return Finish(s, FinishReason.Length, null);
            yield break;
        }
        if (_usableVocab < logits.Length) logits.AsSpan(_usableVocab).Fill(float.NegativeInfinity);
        int token = Sampler.Sample(logits, req.Sampling, s.Seen, s.Rng.NextDouble());
        s.Tokens.Add(token);
        s.LastToken = token;
        if (req.Sampling.RepetitionPenalty != 1f) s.Seen.Add(token);

        bool eos = !req.IgnoreEos && (tokenizer.EosIds.Contains(token) || backend.Config.EosTokenIds.Contains(token));
        if (eos)
        {
            yield return Finish(s, FinishReason.EndOfSequence, token);
            yield break;
        }
        var (release, stopped) = s.Stops.Push(s.Text.Append(token));
        if (stopped)
        {
            s.Finish = FinishReason.Stop;
            s.Cache.Dispose();
            yield return new GenerationEvent(s.Request, s.Index, token, release, FinishReason.Stop);
            yield break;
        }
        if (s.Tokens.Count >= req.MaxNewTokens || s.Cache.Length >= backend.Config.MaxPositions)
        {
            var last = Finish(s, FinishReason.Length, token);
            yield return last with { Text = release + last.Text };
            yield break;
        }
        yield return new GenerationEvent(s.Request, s.Index, token, release, null);
    }

    /// <summary>
    /// Ends a sample: the bytes still held by the text stream go through the stop matcher too (they may complete a
    /// stop string, which then becomes the finish reason), and the sample's cache is released at once.
    /// </summary>
    private static GenerationEvent Finish(Sample s, FinishReason reason, int? token)
    {
        var (release, stopped) = s.Stops.Push(s.Text.Flush());
        string text = stopped ? release : release + s.Stops.Flush();
        s.Finish = stopped ? FinishReason.Stop : reason;
        s.Cache.Dispose();
        return new GenerationEvent(s.Request, s.Index, token, text, s.Finish);
    }
}

