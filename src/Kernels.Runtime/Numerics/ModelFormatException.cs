// The one exception type for bad model input: it names the file (or argument) and the problem.
namespace Kernels.Runtime.Numerics;

public sealed class ModelFormatException : Exception
{
    public string Location { get; }

    public ModelFormatException(string source, string problem, Exception? inner = null)
        : base($"{source}: {problem}", inner)
    {
        Location = source;
    }
}
