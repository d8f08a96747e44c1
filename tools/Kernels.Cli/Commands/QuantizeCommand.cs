// `kernels quantize`: writes a model directory whose linear layers are quantized (W4A8, SqueezeLLM); every command
// loads the output like any other model.
using System.CommandLine;
using Kernels.Runtime.Calibration;
using Kernels.Runtime.Models;
using Kernels.Runtime.Quantization;

namespace Kernels.Cli.Commands;

public static class QuantizeCommand
{
    /// <summary>
    /// The flags of QuantizeOptions' properties, which the methods' ArgumentExceptions name (the calibration runner's
    /// calibrationFile parameter too, hence ignoring case).
    /// </summary>
    private static readonly Dictionary<string, string> OptionFlags = new(StringComparer.OrdinalIgnoreCase)
    {
        [nameof(QuantizeOptions.Bits)] = "--bits",
        [nameof(QuantizeOptions.GroupSize)] = "--group",
        [nameof(QuantizeOptions.SparsityPercent)] = "--sparsity",
        [nameof(QuantizeOptions.CalibrationFile)] = "--calib",
    };

    public static Command Create(CliIo io)
    {
        var model = new ModelOptions();
        var method = new Option<string>("--method") { Description = $"Quantization method: {string.Join(", ", QuantizationMethods.Names)}", Required = true };
        var group = new Option<string?>("--group") { Description = "Input channels per quantization group, or 'channel' for one group per output channel" };
        var bits = new Option<int?>("--bits") { Description = "Bits per weight code (squeezellm: 3 or 4)" };
        var sparsity = new Option<string?>("--sparsity") { Description = "Share of weights kept as full-precision sparse outliers, e.g. 0.45%" };
        var calib = new Option<string?>("--calib") { Description = "Calibration text file (default: the method's built-in choice)" };
        var seed = new Option<int>("--seed") { Description = "Seed of any randomized step (same seed, same output)", DefaultValueFactory = _ => 1234 };
        var output = new Option<string>("--out", "-o") { Description = "Output model directory", Required = true };
        var command = new Command("quantize", "Quantize the model's linear layers offline and write a loadable model directory");
        model.AddTo(command, runsModel: false);
        foreach (var o in new Option[] { method, group, bits, sparsity, calib, seed, output }) command.Options.Add(o);
        command.SetAction(parse =>
        {
            string name = parse.GetValue(method)!;
            if (!QuantizationMethods.Names.Contains(name))
                throw new CliUsageException($"--method: unknown method '{name}'; supported: {string.Join(", ", QuantizationMethods.Names)}");
            var options = new QuantizeOptions
            {
                Method = name,
                GroupSize = ParseGroup(parse.GetValue(group)),
                Bits = parse.GetValue(bits),
                SparsityPercent = ParsePercent(parse.GetValue(sparsity)),
                CalibrationFile = parse.GetValue(calib),
                Seed = parse.GetValue(seed),
                Progress = line => io.Error.WriteLine(CliUsageException.WithFlags(line)),
            };
            if (options.CalibrationFile is { } file && !File.Exists(file)) throw new CliUsageException($"--calib: {file}: file not found");
            string path = parse.GetValue(output)!;
            using var loaded = model.Load(parse, io);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            ILinearQuantizer quantizer;
            try
            {
                quantizer = QuantizationMethods.Find(name, "--method").CreateQuantizer(options, loaded, new CpuCalibrationRunner());
            }
            catch (ArgumentException e)
            {
                throw CliUsageException.FromArgument(e, OptionFlags) ?? new CliUsageException(e.Message);
            }
            HfModelWriter.Write(loaded, path, quantizer, options.Progress);
            long bytes = Directory.EnumerateFiles(path, "*.safetensors").Sum(f => new FileInfo(f).Length);
            io.Error.WriteLine($"wrote {path} ({bytes / 1e6:F1} MB of safetensors, {name}) in {clock.Elapsed.TotalSeconds:F1} s");
            return 0;
        });
        return command;
    }

    private static int? ParseGroup(string? text) => text switch
    {
        null => null,
        "channel" => 0,
        _ when int.TryParse(text, out int g) && g > 0 => g,
        _ => throw new CliUsageException($"--group: '{text}' is neither a positive integer nor 'channel'"),
    };

    private static double? ParsePercent(string? text)
    {
        if (text is null) return null;
        string number = text.EndsWith('%') ? text[..^1] : text;
        if (!double.TryParse(number, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double p) || p < 0 || p >= 100)
            throw new CliUsageException($"--sparsity: '{text}' is not a percentage in [0, 100)");
        return p;
    }
}
