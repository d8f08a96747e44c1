// `kernels logits`: the logits at the last position of a token sequence, for scripting and cross-checks.
using System.CommandLine;
using System.Globalization;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Engine;

namespace Kernels.Cli.Commands;

public static class LogitsCommand
{
    public static Command Create(CliIo io)
    {
        var model = new ModelOptions();
        var ids = new Option<string>("--ids") { Description = "Comma-separated token ids, e.g. 1,5,9", Required = true };
        var format = new Option<string>("--format") { Description = "text or json ({\"logits\":[...]})", DefaultValueFactory = _ => "text" };
        format.AcceptOnlyFromAmong("text", "json");
        var command = new Command("logits", "Print the logits of the last position of a token sequence");
        model.AddTo(command);
        command.Options.Add(ids);
        command.Options.Add(format);
        command.SetAction(parse =>
        {
            var tokens = ParseIds(parse.GetValue(ids)!);
            using var loaded = model.Load(parse, io);
            if (tokens.Length > loaded.Config.MaxPositions)
                throw new CliUsageException($"--ids: {tokens.Length} tokens exceed the model's context of {loaded.Config.MaxPositions}");
            foreach (int t in tokens)
                if ((uint)t >= (uint)loaded.Config.VocabSize)
                    throw new CliUsageException($"--ids: token id {t} is outside the vocabulary of {loaded.Config.VocabSize}");
            using var backend = model.CreateBackend(loaded, parse, io);
            using var cache = backend.CreateCache();
            var logits = backend.Forward([new SequenceStep(cache, tokens)])[0];
            var values = string.Join(",", logits.Select(v => v.ToString("R", CultureInfo.InvariantCulture)));
            io.Out.WriteLine(parse.GetValue(format) == "json" ? $"{{\"logits\":[{values}]}}" : values.Replace(",", "\n"));
            return 0;
        });
        return command;
    }

    private static int[] ParseIds(string text)
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0) throw new CliUsageException("--ids: no token ids given");
        return parts.Select(p => int.TryParse(p, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v)
            ? v : throw new CliUsageException($"--ids: '{p}' is not an integer token id")).ToArray();
    }
}
