// Continuous batching: requests join and leave at any step; prompts are prefilled in chunks that ride along with the
// decode tokens (Sarathi); KV memory admits requests optimistically and preempts the newest when it runs out.
using Kernels.Runtime.Backends;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Tokenization;

namespace Kernels.Runtime.Engine;

/// <summary>
/// Owns the running set; not thread-safe (one thread submits, cancels and steps, e.g. the engine's loop).
/// Each <see cref="Step"/> is one forward over every live sample's next token plus prompt chunks up to the budget.
/// <para>
/// Requests belong to groups (one per client submission: the prompts x n samples of one HTTP request are one group).
/// With S = <see cref="GeneratorOptions.MaxBatchSequences"/> and G groups with work, each group's fair share is
/// f = max(1, S / G) sequences. Admission takes the waiting group that runs the fewest sequences first (FIFO within a
/// group); a group already at its share waits while others do; a request that fits its group's share but not the
/// step (sequences or KV blocks, next to a one-block-per-sequence reserve counting all of its samples) preempts the
/// newest request of the group furthest over its share. The prefill budget B is split the same way: each group with
/// prompt tokens to prefill gets at least ceil(B / k) of them per step (k groups prefilling), the rest goes FIFO.
/// The bound that gives (tested): a request whose samples fit its share, with a prompt of P tokens, produces its first
/// token within ceil(P / ceil(B / G)) steps of its arrival (one step when P &lt;= B / G), however large the other
/// groups' fan-outs, as long as the KV memory holds every group's share.
/// </para>
/// <para>
/// A preempted request's blocks are freed and it goes back to the head of the queue, to be recomputed (its prompt,
/// and each sample's tokens so far) with its sampler and text state kept, so its output is exactly what it would have
/// been. A sample's lifecycle is <see cref="SampleState"/>.
/// </para>
/// </summary>
internal sealed class Scheduler
{
    private readonly IBackend _backend;
    private readonly ITextTokenizer _tokenizer;
    private readonly GeneratorOptions _options;
    private readonly int _usableVocab;

    private sealed class RequestState
    {
        public required int Id;
        public required int Group;
        public required GenerationRequest Request;
        public required int[] Prompt;
        public required StopStrings Stops;
        public ulong Seed;
        public List<Sample>? Samples; // null until the prompt's prefill completes
        public long AdmittedAt = -1;
        public bool Cancelled;
        public bool PrefixLookupCounted; // the prefix-cache metrics count a request's first admission only
    }

    /// <summary>
    /// Where a sample stands. It is born <see cref="Decoding"/> once its request's prompt is in the cache (the prompt's
    /// prefill belongs to the request); then Decoding -> Finished, or when preempted Decoding | Prefilling -> Waiting
    /// -> Prefilling -> Decoding, and a cancelled sample goes to Finished from any state.
    /// </summary>
    private enum SampleState
    {
        /// <summary>In <c>_live</c>: one token per step from its own cache.</summary>
        Decoding,
        /// <summary>Preempted: no cache, queued in <c>_waiting</c> with its request to recompute its history.</summary>
        Waiting,
        /// <summary>Its history being recomputed into a new cache (a <see cref="Prefill"/> whose Resume it is).</summary>
        Prefilling,
        /// <summary>Done (<see cref="Sample.Finish"/> says why), its cache released.</summary>
        Finished,
    }

    private sealed class Sample
    {
        public required RequestState Owner;
        public required int Index;
        public IKvCache? Cache;
        public required SamplerRng Rng;
        public required TokenTextStream Text;
        public required StopStringMatcher Stops;
        public readonly List<int> Tokens = new();
        public required HashSet<int> Seen;
        public int LastToken;
        public SampleState State { get; private set; } = SampleState.Decoding;
        /// <summary>Why the sample finished; set with <see cref="SampleState.Finished"/>.</summary>
        public FinishReason? Finish;

        /// <summary>Moves along an arrow of <see cref="SampleState"/>'s lifecycle; any other move is a scheduler bug.</summary>
        public void MoveTo(SampleState next)
        {
            bool legal = (State, next) switch
            {
                (SampleState.Decoding or SampleState.Prefilling, SampleState.Waiting) => true, // preempted
                (SampleState.Waiting, SampleState.Prefilling) => true,                          // admitted again
                (SampleState.Prefilling, SampleState.Decoding) => true,                         // history recomputed
                (not SampleState.Finished, SampleState.Finished) => true,
                _ => false,
            };
            if (!legal) throw new InvalidOperationException($"request {Owner.Id} sample {Index}: {State} -> {next} is not a step of a sample's lifecycle");
            State = next;
        }
    }

