// Options shared by every command that runs a model, and the one place that loads model + backend from them.
using System.CommandLine;
using Kernels.Runtime.Backends;
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

    /// <summary>Adds --model and --tokenizer, and --backend for commands that run the model.</summary>
    public void AddTo(Command command, bool runsModel = true)
    {
        command.Options.Add(Model);
        command.Options.Add(Tokenizer);
        if (runsModel) command.Options.Add(Backend);
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

    public IBackend CreateBackend(LoadedModel model, ParseResult parse, CliIo io)
    {
        var kind = BackendSelector.Parse(parse.GetValue(Backend) ?? "auto");
        var (backend, description) = BackendSelector.Create(model, kind: kind);
        io.Error.WriteLine($"backend: {description}");
        return backend;
    }
}
