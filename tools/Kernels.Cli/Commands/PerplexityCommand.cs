// `kernels perplexity`: perplexity of a text file under the model (every quantization issue reports it).
using System.CommandLine;
using Kernels.Runtime.Engine;

namespace Kernels.Cli.Commands;

public static class PerplexityCommand
{
    public static Command Create(CliIo io)
    {
        var model = new ModelOptions();
        var text = new Option<string>("--text") { Description = "UTF-8 text file to score", Required = true };
        var window = new Option<int?>("--window") { Description = "Tokens per evaluation window (default: the model's context)" };
        var command = new Command("perplexity", "Print the perplexity of a text under the model");
        model.AddTo(command);
        command.Options.Add(text);
        command.Options.Add(window);
        command.SetAction(parse =>
        {
            string path = parse.GetValue(text)!;
            if (!File.Exists(path)) throw new CliUsageException($"--text: {path}: file not found");
            string content = File.ReadAllText(path);
            using var loaded = model.Load(parse, io);
            var ids = loaded.Tokenizer.Encode(content, loaded.Tokenizer.AddBosByDefault);
            using var backend = model.CreateBackend(loaded, parse, io);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            PerplexityResult result;
            try
            {
                result = Perplexity.Compute(backend, ids, parse.GetValue(window));
            }
            catch (RequestValidationException e) when (e.Argument == "ids") // Compute's token ids: the text's
            {
                throw new CliUsageException($"--text: {e.Reason}");
            }
            io.Out.WriteLine($"perplexity: {result.Perplexity:F4}");
            io.Error.WriteLine($"scored {result.Tokens} tokens in {result.Windows} window(s), mean NLL {result.MeanNll:F5} nats, {clock.Elapsed.TotalSeconds:F2} s");
            return 0;
        });
        return command;
    }
}