    /// <summary>Tokens to get into a cache: a request's prompt (then its samples start) or a preempted sample's history.</summary>
    private sealed class Prefill
    {
        public required RequestState Owner;
        public Sample? Resume;
        public required IKvCache Cache;
        public required int[] Tokens;
        public int Done;
        /// <summary>The prompt's log-probabilities so far (the first token's null), when its request asked for them.</summary>
        public List<TokenLogprobs?>? PromptLogprobs;
        /// <summary>The samples' random streams and penalized tokens, made when the step that draws their first tokens is built.</summary>
        public SamplerRng[]? Rngs;
        public HashSet<int>[]? Seen;
    }

    private readonly LinkedList<(RequestState Owner, List<Sample>? Resume)> _waiting = new();
    private readonly List<Prefill> _prefills = new();
    private readonly List<Sample> _live = new();
    private readonly Dictionary<int, RequestState> _requests = new();
    private long _admissions;

    public Scheduler(IBackend backend, ITextTokenizer tokenizer, GeneratorOptions? options = null)
    {
        _backend = backend;
        _tokenizer = tokenizer;
        _options = options ?? new GeneratorOptions();
        ArgumentOutOfRangeException.ThrowIfLessThan(_options.PrefillTokenBudget, 1, nameof(options));
        ArgumentOutOfRangeException.ThrowIfLessThan(_options.MaxBatchSequences, 1, nameof(options));
        _usableVocab = Math.Min(tokenizer.VocabSize, backend.Config.VocabSize);
    }

    public KvBlockPool KvPool => _backend.KvPool;
    public bool HasWork => _waiting.Count > 0 || _prefills.Count > 0 || _live.Count > 0;
    public int Waiting => _waiting.Count;
    public int RunningSequences => _prefills.Count + _live.Count;
    /// <summary>Sequences past their prefill, decoding one token per step (what the KV memory holds at length).</summary>
    public int DecodingSequences => _live.Count;
    /// <summary>Sequences preempted so far (each is recomputed later).</summary>
    public long Preemptions { get; private set; }
    /// <summary>Requests with a sequence being prefilled or decoded (a request with n samples counts once).</summary>
    public int RunningRequests => _prefills.Select(p => p.Owner).Concat(_live.Select(s => s.Owner)).Distinct().Count();
    /// <summary>Prompt tokens of the requests admitted so far (vLLM's prefix-cache queries; a request counts at its first admission only).</summary>
    public long PrefixCacheQueries { get; private set; }
    /// <summary>Of <see cref="PrefixCacheQueries"/>, the tokens found in the prefix tree (whole blocks) instead of prefilled.</summary>
    public long PrefixCacheHits { get; private set; }
    /// <summary>Called once per step after admission, right before the forward (the state metrics should show).</summary>
    public Action? BeforeForward { get; set; }

    private bool Sharing => _options.PrefixSharing && _backend.Config.SlidingWindow == null;

    // ---------------------------------------------------------------------------------------------------------------
    // Requests in and out

