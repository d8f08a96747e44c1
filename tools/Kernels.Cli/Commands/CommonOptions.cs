// Options shared by every command that runs a model, and the one place that loads model + backend from them.
using System.CommandLine;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;

namespace Kernels.Cli.Commands;

public sealed class ModelOptions
{
    public const string DefaultModel = "synthetic:small";

    public Option<string> Model { get; } = new("--model", "-m")
    {
        Description = "Model: a Hugging Face directory, a .gguf file, a llama2.c .bin, or synthetic:tiny|small (seeded random weights)",
        DefaultValueFactory = _ => DefaultModel,
    };

    public Option<string?> Tokenizer { get; } = new("--tokenizer")
    {
        Description = "Tokenizer file (tokenizer.json, tokenizer.model or tok*.bin) when it is not found next to the model",
    };

    public Option<string> Backend { get; } = new("--backend")
    {
        Description = "Compute backend: auto (CUDA when a GPU, its driver and the kernels are present and the model is supported, else the CPU), cpu, or cuda (fails when CUDA is unavailable)",
        DefaultValueFactory = _ => "auto",
    };

    public Option<string> KvCache { get; } = new("--kv-cache")
    {
        Description = "KV cache format: fp32 (exact), fp16, kivi2 or kivi4 (KIVI: keys per channel, values per token, " +
                      "2/4-bit over groups of G, the most recent R tokens fp16)",
        DefaultValueFactory = _ => "fp32",
    };

    public Option<int> KvGroup { get; } = new("--kv-group")
    {
        Description = "KIVI group size G: tokens per key group (and per KV block), channels per value group",
        DefaultValueFactory = _ => 32,
    };

    public Option<int> KvWindow { get; } = new("--kv-window")
    {
        Description = "KIVI window R: the most recent tokens of a sequence kept full precision (fp16)",
        DefaultValueFactory = _ => 128,
    };

    public ModelOptions()
    {
        KvCache.AcceptOnlyFromAmong("fp32", "fp16", "kivi2", "kivi4");
    }

    /// <summary>Adds --model, --tokenizer and the KV cache options, and --backend for commands that run the model.</summary>
    public void AddTo(Command command, bool runsModel = true)
    {
        command.Options.Add(Model);
        command.Options.Add(Tokenizer);
        command.Options.Add(KvCache);
        command.Options.Add(KvGroup);
        command.Options.Add(KvWindow);
        if (runsModel) command.Options.Add(Backend);
    }

    /// <summary>The CPU backend options the command line asks for (the KV cache format).</summary>
    public CpuBackendOptions CpuOptions(ParseResult parse) => new()
    {
        KvCache = new KvCacheFormat
        {
            Kind = KvCacheFormat.ParseKind(parse.GetValue(KvCache) ?? "fp32"),
            Group = parse.GetValue(KvGroup),
            Window = parse.GetValue(KvWindow),
        },
    };

    /// <summary>The flags of KvCacheFormat's properties, which its ArgumentExceptions name.</summary>
    private static readonly Dictionary<string, string> KvFlags = new(StringComparer.Ordinal)
    {
        [nameof(KvCacheFormat.Kind)] = "--kv-cache",
        [nameof(KvCacheFormat.Group)] = "--kv-group",
        [nameof(KvCacheFormat.Window)] = "--kv-window",
    };

    /// <summary>Runs <paramref name="create"/>, turning a KV-format error into a usage error that names the option.</summary>
    public static T WithKvOptionErrors<T>(Func<T> create)
    {
        try
        {
            return create();
        }
        catch (ArgumentException e) when (CliUsageException.FromArgument(e, KvFlags) is { } usage)
        {
            throw usage;
        }
    }

    public LoadedModel Load(ParseResult parse, CliIo io)
    {
        string model = parse.GetValue(Model) ?? DefaultModel;
        var started = System.Diagnostics.Stopwatch.StartNew();
        var loaded = ModelLoader.Load(model, new ModelLoadOptions { TokenizerPath = parse.GetValue(Tokenizer) });
        io.Error.WriteLine($"model: {model} ({loaded.Format}, {loaded.Config.Architecture}, {loaded.Config.ParameterCount / 1e6:F1}M parameters, loaded in {started.Elapsed.TotalSeconds:F2} s)");
        if (loaded.Format == ModelFormat.Synthetic) io.Error.WriteLine("note: synthetic models have random weights, so their text is noise");
        return loaded;
    }

    internal IBackend CreateBackend(LoadedModel model, ParseResult parse, CliIo io)
    {
        var kind = BackendSelector.Parse(parse.GetValue(Backend) ?? "auto");
        var cpu = WithKvOptionErrors(() => CpuOptions(parse));
        var (backend, description) = WithKvOptionErrors(() => BackendSelector.Create(model, cpu, kind));
        // The CUDA backend's description names its own KV cache (a KIVI format, or its 16-bit rows).
        io.Error.WriteLine(backend is Kernels.Runtime.Backends.Cpu.CpuBackend ? $"backend: {description}; kv cache {cpu.KvCache}" : $"backend: {description}");
        return backend;
    }
}
