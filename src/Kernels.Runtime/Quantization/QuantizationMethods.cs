// The weight quantization methods the engine knows: each turns dense linear layers into its format (offline) and
// loads that format back (at model load).
using System.Runtime.CompilerServices;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Quantization;

/// <summary>What `kernels quantize` was asked for; each method reads the settings it uses and rejects the rest.</summary>
internal sealed record QuantizeOptions
{
    public required string Method { get; init; }
    /// <summary>Input channels per quantization group; 0 = one group per output channel (per-channel); null = the method's default.</summary>
    public int? GroupSize { get; init; }
    /// <summary>Bits per weight code (SqueezeLLM: 3 or 4).</summary>
    public int? Bits { get; init; }
    /// <summary>Fraction of weights kept as sparse full-precision outliers, in percent (SqueezeLLM).</summary>
    public double? SparsityPercent { get; init; }
    /// <summary>Text file whose tokens calibrate the quantizer; null = the method's default.</summary>
    public string? CalibrationFile { get; init; }
    public int Seed { get; init; } = 1234;
    /// <summary>Progress lines (to stderr in the CLI).</summary>
    public Action<string>? Progress { get; init; }
}

/// <summary>A format that also quantizes: reads its layers back (<see cref="ILinearFormat"/>) and writes them from dense ones.</summary>
internal interface IQuantizationMethod : ILinearFormat
{
    /// <summary>
    /// Prepares quantization of <paramref name="model"/>; a method that calibrates has <paramref name="calibration"/>
    /// run the model here (Calibration.CpuCalibrationRunner in the engine). Throws ArgumentException naming a bad option.
    /// </summary>
    ILinearQuantizer CreateQuantizer(QuantizeOptions options, LoadedModel model, ICalibrationRunner calibration);
}

/// <summary>The quantization methods, kept in <see cref="LinearFormats"/> so that the model loader finds their formats.</summary>
internal static class QuantizationMethods
{
    // The built-in methods are registered as the assembly loads: a model stored in their format then loads through
    // ModelLoader (in Models, which cannot name them) before anything touches this class.
#pragma warning disable CA2255 // a library's module initializer: registering its own formats is what it is for
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void RegisterBuiltIn()
    {
        Register(new W4A8.W4A8Method());
        Register(new SqueezeLlm.SqueezeLlmMethod());
    }

    /// <summary>The names of the registered methods that can quantize.</summary>
    public static IReadOnlyCollection<string> Names => LinearFormats.All.OfType<IQuantizationMethod>().Select(m => m.Name).ToArray();

    /// <summary>Adds a method beyond the built-in ones (or replaces one of the same name).</summary>
    public static void Register(IQuantizationMethod method) => LinearFormats.Register(method);

    /// <summary>The method called <paramref name="name"/>; an unknown one is a format error naming <paramref name="source"/>.</summary>
    public static IQuantizationMethod Find(string name, string source) =>
        LinearFormats.Find(name, source) as IQuantizationMethod
        ?? throw new ModelFormatException(source, $"quantization method '{name}' can load models but not quantize them; methods that quantize: {string.Join(", ", Names)}");
}