    /// <summary>Tokenizes and checks a request; throws <see cref="RequestValidationException"/> when it cannot run.</summary>
    public int[] PromptIds(GenerationRequest request)
    {
        if (request.N < 1) throw new RequestValidationException(nameof(GenerationRequest.N), $"must be at least 1, got {request.N}");
        if (request.N > _options.MaxBatchSequences)
            throw new RequestValidationException(nameof(GenerationRequest.N), $"must be at most {_options.MaxBatchSequences} (the most sequences in one step), got {request.N}");
        if (request.MaxNewTokens < 0) throw new RequestValidationException(nameof(GenerationRequest.MaxNewTokens), $"must be >= 0, got {request.MaxNewTokens}");
        request.Sampling.Validate();
        foreach (var (name, value) in new[] { (nameof(GenerationRequest.Logprobs), request.Logprobs), (nameof(GenerationRequest.PromptLogprobs), request.PromptLogprobs) })
            if (value is int n && (n < 0 || n > GenerationRequest.MaxLogprobs))
                throw new RequestValidationException(name, $"must be in [0, {GenerationRequest.MaxLogprobs}], got {n}");
        int[] ids = request.PromptIds?.ToArray()
                    ?? _tokenizer.Encode(request.Prompt ?? throw new RequestValidationException(nameof(GenerationRequest.Prompt), "no prompt given"),
                        request.AddBos ?? _tokenizer.AddBosByDefault);
        if (ids.Length == 0) throw new RequestValidationException(nameof(GenerationRequest.Prompt), "is empty and the tokenizer adds no BOS");
        int context = _backend.Config.MaxPositions;
        if (ids.Length >= context)
            throw new RequestValidationException(nameof(GenerationRequest.Prompt), $"is {ids.Length} tokens, the model's context is {context}: no room to generate");
        foreach (int id in ids)
            if ((uint)id >= (uint)_usableVocab)
                throw new RequestValidationException(nameof(GenerationRequest.Prompt), $"token id {id} is outside the vocabulary of {_usableVocab}");
        long need = WorstCaseBlocks(request, ids.Length);
        if (need > KvPool.Capacity || WorstCaseUnits(request, ids.Length) > KvPool.BudgetUnits)
            throw new KvCacheExhaustedException($"the request needs up to {need} KV blocks ({ids.Length} prompt tokens, {request.N} x {request.MaxNewTokens} new), " +
                $"the pool holds {KvPool.Capacity}; give the KV cache more memory or ask for fewer tokens");
        if (WorstCaseFullBlocks(request, ids.Length) is var full && full > KvPool.MaxFullBlocks)
            throw new KvCacheExhaustedException($"the request needs up to {full} full-precision KV blocks at once ({request.N} samples x their windows, or a " +
                $"prefill chunk), the pool has {KvPool.MaxFullBlocks} full-precision slots; give them a larger share of the KV memory " +
                "(CudaBackendOptions.KiviFullPrecisionShare) or ask for fewer samples");
        return ids;
    }

    /// <summary>
    /// Queues a request under <paramref name="id"/> (the Request field of its events) in <paramref name="group"/>
    /// (default: a group of its own); <paramref name="stops"/> is its compiled stop strings when the caller built them.
    /// </summary>
    public void Submit(int id, GenerationRequest request, int[]? promptIds = null, int? group = null, StopStrings? stops = null)
    {
        var prompt = promptIds ?? PromptIds(request);
        var state = new RequestState
        {
            Id = id, Group = group ?? id, Request = request, Prompt = prompt, Stops = stops ?? new StopStrings(request.Stop),
            Seed = request.Sampling.Seed ?? (ulong)Random.Shared.NextInt64(),
        };
        _requests.Add(id, state);
        _waiting.AddLast((state, null));
    }

    /// <summary>Marks a request cancelled; the next <see cref="Step"/> frees its blocks and ends its samples.</summary>
    public void Cancel(int id)
    {
        if (_requests.TryGetValue(id, out var r)) r.Cancelled = true;
    }

