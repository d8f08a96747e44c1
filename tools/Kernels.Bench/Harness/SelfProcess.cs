// Another process of this bench (a child for a different instruction path, a hostile client): started the way this one
// was, so it works from `dotnet kernels-bench.dll` and from the self-contained single-file publish (./build.sh
// publish-device), where an assembly has no file of its own (Assembly.Location is empty there).
using System.Diagnostics;

namespace Kernels.Bench;

internal static class SelfProcess
{
    /// <summary>A start info that runs this bench with <paramref name="args"/> (the host's `dotnet`, then the dll, when that is how it runs).</summary>
    public static ProcessStartInfo StartInfo(params string[] args)
    {
        string host = Environment.ProcessPath ?? throw new InvalidOperationException("the bench's own executable path is unknown");
        var start = new ProcessStartInfo(host) { UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(host) == "dotnet")
            start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "kernels-bench.dll"));
        foreach (string a in args) start.ArgumentList.Add(a);
        return start;
    }
}
