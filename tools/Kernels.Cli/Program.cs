// `kernels`: the command-line front end (generate, logits, info, perplexity, export, quantize, serve, route); errors become one clear line and exit 1.
using System.CommandLine;
using Kernels.Cli.Commands;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Numerics;

namespace Kernels.Cli;

public static class Program
{
    public static int Main(string[] args) => Run(args, Console.Out, Console.Error);

    /// <summary>Runs one command line with the given output streams; returns the process exit code.</summary>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var io = new CliIo(stdout, stderr);
        var root = new RootCommand("kernels: batch LLM inference for Llama-family models (Llama 2/3/3.1, Mistral, Qwen2)");
        root.Subcommands.Add(GenerateCommand.Create(io));
        root.Subcommands.Add(LogitsCommand.Create(io));
        root.Subcommands.Add(InfoCommand.Create(io));
        root.Subcommands.Add(PerplexityCommand.Create(io));
        root.Subcommands.Add(ExportCommand.Create(io));
        root.Subcommands.Add(QuantizeCommand.Create(io));
        root.Subcommands.Add(ServeCommand.Create(io));
        root.Subcommands.Add(RouteCommand.Create(io));
        var parsed = root.Parse(args);
        try
        {
            return parsed.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) when (Describe(e) is { } message)
        {
            stdout.Flush();
            stderr.WriteLine($"error: {message}");
            return 1;
        }
    }

    /// <summary>The flags of what a RequestValidationException names (GenerationRequest's and SamplingOptions' properties, Perplexity's window).</summary>
    private static readonly Dictionary<string, string> RequestFlags = new(StringComparer.Ordinal)
    {
        [nameof(GenerationRequest.Prompt)] = "--prompt",
        [nameof(GenerationRequest.N)] = "--n",
        [nameof(GenerationRequest.MaxNewTokens)] = "--max-tokens",
        [nameof(SamplingOptions.Temperature)] = "--temperature",
        [nameof(SamplingOptions.TopK)] = "--top-k",
        [nameof(SamplingOptions.TopP)] = "--top-p",
        [nameof(SamplingOptions.MinP)] = "--min-p",
        [nameof(SamplingOptions.RepetitionPenalty)] = "--repetition-penalty",
        ["window"] = "--window",
    };

    /// <summary>The user-facing message for errors caused by input; null lets programming errors crash loudly.</summary>
    private static string? Describe(Exception e) => e switch
    {
        ModelFormatException m => CliUsageException.WithFlags(m.Message),
        RequestValidationException r => $"{RequestFlags.GetValueOrDefault(r.Argument, r.Argument)}: {r.Reason}",
        CliUsageException u => u.Message,
        Kernels.Runtime.Backends.BackendUnavailableException b => $"--backend cuda: {b.Message}", // only an explicit choice throws
        Kernels.Runtime.KvCache.KvCacheExhaustedException k => k.Message,
        FileNotFoundException f => $"{f.FileName}: file not found",
        DirectoryNotFoundException d => d.Message,
        UnauthorizedAccessException a => a.Message,
        IOException io => io.Message,
        OutOfMemoryException => "out of memory: the model or batch does not fit in RAM",
        AggregateException { InnerExceptions.Count: 1 } a => Describe(a.InnerException!),
        _ => null,
    };
}

/// <summary>Where commands write: results to Out, progress and summaries to Error.</summary>
public sealed record CliIo(TextWriter Out, TextWriter Error);

/// <summary>A bad argument; the message names it.</summary>
public sealed class CliUsageException(string message) : Exception(message)
{
    /// <summary>
    /// The usage error for a library ArgumentException whose ParamName (the library's own name for the setting) has a
    /// flag in <paramref name="flags"/>: the flag, then the message without .NET's " (Parameter 'X')"; null otherwise.
    /// </summary>
    public static CliUsageException? FromArgument(ArgumentException e, IReadOnlyDictionary<string, string> flags) =>
        e.ParamName is { } name && flags.TryGetValue(name, out var flag)
            ? new CliUsageException($"{flag}: {e.Message.Replace($" (Parameter '{name}')", "")}")
            : null;

    /// <summary>Library text with the load options it points to named by their flags.</summary>
    public static string WithFlags(string text) => text.Replace("ModelLoadOptions.TokenizerPath", "--tokenizer");
}
