// What one HTTP request may ask of the server: its fan-out, its stop strings, its tokens, its headers. Checked before
// any work is queued; a request over a limit is a 400 (431 for headers) naming the parameter and the limit.
namespace Kernels.Server;

public sealed record RequestLimits
{
    /// <summary>Most choices (prompts x n) one request may ask for: each is a sequence the engine decodes.</summary>
    public int MaxChoices { get; init; } = 128;

    /// <summary>Most stop strings one request may give (the chat template's own end markers are not counted).</summary>
    public int MaxStopStrings { get; init; } = 16;

    /// <summary>Longest stop string, in UTF-16 code units (what the matcher holds back while streaming).</summary>
    public int MaxStopLength { get; init; } = 256;

    /// <summary>
    /// Most tokens one request may ask for: the sum over its prompts of the prompt's tokens plus n x max_tokens (each
    /// capped at what the context leaves), i.e. the work its fan-out can queue.
    /// </summary>
    public long MaxRequestTokens { get; init; } = 1 << 18;

    /// <summary>Most bytes of request headers (names and values), and most header fields: above either, 431.</summary>
    public int MaxHeaderBytes { get; init; } = 32 << 10;
    public int MaxHeaderCount { get; init; } = 100;

    /// <summary>Longest request target (path and query): above it, 414.</summary>
    public int MaxTargetLength { get; init; } = 8 << 10;

    /// <summary>Throws ArgumentException naming the setting (as its `kernels serve` option) when a value is out of range.</summary>
    public void Validate()
    {
        if (MaxChoices < 1) throw new ArgumentException($"--max-choices: must be at least 1, got {MaxChoices}");
        if (MaxStopStrings < 0) throw new ArgumentException($"--max-stop-strings: must be >= 0, got {MaxStopStrings}");
        if (MaxStopLength < 1) throw new ArgumentException($"--max-stop-length: must be at least 1, got {MaxStopLength}");
        if (MaxRequestTokens < 1) throw new ArgumentException($"--max-request-tokens: must be at least 1, got {MaxRequestTokens}");
        if (MaxHeaderBytes < 1024 || MaxHeaderCount < 8 || MaxTargetLength < 256)
            throw new ArgumentException("header limits: at least 1 KiB of headers, 8 fields and a 256-character target");
    }
}
