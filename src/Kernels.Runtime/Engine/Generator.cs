// Batched generation of a fixed set of requests: submits them all to a Scheduler and steps it until they finish.
using Kernels.Runtime.Backends;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Tokenization;

namespace Kernels.Runtime.Engine;

/// <summary>
/// The synchronous front of the <see cref="Scheduler"/>: many prompts, n samples each, streamed as events whose
/// Request field is the request's index. Each sample has its own sampler state seeded by (request seed, sample
/// index), so outputs do not depend on the batch.
/// </summary>
internal sealed class Generator(IBackend backend, ITextTokenizer tokenizer, GeneratorOptions? options = null)
{
    private readonly GeneratorOptions _options = Validate(options ?? new GeneratorOptions());

    private static GeneratorOptions Validate(GeneratorOptions o)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(o.PrefillTokenBudget, 1, nameof(options));
        return o;
    }

    /// <summary>The KV memory the generator draws from (the backend's).</summary>
    public KvBlockPool KvPool => backend.KvPool;

    /// <summary>Preemptions of the last run.</summary>
    public long Preemptions { get; private set; }

    /// <summary>Tokenizes and checks a request; throws <see cref="RequestValidationException"/> when it cannot run.</summary>
    public int[] PromptIds(GenerationRequest request) => new Scheduler(backend, tokenizer, _options).PromptIds(request);

    /// <summary>Runs every request; yields events as tokens are produced. Caches are released when the run ends.</summary>
    public IEnumerable<GenerationEvent> Run(IReadOnlyList<GenerationRequest> requests, CancellationToken cancellation = default)
    {
        var prompts = requests.Select(PromptIds).ToArray(); // validate everything before any work
        return Run(requests, prompts, cancellation);
    }

    private IEnumerable<GenerationEvent> Run(IReadOnlyList<GenerationRequest> requests, int[][] prompts, CancellationToken cancellation)
    {
        var scheduler = new Scheduler(backend, tokenizer, _options);
        for (int r = 0; r < requests.Count; r++) scheduler.Submit(r, requests[r], prompts[r]);
        bool cancelled = false;
        try
        {
            while (scheduler.HasWork)
            {
                if (cancellation.IsCancellationRequested && !cancelled)
                {
                    for (int r = 0; r < requests.Count; r++) scheduler.Cancel(r);
                    cancelled = true;
                }
                foreach (var e in scheduler.Step()) yield return e;
            }
        }
        finally
        {
            Preemptions = scheduler.Preemptions;
            scheduler.Clear();
        }
    }

    /// <summary>Runs the requests and collects each sample's full result.</summary>
    public IReadOnlyList<GenerationResult> Generate(IReadOnlyList<GenerationRequest> requests, CancellationToken cancellation = default)
    {
        var prompts = requests.Select(PromptIds).ToArray();
        var collector = new GenerationResultCollector(requests, prompts);
        foreach (var e in Run(requests, prompts, cancellation)) collector.Add(e);
        return collector.Results;
    }
}
