// What every suite says about where it ran (machine, commit) and where it finds ../shared: used by the suites the GPU
// machine's bundle carries as well as by the CPU-only ones (the report, the llama.cpp comparison) it leaves out.
using System.Diagnostics;

namespace Kernels.Bench;

internal static class HostInfo
{
    /// <summary>Cores, architecture, CPU model, AVX2 and the OS, as the suites' JSON and the report name the machine.</summary>
    internal static string Machine() =>
        $"{Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture}, {CpuName()}, " +
        $"AVX2 {System.Runtime.Intrinsics.X86.Avx2.IsSupported}, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}";

    /// <summary>The CPU model from /proc/cpuinfo where there is one.</summary>
    internal static string CpuName()
    {
        try
        {
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
            return line?.Split(':', 2)[1].Trim() ?? "unknown CPU";
        }
        catch (IOException)
        {
            return "unknown CPU";
        }
        catch (UnauthorizedAccessException)
        {
            return "unknown CPU";
        }
    }

    /// <summary>The checked-out commit (short hash, "+dirty" with local changes), or "unknown" outside a git checkout.</summary>
    internal static string Commit()
    {
        try
        {
            string Git(string args)
            {
                using var p = Process.Start(new ProcessStartInfo("git", args) { RedirectStandardOutput = true, RedirectStandardError = true })!;
                string output = p.StandardOutput.ReadToEnd().Trim();
                p.WaitForExit();
                return p.ExitCode == 0 ? output : "";
            }
            string hash = Git("rev-parse --short HEAD");
            if (hash == "") return "unknown";
            return Git("status --porcelain --untracked-files=no") == "" ? hash : hash + "+dirty";
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return "unknown"; // no git on this machine
        }
    }

    /// <summary>
    /// <paramref name="relative"/> under a shared/ folder beside or inside a folder above this program, or ../shared from
    /// the working directory; null when none has it.
    /// </summary>
    internal static string? FindShared(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            foreach (string c in new[] { Path.Combine(dir.FullName, "shared", relative), Path.Combine(dir.FullName, "..", "shared", relative) })
                if (File.Exists(c)) return Path.GetFullPath(c);
        string cwd = Path.Combine("..", "shared", relative);
        return File.Exists(cwd) ? Path.GetFullPath(cwd) : null;
    }
}
