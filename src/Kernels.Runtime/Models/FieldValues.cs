// How readers print the values they refuse: the same text for a number whatever file format it came from.
using System.Globalization;

namespace Kernels.Runtime.Models;

internal static class FieldValues
{
    /// <summary>A real as a reader's error shows it: "inf", "-inf", "nan", else the shortest round-trip form.</summary>
    public static string Format(double value) =>
        double.IsNaN(value) ? "nan"
        : double.IsPositiveInfinity(value) ? "inf"
        : double.IsNegativeInfinity(value) ? "-inf"
        : value.ToString("R", CultureInfo.InvariantCulture);
}
