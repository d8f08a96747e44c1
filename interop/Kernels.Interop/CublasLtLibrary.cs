// Finds and loads cuBLASLt (libcublasLt) lazily, for the dense GEMMs where it beats our own kernels (issue 16). Nothing
// here needs a GPU: the library loads and reports its version on any machine that has it, so a machine without it gets
// one sentence saying where we looked, and the CUDA backend keeps its own GEMM kernels.
//
// Where it is looked for, first hit wins:
//   1. KERNELS_CUBLASLT: a file path (an explicit choice; an error if it does not load, nothing else is tried);
//   2. the loader's own search by soname (LD_LIBRARY_PATH, ldconfig: the CUDA toolkit's lib64 when registered, distro
//      packages such as Debian's libcublaslt11), newest major first;
//   3. CUDA_HOME / CUDA_PATH, then /usr/local/cuda: lib64 (Linux) or bin (Windows);
//   4. the pip `nvidia-cublas-cu12` / `nvidia-cublas` layout, site-packages/nvidia/cublas/lib, under VIRTUAL_ENV,
//      CONDA_PREFIX and the usual Python prefixes.
using System.Runtime.InteropServices;

namespace Kernels.Interop;

/// <summary>cuBLASLt loaded on first use; <see cref="WhyUnavailable"/> says why not, <see cref="Load"/> throws that.</summary>
public static unsafe class CublasLtLibrary
{
    /// <summary>Environment variable naming the library file to use.</summary>
    public const string PathVariable = "KERNELS_CUBLASLT";

    private static readonly Lazy<(IntPtr Handle, string? Path, string? Why)> State = new(() => Find(Environment.GetEnvironmentVariable, TryLoad));

    /// <summary>Null when cuBLASLt loads; otherwise one sentence: what was tried and where.</summary>
    public static string? WhyUnavailable() => State.Value.Why;

    /// <summary>The file that was loaded (null when none was).</summary>
    public static string? LoadedFrom => State.Value.Path;

    /// <summary>The library's handle; throws <see cref="DllNotFoundException"/> with <see cref="WhyUnavailable"/>'s sentence when it is absent.</summary>
    public static IntPtr Load() => State.Value.Handle != IntPtr.Zero ? State.Value.Handle : throw new DllNotFoundException(State.Value.Why);

    /// <summary>cublasLtGetVersion(): major x 10000 + minor x 100 + patch (no GPU needed).</summary>
    public static int Version()
    {
        var get = (delegate* unmanaged<nuint>)NativeLibrary.GetExport(Load(), "cublasLtGetVersion");
        return checked((int)get());
    }

    private static IntPtr TryLoad(string nameOrPath) => NativeLibrary.TryLoad(nameOrPath, out var handle) ? handle : IntPtr.Zero;

    /// <summary>
    /// The search, with the environment read through <paramref name="environment"/> and names or paths loaded through
    /// <paramref name="tryLoad"/> (zero when it does not load; tests pass their own).
    /// </summary>
    internal static (IntPtr Handle, string? Path, string? Why) Find(Func<string, string?> environment, Func<string, IntPtr> tryLoad)
    {
        if (environment(PathVariable) is { Length: > 0 } chosen)
        {
            if (!File.Exists(chosen)) return (IntPtr.Zero, null, $"{PathVariable}={chosen}: no such file");
            try
            {
                return (NativeLibrary.Load(chosen), chosen, null);
            }
            catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
            {
                return (IntPtr.Zero, null, $"{PathVariable}={chosen} does not load: {e.Message}");
            }
        }
        foreach (string name in SearchNames())
            if (tryLoad(name) is var handle && handle != IntPtr.Zero) return (handle, name, null);
        var folders = Folders(environment).ToArray();
        foreach (string folder in folders)
        {
            if (!Directory.Exists(folder)) continue;
            foreach (string name in SearchNames())
            {
                string path = Path.Combine(folder, name);
                if (File.Exists(path) && tryLoad(path) is var handle && handle != IntPtr.Zero) return (handle, path, null);
            }
        }
        return (IntPtr.Zero, null,
            $"cuBLASLt not found: tried {string.Join(", ", SearchNames())} through the system loader and in {string.Join(", ", folders)} " +
            $"(install the CUDA toolkit or `pip install nvidia-cublas-cu12`, or set {PathVariable} to the library file)");
    }

    /// <summary>File names, newest major version first, then the unversioned development link.</summary>
    private static IEnumerable<string> SearchNames()
    {
        if (OperatingSystem.IsWindows())
        {
            foreach (int major in new[] { 13, 12, 11 }) yield return $"cublasLt64_{major}.dll";
            yield break;
        }
        foreach (int major in new[] { 13, 12, 11 }) yield return $"libcublasLt.so.{major}";
        yield return "libcublasLt.so";
    }

    private static IEnumerable<string> Folders(Func<string, string?> environment)
    {
        string lib = OperatingSystem.IsWindows() ? "bin" : "lib64";
        foreach (string variable in new[] { "CUDA_HOME", "CUDA_PATH" })
            if (environment(variable) is { Length: > 0 } home) yield return Path.Combine(home, lib);
        if (!OperatingSystem.IsWindows()) yield return "/usr/local/cuda/lib64";
        foreach (string prefix in PythonPrefixes(environment))
            foreach (string sitePackages in SitePackages(prefix))
                yield return Path.Combine(sitePackages, "nvidia", "cublas", OperatingSystem.IsWindows() ? "bin" : "lib");
    }

    private static IEnumerable<string> PythonPrefixes(Func<string, string?> environment)
    {
        foreach (string variable in new[] { "VIRTUAL_ENV", "CONDA_PREFIX" })
            if (environment(variable) is { Length: > 0 } prefix) yield return prefix;
        if (OperatingSystem.IsWindows()) yield break;
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        if (home.Length > 0) yield return Path.Combine(home, ".local");
        yield return "/usr/local";
        yield return "/usr";
    }

    /// <summary>The site-packages (or Debian's dist-packages) folders of every Python under <paramref name="prefix"/>.</summary>
    private static IEnumerable<string> SitePackages(string prefix)
    {
        if (OperatingSystem.IsWindows())
        {
            yield return Path.Combine(prefix, "Lib", "site-packages");
            yield break;
        }
        string libDir = Path.Combine(prefix, "lib");
        if (!Directory.Exists(libDir)) yield break;
        string[] pythons;
        try
        {
            pythons = Directory.GetDirectories(libDir, "python3*");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            yield break;
        }
        foreach (string python in pythons.OrderDescending(StringComparer.Ordinal))
        {
            yield return Path.Combine(python, "site-packages");
            yield return Path.Combine(python, "dist-packages");
        }
    }
}
