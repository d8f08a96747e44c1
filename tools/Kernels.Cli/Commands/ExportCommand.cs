// `kernels export`: writes a model in another file format (GGUF for llama.cpp and the benchmarks' peer comparison, a
// Hugging Face directory for transformers and for `kernels quantize` inputs that must stay editable).
using System.CommandLine;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Cli.Commands;

public static class ExportCommand
{
    public static Command Create(CliIo io)
    {
        var model = new ModelOptions();
        var format = new Option<string>("--format") { Description = "Output format", DefaultValueFactory = _ => "gguf" };
        format.AcceptOnlyFromAmong("gguf", "hf");
        var dtype = new Option<string>("--dtype") { Description = "GGUF weight type of the 2-D tensors: f32, f16 or q8_0 (hf keeps the stored dtypes)", DefaultValueFactory = _ => "f16" };
        dtype.AcceptOnlyFromAmong("f32", "f16", "q8_0");
        var output = new Option<string>("--out", "-o") { Description = "Output file (gguf) or directory (hf)", Required = true };
        var command = new Command("export", "Write the model as a GGUF file (llama.cpp-compatible) or a Hugging Face safetensors directory");
        model.AddTo(command, runsModel: false);
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
            if (parse.GetValue(format) == "hf")
            {
                if (parse.GetResult(dtype) is { Implicit: false }) throw new CliUsageException("--dtype applies to --format gguf; hf keeps each tensor's stored dtype");
                HfModelWriter.Write(loaded, path, progress: line => io.Error.WriteLine(CliUsageException.WithFlags(line)));
                long bytes = Directory.EnumerateFiles(path, "*.safetensors").Sum(f => new FileInfo(f).Length);
                io.Error.WriteLine($"wrote {path} ({bytes / 1e6:F1} MB of safetensors) in {clock.Elapsed.TotalSeconds:F1} s");
                return 0;
            }
            GgufExport.Write(loaded, path, type);
            io.Error.WriteLine($"wrote {path} ({new FileInfo(path).Length / 1e6:F1} MB, {type.Name()} weights) in {clock.Elapsed.TotalSeconds:F1} s");
            return 0;
        });
        return command;
    }
}