    /// <summary>One scheduling step: cancellations, admissions, one forward; returns the events it produced.</summary>
    public List<GenerationEvent> Step()
    {
        var events = new List<GenerationEvent>();
        ProcessCancellations(events);
        Admit();
        if (_live.Count == 0 && _prefills.Count == 0) return events;

        var (batch, decodes, chunks) = BuildBatch();
        while (!Fits(batch))
        {
            if (!PreemptLargest()) throw new KvCacheExhaustedException($"KV cache exhausted: the step needs more blocks than the pool's {KvPool.Capacity}");
            (batch, decodes, chunks) = BuildBatch();
            if (batch.Count == 0) return events;
        }
        batch = Decide(batch, decodes, chunks);
        var plan = Sharing ? AttentionPlanner.Build(batch) : null;
        BeforeForward?.Invoke();
        var outputs = _backend.Step(batch, plan);

        for (int i = 0; i < decodes.Count; i++) Advance(decodes[i], outputs[i], 0, events);
        for (int i = 0; i < chunks.Count; i++)
        {
            var (p, take) = chunks[i];
            if (p.PromptLogprobs != null)
                foreach (var t in outputs[decodes.Count + i].Targets ?? []) p.PromptLogprobs.Add(Public(t));
            p.Done += take;
            if (p.Done < p.Tokens.Length) continue;
            _prefills.Remove(p);
            if (p.Resume is { } resumed)
            {
                resumed.Cache = p.Cache; // its last sampled token is still to be fed: decoding continues from there
                resumed.MoveTo(SampleState.Decoding);
                _live.Add(resumed);
            }
            else StartSamples(p, outputs[decodes.Count + i], events);
        }
        _live.RemoveAll(s => s.State == SampleState.Finished);
        foreach (var e in events)
            if (e.Finish != null && _requests.TryGetValue(e.Request, out var r) && r.Samples != null && r.Samples.All(s => s.State == SampleState.Finished))
                _requests.Remove(e.Request);
        return events;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Admission, memory and preemption

    private void ProcessCancellations(List<GenerationEvent> events)
    {
        // One pass over each list whatever the number of cancelled requests (a client's disconnect may cancel many).
        var cancelled = _requests.Values.Where(r => r.Cancelled).ToList();
        if (cancelled.Count == 0) return;
        foreach (var p in _prefills.Where(p => p.Owner.Cancelled)) p.Cache.Dispose();
        _prefills.RemoveAll(p => p.Owner.Cancelled);
        for (var node = _waiting.First; node != null;)
        {
            var next = node.Next;
            if (node.Value.Owner.Cancelled) _waiting.Remove(node);
            node = next;
        }
        foreach (var r in cancelled)
        {
            if (r.Samples == null)
                for (int n = 0; n < r.Request.N; n++)
                    events.Add(new GenerationEvent(r.Id, n, null, "", FinishReason.Cancelled, new Usage(r.Prompt.Length, 0)));
            else
                foreach (var s in r.Samples.Where(s => s.State != SampleState.Finished)) events.Add(Finish(s, FinishReason.Cancelled, null));
            _requests.Remove(r.Id);
        }
        _live.RemoveAll(s => s.Owner.Cancelled);
    }

    /// <summary>
    /// Admits waiting work, least-served group first (see the class summary): a group at its fair share waits; a
    /// request within its share that does not fit preempts the group furthest over its share, else admission stops
    /// (so a large request is not starved by small ones queued behind it).
    /// </summary>
    private void Admit()
    {
        if (_waiting.Count == 0) return;
        var pool = KvPool;
        var running = RunningByGroup();
        int total = running.Values.Sum();
        int share = FairShare(running);
        var passed = new HashSet<int>(); // groups that wait this step (at their share, or behind a prefix being prefilled)
        while (NextWaiting(running, passed) is { } head)
        {
            var (owner, resume) = head.Value;
            int group = owner.Group, mine = running.GetValueOrDefault(group);
            var tokenLists = resume == null ? [owner.Prompt] : resume.Select(s => History(s)).ToList();
            int sequences = resume?.Count ?? owner.Request.N;
            bool withinShare = mine + sequences <= share;
            if (!withinShare && mine > 0)
            {
                passed.Add(group);
                continue;
            }
            // A prompt scored whole (its log-probabilities asked for) neither waits for nor takes cached blocks.
            bool scored = resume == null && owner.Request.PromptLogprobs != null;
            if (Sharing && !scored && resume == null && _prefills.Any(p => p.Resume == null && CommonPrefix(p.Tokens, owner.Prompt) >= pool.BlockSize))
            {
                passed.Add(group); // the shared part is being prefilled: take it from the prefix tree next step
                continue;
            }
            while (true)
            {
                var matches = tokenLists.Select(t => Sharing && !scored ? pool.Prefixes.Match(t, t.Length - 1) : (IReadOnlyList<int>)[]).ToList();
                int need = 0;
                for (int i = 0; i < tokenLists.Count; i++) need += pool.BlocksFor(tokenLists[i].Length) - matches[i].Count;
                // One block of growth per running sequence, and per sample of this request (all of them will grow).
                int reserve = _live.Count + _prefills.Count + sequences;
                bool idle = _live.Count == 0 && _prefills.Count == 0;
                if (idle || (total + sequences <= _options.MaxBatchSequences && need + reserve <= pool.AvailableBlocks(Sharing)))
                {
                    _waiting.Remove(head);
                    owner.AdmittedAt = ++_admissions;
                    if (resume == null && !owner.PrefixLookupCounted)
                    {
                        owner.PrefixLookupCounted = true;
                        PrefixCacheQueries += owner.Prompt.Length;
                        PrefixCacheHits += matches[0].Count * pool.BlockSize;
                    }
                    for (int i = 0; i < tokenLists.Count; i++)
                    {
                        var cache = matches[i].Count > 0 ? new KvSequence(pool, matches[i], matches[i].Count * pool.BlockSize) : _backend.CreateCache();
                        resume?[i].MoveTo(SampleState.Prefilling);
                        _prefills.Add(new Prefill
                        {
                            Owner = owner, Resume = resume?[i], Cache = cache, Tokens = tokenLists[i], Done = cache.Length,
                            PromptLogprobs = scored ? [null] : null,
                        });
                    }
                    running[group] = mine + sequences;
                    total += sequences;
                    break;
                }
                // Room is made only for a request within its share, and only from a group over its own.
                if (!withinShare || PreemptOverShare(running, share, group) is not { } freed) return;
                total -= freed;
            }
        }
    }

    /// <summary>Running sequences (prefilling or decoding) per group.</summary>
    private Dictionary<int, int> RunningByGroup()
    {
        var running = new Dictionary<int, int>();
        foreach (var p in _prefills) running[p.Owner.Group] = running.GetValueOrDefault(p.Owner.Group) + 1;
        foreach (var s in _live) running[s.Owner.Group] = running.GetValueOrDefault(s.Owner.Group) + 1;
        return running;
    }

    /// <summary>S / G: the step's sequences shared by the groups with work (running or waiting), at least one each.</summary>
    private int FairShare(Dictionary<int, int> running)
    {
        var groups = new HashSet<int>(running.Keys);
        foreach (var (owner, _) in _waiting) groups.Add(owner.Group);
        return Math.Max(1, _options.MaxBatchSequences / Math.Max(1, groups.Count));
    }

    /// <summary>The first waiting entry of the group running the fewest sequences (ties: the entry queued first).</summary>
    private LinkedListNode<(RequestState Owner, List<Sample>? Resume)>? NextWaiting(Dictionary<int, int> running, HashSet<int> passed)
    {
        LinkedListNode<(RequestState Owner, List<Sample>? Resume)>? best = null;
        int bestRunning = int.MaxValue;
        var seen = new HashSet<int>();
        for (var node = _waiting.First; node != null; node = node.Next)
        {
            int group = node.Value.Owner.Group;
            if (passed.Contains(group) || !seen.Add(group)) continue;
            int r = running.GetValueOrDefault(group);
            if (r < bestRunning)
            {
                best = node;
                bestRunning = r;
                if (r == 0) break; // nobody runs fewer
            }
        }
        return best;
    }

    /// <summary>
    /// Preempts the newest request of the group furthest over <paramref name="share"/> (never <paramref name="except"/>);
    /// returns the sequences it freed, or null when no group is over its share.
    /// </summary>
    private int? PreemptOverShare(Dictionary<int, int> running, int share, int except)
    {
        int victimGroup = 0, count = 0;
        foreach (var (g, n) in running)
            if (g != except && n > share && n > count) (victimGroup, count) = (g, n);
        if (count == 0) return null;
        var victim = _prefills.Select(p => p.Owner).Concat(_live.Select(s => s.Owner)).Where(r => r.Group == victimGroup).MaxBy(r => r.AdmittedAt)!;
        int freed = Preempt(victim);
        running[victimGroup] = count - freed;
        return freed;
    }

    /// <summary>What a preempted sample recomputes: its prompt and every generated token but the last (still to be fed).</summary>
    private static int[] History(Sample s) => [.. s.Owner.Prompt, .. s.Tokens.Take(s.Tokens.Count - 1)];

    private (List<SequenceStep> Batch, List<Sample> Decodes, List<(Prefill, int)> Chunks) BuildBatch()
    {
        var batch = new List<SequenceStep>();
        var decodes = new List<Sample>();
        foreach (var s in _live)
        {
            batch.Add(new SequenceStep(s.Cache!, new[] { s.LastToken }));
            decodes.Add(s);
        }
        var chunks = new List<(Prefill, int)>();
        var take = PrefillShares();
        foreach (var p in _prefills)
        {
            int n = take.GetValueOrDefault(p);
            if (n <= 0) continue;
            batch.Add(new SequenceStep(p.Cache, p.Tokens.AsMemory(p.Done, n)));
            chunks.Add((p, n));
        }
        return (batch, decodes, chunks);
    }

    /// <summary>
    /// What the step answers besides the new keys, once its batch is settled (each draw takes a coin): a decoding
    /// sample's next token, a prompt's first tokens (one draw per sample) when its last chunk runs, a scored prompt's
    /// log-probabilities.
    /// </summary>
    private List<SequenceStep> Decide(List<SequenceStep> batch, List<Sample> decodes, List<(Prefill, int)> chunks)
    {
        for (int i = 0; i < decodes.Count; i++)
        {
            var s = decodes[i];
            batch[i] = batch[i] with { Choose = [Choice(s.Owner.Request, s.Seen, s.Rng)] };
        }
        for (int i = 0; i < chunks.Count; i++)
        {
            var (p, take) = chunks[i];
            var step = batch[decodes.Count + i];
            if (p.PromptLogprobs != null)
            {
                var targets = p.Tokens.AsMemory(p.Done + 1, Math.Min(take, p.Tokens.Length - p.Done - 1));
                step = step with { AllLogits = true, Score = new TargetScoring(targets, p.Owner.Request.PromptLogprobs ?? 0, _usableVocab) };
            }
            var r = p.Owner;
            if (p.Resume == null && p.Done + take == p.Tokens.Length && r.Request.MaxNewTokens > 0)
            {
                p.Rngs = new SamplerRng[r.Request.N];
                p.Seen = new HashSet<int>[r.Request.N];
                var choices = new TokenChoice[r.Request.N];
                for (int n = 0; n < r.Request.N; n++)
                {
                    p.Rngs[n] = new SamplerRng(r.Seed, (ulong)n);
                    p.Seen[n] = r.Request.Sampling.RepetitionPenalty != 1f ? new HashSet<int>(r.Prompt) : [];
                    choices[n] = Choice(r.Request, p.Seen[n], p.Rngs[n]);
                }
                step = step with { Choose = choices };
            }
            batch[decodes.Count + i] = step;
        }
        return batch;
    }

    /// <summary>A sample's next draw: its request's options, its penalized tokens and the next coin of its stream.</summary>
    private TokenChoice Choice(GenerationRequest request, HashSet<int> seen, SamplerRng rng) =>
        request.Sampling.Choice(request.Sampling.RepetitionPenalty != 1f ? seen : null, rng.NextDouble(), _usableVocab, request.Logprobs ?? -1);

    private static TokenLogprobs Public(ScoredToken t)
    {
        var top = new TokenLogprob[t.TopIds.Length];
        for (int i = 0; i < top.Length; i++) top[i] = new TokenLogprob(t.TopIds[i], t.TopLogprobs[i]);
        return new TokenLogprobs(t.Token, t.Logprob, top);
    }

    /// <summary>
    /// Prompt tokens per prefill this step: each group prefilling gets up to ceil(B / k) of the budget B (k groups),
    /// spent on its prefills in order; what is left goes to all prefills in order.
    /// </summary>
    private Dictionary<Prefill, int> PrefillShares()
    {
        var take = new Dictionary<Prefill, int>();
        int budget = _options.PrefillTokenBudget;
        if (_prefills.Count == 0) return take;
        int groups = _prefills.Select(p => p.Owner.Group).Distinct().Count();
        int quota = (budget + groups - 1) / groups;
        var spent = new Dictionary<int, int>();
        foreach (var p in _prefills)
        {
            int group = p.Owner.Group;
            int n = Math.Min(Math.Min(quota - spent.GetValueOrDefault(group), budget), p.Tokens.Length - p.Done);
            if (n <= 0) continue;
            take[p] = n;
            spent[group] = spent.GetValueOrDefault(group) + n;
            budget -= n;
        }
        foreach (var p in _prefills)
        {
            if (budget == 0) break;
            int n = Math.Min(budget, p.Tokens.Length - p.Done - take.GetValueOrDefault(p));
            if (n <= 0) continue;
            take[p] = take.GetValueOrDefault(p) + n;
            budget -= n;
        }
        return take;
    }

    /// <summary>Whether the pool can give every sequence of the batch the blocks its new tokens need.</summary>
    private bool Fits(List<SequenceStep> batch)
    {
        var pool = KvPool;
        int need = 0;
        foreach (var step in batch)
        {
            if (step.Cache is not KvSequence seq) continue;
            need += Math.Max(0, pool.BlocksFor(seq.Length + step.Tokens.Length) - seq.Blocks.Count);
            if (seq.Length % pool.BlockSize != 0 && pool.RefCount(seq.Blocks[^1]) > 1) need++; // copy-on-write of a shared tail
        }
        return need <= pool.AvailableBlocks(Sharing);
    }

    /// <summary>
    /// Frees the blocks of the most recently admitted request of the group running the most sequences and queues it
    /// first; false when only one request runs (alone it always fits: Submit checked its worst case against the pool).
    /// </summary>
    private bool PreemptLargest()
    {
        var running = _prefills.Select(p => p.Owner).Concat(_live.Select(s => s.Owner)).Distinct().ToList();
        if (running.Count <= 1) return false;
        // The group running the most sequences gives way; among equals (every client with one request), the newest
        // request, as before groups existed.
        var byGroup = RunningByGroup();
        Preempt(running.MaxBy(r => ((long)byGroup[r.Group] << 32) + r.AdmittedAt)!);
        return true;
    }

    /// <summary>Frees every block of <paramref name="victim"/> and queues it first to be recomputed; returns the sequences it ran.</summary>
    private int Preempt(RequestState victim)
    {
        int sequences = 0;
        foreach (var p in _prefills.Where(p => p.Owner == victim).ToArray())
        {
            p.Cache.Dispose();
            _prefills.Remove(p);
            sequences++;
        }
        foreach (var s in _live.Where(s => s.Owner == victim))
        {
            s.Cache!.Dispose();
            s.Cache = null;
            sequences++;
        }
        _live.RemoveAll(s => s.Owner == victim);
        // Every unfinished sample, decoding or recomputing its history (its prefill dropped above), waits to recompute.
        var toResume = victim.Samples?.Where(s => s.State != SampleState.Finished).ToList();
        foreach (var s in toResume ?? []) s.MoveTo(SampleState.Waiting);
        _waiting.AddFirst((victim, toResume));
        Preemptions += sequences;
        return sequences;
    }

    private int FinalLength(GenerationRequest request, int promptLength) => (int)Math.Min((long)promptLength + request.MaxNewTokens, _backend.Config.MaxPositions);

    /// <summary>The most blocks a request can hold at once: per sample its final length, the prompt's full blocks shared.</summary>
    private long WorstCaseBlocks(GenerationRequest request, int promptLength)
    {
        int total = KvPool.BlocksFor(FinalLength(request, promptLength));
        int shared = Sharing ? promptLength / KvPool.BlockSize : 0;
        return total + (request.N - 1L) * (total - shared);
    }

    /// <summary>
    /// The most blocks a request holds full precision at once, where the pool bounds them (a KIVI cache with fixed fp16
    /// slots): each sample its window and the block it opens before the step that compacts the oldest, or the blocks
    /// of one prefill chunk (at most the prefill budget) with the window before it.
    /// </summary>
    private long WorstCaseFullBlocks(GenerationRequest request, int promptLength)
    {
        var pool = KvPool;
        if (pool.MaxFullBlocks == int.MaxValue) return 0;
        int total = pool.BlocksFor(FinalLength(request, promptLength));
        long perSample = Math.Min(total, (long)pool.Costs.WindowBlocks + 1);
        long prefill = Math.Min(total, pool.BlocksFor(Math.Min(promptLength, _options.PrefillTokenBudget)) + (long)pool.Costs.WindowBlocks + 1);
        return Math.Max(request.N * perSample, prefill);
    }

    /// <summary>
    /// The most pool units a request can hold at once: its prompt's blocks all full precision while it is prefilled,
    /// or once settled each sample's blocks (window full precision, the rest compact in a compacting format).
    /// </summary>
    private long WorstCaseUnits(GenerationRequest request, int promptLength)
    {
        var pool = KvPool;
        int total = pool.BlocksFor(FinalLength(request, promptLength));
        int shared = Sharing ? promptLength / pool.BlockSize : 0;
        long settled = pool.SettledUnits(total) + (request.N - 1L) * pool.SettledUnits(total - shared);
        return Math.Max(settled, pool.BlocksFor(promptLength) * pool.Costs.FullBytes);
    }

    private static int CommonPrefix(int[] a, int[] b)
    {
        int n = Math.Min(a.Length, b.Length), i = 0;
        while (i < n && a[i] == b[i]) i++;
        return i;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Samples

    /// <summary>The prompt is in the cache: cache its full blocks, fork the samples, sample their first tokens.</summary>
    private void StartSamples(Prefill p, StepOutput output, List<GenerationEvent> events)
    {
        var r = p.Owner;
        if (Sharing && p.Cache is KvSequence seq) KvPool.Prefixes.Insert(r.Prompt, seq.Blocks);
        bool promptIsControlOnly = r.Prompt.All(id => _tokenizer.TokenBytes(id).Length == 0);
        r.Samples = new List<Sample>();
        for (int n = 0; n < r.Request.N; n++)
        {
            var s = new Sample
            {
                Owner = r,
                Index = n,
                Cache = n == 0 ? p.Cache : Fork(p.Cache),
                Rng = p.Rngs?[n] ?? new SamplerRng(r.Seed, (ulong)n),
                // A continuation keeps its leading space; text decoded from BOS drops the dummy prefix.
                Text = new TokenTextStream(_tokenizer, atStart: promptIsControlOnly),
                Stops = new StopStringMatcher(r.Stops), // one automaton per request, walked by each sample
                Seen = p.Seen?[n] ?? [],
            };
            r.Samples.Add(s);
            _live.Add(s);
        }
        for (int n = 0; n < r.Samples.Count; n++) Advance(r.Samples[n], output, n, events, p.PromptLogprobs);
    }

    /// <summary>A sample's own cache: shared blocks (sharing on) or a full private copy (the baseline).</summary>
    private IKvCache Fork(IKvCache prompt) => Sharing || prompt is not KvSequence seq ? prompt.Fork() : seq.Copy();

    /// <summary>
    /// Takes draw <paramref name="choice"/> of <paramref name="output"/> as the sample's next token and emits its
    /// event, with the token's log-probabilities and, on a sample's first event, the prompt's when asked.
    /// </summary>
    private void Advance(Sample s, StepOutput output, int choice, List<GenerationEvent> events, IReadOnlyList<TokenLogprobs?>? prompt = null)
    {
        var req = s.Owner.Request;
        if (req.MaxNewTokens == 0)
        {
            events.Add(Finish(s, FinishReason.Length, null) with { PromptLogprobs = prompt });
            return;
        }
        int token = output.Tokens[choice];
        var logprobs = output.Chosen[choice] is { } scored ? Public(scored) : null;
        int first = events.Count;
        Emit(s, token, events);
        for (int e = first; e < events.Count; e++) events[e] = events[e] with { Logprobs = logprobs, PromptLogprobs = prompt };
    }

    /// <summary>The events of a sample's new token: its text, or its end (EOS, a stop string, the length).</summary>
    private void Emit(Sample s, int token, List<GenerationEvent> events)
    {
        var req = s.Owner.Request;
        s.Tokens.Add(token);
        s.LastToken = token;
        if (req.Sampling.RepetitionPenalty != 1f) s.Seen.Add(token);

        bool eos = !req.IgnoreEos && (_tokenizer.EosIds.Contains(token) || _backend.Config.EosTokenIds.Contains(token));
        if (eos)
        {
            events.Add(Finish(s, FinishReason.EndOfSequence, token));
            return;
        }
        var (release, stopped) = s.Stops.Push(s.Text.Append(token));
        if (stopped)
        {
            s.Finish = FinishReason.Stop;
            s.MoveTo(SampleState.Finished);
            s.Cache?.Dispose();
            events.Add(new GenerationEvent(s.Owner.Id, s.Index, token, release, FinishReason.Stop, new Usage(s.Owner.Prompt.Length, s.Tokens.Count)));
            return;
        }
        if (s.Tokens.Count >= req.MaxNewTokens || s.Cache!.Length >= _backend.Config.MaxPositions)
        {
            var last = Finish(s, FinishReason.Length, token);
            events.Add(last with { Text = release + last.Text });
            return;
        }
        events.Add(new GenerationEvent(s.Owner.Id, s.Index, token, release, null));
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
        s.MoveTo(SampleState.Finished);
        s.Cache?.Dispose();
        return new GenerationEvent(s.Owner.Id, s.Index, token, text, s.Finish, new Usage(s.Owner.Prompt.Length, s.Tokens.Count));
    }

    /// <summary>Releases every cache of every request (the scheduler is being dropped).</summary>
    public void Clear()
    {
        foreach (var p in _prefills) p.Cache.Dispose();
        foreach (var s in _live) s.Cache?.Dispose();
        _prefills.Clear();
        _live.Clear();
        _waiting.Clear();
        _requests.Clear();
    }
}
