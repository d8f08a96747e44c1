// Batched generation: many prompts, n samples each, one KV cache per sample, every step one forward for all.
using Kernels.Runtime.Backends;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Tokenization;

namespace Kernels.Runtime.Engine;

public sealed record GeneratorOptions
{
    /// <summary>Most prompt tokens run through one forward step (bounds activation memory; longer prompts are chunked).</summary>
    public int PrefillTokenBudget { get; init; } = 2048;

    /// <summary>
    /// Share KV blocks of common prompt prefixes (prefill once, cached across requests) and attend to them once per
    /// step for all sharers (Hydragen). Off: every sequence holds and attends to its own copy (the baseline).
    /// </summary>
    public bool PrefixSharing { get; init; } = true;
}

/// <summary>
/// Runs requests to completion on one backend. Each step is one forward over every live sample's next token plus
/// chunks of admitted prompts (up to the prefill budget). Requests are admitted in order when the KV pool can hold
/// their worst case (prompt plus max new tokens for every sample), so a running request never runs out of memory.
/// With prefix sharing, a prompt's cached prefix blocks are reused instead of prefilled, samples of one prompt share
/// its blocks, and attention runs through an <see cref="AttentionPlan"/> built from the shared blocks. Each sample
/// has its own sampler state seeded by (request seed, sample index), so outputs do not depend on the batch.
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

    /// <summary>The KV memory the generator draws from (the backend's).</summary>
    public KvBlockPool KvPool => backend.KvPool;

    private bool Sharing => _options.PrefixSharing && backend.Config.SlidingWindow == null;

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

    /// <summary>A request between admission and the end of its prompt's prefill.</summary>
    private sealed class Prefill
    {
        public required int Request;
        public required IKvCache Cache;
        public required int[] Prompt;
        public int Done; // prompt tokens already in the cache (reused from the prefix tree or computed)
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
        var pool = backend.KvPool;
        for (int r = 0; r < requests.Count; r++)
        {
            int need = WorstCaseBlocks(requests[r], prompts[r], 0);
            if (need > pool.Capacity)
                throw new KvCacheExhaustedException($"request {r} needs up to {need} KV blocks ({prompts[r].Length} prompt tokens, " +
                    $"{requests[r].N} x {requests[r].MaxNewTokens} new), the pool holds {pool.Capacity}; give the KV cache more memory or ask for fewer tokens");
        }
        var waiting = new Queue<int>(Enumerable.Range(0, requests.Count));
        var prefills = new List<Prefill>();
        var samples = new List<Sample>();
        try
        {
            while (true)
            {
                Admit(requests, prompts, waiting, prefills, samples);
                var live = samples.Where(s => s.Finish == null).ToList();
                if (live.Count == 0 && prefills.Count == 0)
                {
                    if (waiting.Count == 0) break;
                    throw new InvalidOperationException("no request could be admitted although nothing runs");
                }
                if (cancellation.IsCancellationRequested)
                {
                    foreach (var s in live) yield return Finish(s, FinishReason.Cancelled, null);
                    foreach (var p in prefills) p.Cache.Dispose();
                    prefills.Clear();
                    foreach (int r in waiting)
                        for (int n = 0; n < requests[r].N; n++)
                            yield return new GenerationEvent(r, n, null, "", FinishReason.Cancelled);
                    break;
                }

                // One step: a token for every live sample, then prompt chunks up to the budget.
                var batch = new List<SequenceStep>(live.Count + prefills.Count);
                foreach (var s in live) batch.Add(new SequenceStep(s.Cache, new[] { s.LastToken }));
                var chunks = new List<(Prefill Prefill, int Tokens)>();
                int budget = _options.PrefillTokenBudget;
                foreach (var p in prefills)
                {
                    if (budget == 0) break;
                    int take = Math.Min(budget, p.Prompt.Length - p.Done);
                    batch.Add(new SequenceStep(p.Cache, p.Prompt.AsMemory(p.Done, take)));
                    chunks.Add((p, take));
                    budget -= take;
                }
                var plan = Sharing ? AttentionPlanner.Build(batch) : null;
                var logits = backend.Forward(batch, plan);

                for (int i = 0; i < live.Count; i++)
                    foreach (var e in Advance(live[i], requests[live[i].Request], logits[i])) yield return e;
                for (int i = 0; i < chunks.Count; i++)
                {
                    var (p, take) = chunks[i];
                    p.Done += take;
                    if (p.Done < p.Prompt.Length) continue;
                    prefills.Remove(p);
                    foreach (var e in StartSamples(p, requests[p.Request], logits[live.Count + i], samples)) yield return e;
                }
            }
        }
        finally
        {
            foreach (var p in prefills) p.Cache.Dispose();
            foreach (var s in samples) s.Cache.Dispose(); // disposing a finished sample's cache again is a no-op
        }
    }

    /// <summary>
    /// Admits waiting requests in order while the pool can hold their worst case next to what the running ones may
    /// still allocate. With sharing, a request whose prompt shares a block with a prompt still being prefilled waits
    /// one step, so the shared part is computed once and then reused from the prefix tree.
    /// </summary>
    private void Admit(IReadOnlyList<GenerationRequest> requests, int[][] prompts, Queue<int> waiting, List<Prefill> prefills, List<Sample> samples)
    {
        var pool = backend.KvPool;
        while (waiting.Count > 0)
        {
            int r = waiting.Peek();
            var prompt = prompts[r];
            IReadOnlyList<int> cached = [];
            if (Sharing)
            {
                if (prefills.Any(p => CommonPrefix(p.Prompt, prompt) >= pool.BlockSize)) return;
                cached = pool.Prefixes.Match(prompt, prompt.Length - 1);
            }
            int need = WorstCaseBlocks(requests[r], prompt, cached.Count);
            long available = pool.FreeBlocks + (Sharing ? pool.Prefixes.Evictable() - cached.Count(b => pool.RefCount(b) == 1) : 0)
                             - OutstandingBlocks(requests, prefills, samples);
            bool idle = prefills.Count == 0 && samples.All(s => s.Finish != null);
            if (need > available && !idle) return;
            waiting.Dequeue();
            var cache = cached.Count > 0 ? new KvSequence(pool, cached, cached.Count * pool.BlockSize) : backend.CreateCache();
            prefills.Add(new Prefill { Request = r, Cache = cache, Prompt = prompt, Done = cache.Length });
        }
    }

    private static int CommonPrefix(int[] a, int[] b)
    {
        int n = Math.Min(a.Length, b.Length), i = 0;
        while (i < n && a[i] == b[i]) i++;
        return i;
    }

    /// <summary>The final length of a sample: prompt plus new tokens, capped by the context.</summary>
    private int FinalLength(GenerationRequest request, int promptLength) =>
        Math.Min(promptLength + request.MaxNewTokens, backend.Config.MaxPositions);

    /// <summary>
    /// Blocks a request may allocate from admission to its end: its prompt beyond the cached blocks, then per sample
    /// the blocks up to its final length. Samples share the prompt's full blocks (with sharing on); each writes its
    /// own copy of the partly filled tail block.
    /// </summary>
    private int WorstCaseBlocks(GenerationRequest request, int[] prompt, int cachedBlocks)
    {
        var pool = backend.KvPool;
        int total = pool.BlocksFor(FinalLength(request, prompt.Length));
        int shared = Sharing ? prompt.Length / pool.BlockSize : 0;
        return total - cachedBlocks + (request.N - 1) * (total - shared);
    }

    /// <summary>What running requests may still allocate: prefills their whole worst case minus what they hold, samples their growth.</summary>
    private int OutstandingBlocks(IReadOnlyList<GenerationRequest> requests, List<Prefill> prefills, List<Sample> samples)
    {
        var pool = backend.KvPool;
        int total = 0;
        foreach (var p in prefills)
        {
            int held = p.Cache is KvSequence seq ? seq.Blocks.Count : 0;
            total += Math.Max(0, WorstCaseBlocks(requests[p.Request], p.Prompt, 0) - held);
        }
        foreach (var s in samples)
        {
            if (s.Finish != null || s.Cache is not KvSequence seq) continue;
            int final = pool.BlocksFor(FinalLength(requests[s.Request], seq.Length - s.Tokens.Count + 1));
            int growth = Math.Max(0, final - seq.Blocks.Count);
            bool sharedTail = seq.Length % pool.BlockSize != 0 && pool.RefCount(seq.Blocks[^1]) > 1;
            total += growth + (sharedTail ? 1 : 0);
        }
        return total;
    }

    /// <summary>The prompt is in the cache: cache its full blocks, fork the samples, sample their first tokens.</summary>
    private IEnumerable<GenerationEvent> StartSamples(Prefill p, GenerationRequest req, float[] lastLogits, List<Sample> samples)
    {
        if (Sharing && p.Cache is KvSequence seq) backend.KvPool.Prefixes.Insert(p.Prompt, seq.Blocks);
        ulong seed = req.Sampling.Seed ?? (ulong)Random.Shared.NextInt64();
        bool promptIsControlOnly = p.Prompt.All(id => tokenizer.TokenBytes(id).Length == 0);
        var created = new List<Sample>();
        for (int n = 0; n < req.N; n++)
        {
            var s = new Sample
            {
                Request = p.Request,
                Index = n,
                Cache = n == 0 ? p.Cache : Fork(p.Cache),
                Rng = new SamplerRng(seed, (ulong)n),
                // A continuation keeps its leading space; text decoded from BOS drops the dummy prefix.
                Text = new TokenTextStream(tokenizer, atStart: promptIsControlOnly),
                Stops = new StopStringMatcher(req.Stop),
                Seen = req.Sampling.RepetitionPenalty != 1f ? new HashSet<int>(p.Prompt) : [],
            };
            samples.Add(s);
            created.Add(s);
        }
        foreach (var s in created)
            foreach (var e in Advance(s, req, (float[])lastLogits.Clone())) yield return e;
    }

    /// <summary>A sample's own cache: shared blocks (sharing on) or a full private copy (the baseline).</summary>
    private IKvCache Fork(IKvCache prompt) => Sharing || prompt is not KvSequence seq ? prompt.Fork() : seq.Copy();

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

