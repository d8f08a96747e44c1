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

    public void AddTo(Command command)
    {
        command.Options.Add(Model);
        command.Options.Add(Tokenizer);
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

    public static IBackend CreateBackend(LoadedModel model, CliIo io)
    {
        var (backend, description) = BackendSelector.Create(model);
        io.Error.WriteLine($"backend: {description}");
        return backend;
    }
}
