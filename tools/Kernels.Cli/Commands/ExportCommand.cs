// `kernels export`: writes a model in another file format (GGUF for llama.cpp and the benchmarks' peer comparison).
using System.CommandLine;
using Kernels.Runtime.Models;

namespace Kernels.Cli.Commands;

public static class ExportCommand
{
    public static Command Create(CliIo io)
    {
        var model = new ModelOptions();
        var format = new Option<string>("--format") { Description = "Output format", DefaultValueFactory = _ => "gguf" };
        format.AcceptOnlyFromAmong("gguf");
        var dtype = new Option<string>("--dtype") { Description = "Weight type of the 2-D tensors: f32, f16 or q8_0", DefaultValueFactory = _ => "f16" };
        dtype.AcceptOnlyFromAmong("f32", "f16", "q8_0");
        var output = new Option<string>("--out", "-o") { Description = "Output file", Required = true };
        var command = new Command("export", "Write the model as a GGUF file (llama.cpp-compatible)");
        model.AddTo(command);
        foreach (var o in new Option[] { format, dtype, output }) command.Options.Add(o);
        command.SetAction(parse =>
        {
            var type = parse.GetValue(dtype) switch
            {
                "f32" => TensorDType.F32,
                "q8_0" => TensorDType.Q8_0,
                _ => TensorDType.F16,
            };
            string path = parse.GetValue(output)!;
            using var loaded = model.Load(parse, io);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            GgufExport.Write(loaded, path, type);
            io.Error.WriteLine($"wrote {path} ({new FileInfo(path).Length / 1e6:F1} MB, {type.Name()} weights) in {clock.Elapsed.TotalSeconds:F1} s");
            return 0;
        });
        return command;
    }
}
