// cuBLASLt's lazy loader: where it is found, its version without a GPU, and the sentence a machine without it gets.
using System.Runtime.InteropServices;
using Kernels.Interop;

namespace Kernels.Tests.Backends.Cuda;

public class CublasLtLibraryTests
{
    [Test]
    public void LoadsAndReportsItsVersionWhereInstalledElseSaysWhereItLooked()
    {
        string? why = CublasLtLibrary.WhyUnavailable();
        TestContext.Out.WriteLine(why ?? $"cuBLASLt {CublasLtLibrary.Version()} from {CublasLtLibrary.LoadedFrom}");
        if (why == null)
        {
            Assert.That(CublasLtLibrary.LoadedFrom, Is.Not.Null.And.Not.Empty);
            int version = CublasLtLibrary.Version();
            Assert.That(version / 10000, Is.InRange(11, 99), $"cublasLtGetVersion() = {version}: major.minor.patch as M*10000+m*100+p");
        }
        else
        {
            Assert.That(why, Does.StartWith("cuBLASLt not found: tried ").And.Contain("libcublasLt").And.Contain(CublasLtLibrary.PathVariable));
            Assert.That(() => CublasLtLibrary.Load(), Throws.TypeOf<DllNotFoundException>().With.Message.EqualTo(why));
        }
    }

    private static IntPtr Load(string nameOrPath) => NativeLibrary.TryLoad(nameOrPath, out var handle) ? handle : IntPtr.Zero;

    [Test]
    public void WithoutTheLibraryTheReasonNamesWhatWasTriedWhereAndHowToGetIt()
    {
        if (OperatingSystem.IsWindows()) Assert.Ignore("the folders and sonames checked here are Linux's");
        var tried = new List<string>();
        string venv = Path.Combine(Path.GetTempPath(), $"venv-{Environment.ProcessId}");
        Directory.CreateDirectory(Path.Combine(venv, "lib", "python3.12", "site-packages", "nvidia", "cublas", "lib"));
        try
        {
            var none = CublasLtLibrary.Find(v => v switch { "CUDA_HOME" => "/opt/cuda-test", "VIRTUAL_ENV" => venv, _ => null }, name => { tried.Add(name); return IntPtr.Zero; });
            Assert.That(none.Handle, Is.EqualTo(IntPtr.Zero));
            Assert.That(none.Path, Is.Null);
            Assert.That(none.Why, Does.StartWith("cuBLASLt not found: tried "));
            Assert.That(none.Why, Does.Contain("/opt/cuda-test/lib64").And.Contain("/usr/local/cuda/lib64")
                .And.Contain(Path.Combine(venv, "lib", "python3.12", "site-packages", "nvidia", "cublas", "lib"))
                .And.Contain("pip install nvidia-cublas-cu12").And.Contain(CublasLtLibrary.PathVariable));
            Assert.That(tried, Does.Contain("libcublasLt.so.12").And.Contain("libcublasLt.so.13").And.Contain("libcublasLt.so"), "the sonames, through the system loader");
        }
        finally
        {
            Directory.Delete(venv, recursive: true);
        }
    }

    [Test]
    public void AnExplicitPathThatIsMissingOrNotALibraryIsNamedAndNothingElseIsTried()
    {
        var missing = CublasLtLibrary.Find(v => v == CublasLtLibrary.PathVariable ? "/no/such/libcublasLt.so.12" : null, Load);
        Assert.That(missing.Handle, Is.EqualTo(IntPtr.Zero));
        Assert.That(missing.Why, Is.EqualTo($"{CublasLtLibrary.PathVariable}=/no/such/libcublasLt.so.12: no such file"));

        string text = Path.GetTempFileName();
        try
        {
            File.WriteAllText(text, "not a shared library");
            var bad = CublasLtLibrary.Find(v => v == CublasLtLibrary.PathVariable ? text : null, Load);
            Assert.That(bad.Handle, Is.EqualTo(IntPtr.Zero));
            Assert.That(bad.Why, Does.StartWith($"{CublasLtLibrary.PathVariable}={text} does not load: "));
        }
        finally
        {
            File.Delete(text);
        }
    }

    [Test]
    public void AnExplicitPathToTheLibraryIsLoadedFromThere()
    {
        string? found = CublasLtLibrary.LoadedFrom;
        if (found == null) Assert.Ignore($"no cuBLASLt on this machine: {CublasLtLibrary.WhyUnavailable()}");
        // A hit through the system loader is a bare soname: look for its file in the usual folders.
        string? file = File.Exists(found) ? found : new[] { "/usr/lib/x86_64-linux-gnu", "/usr/local/cuda/lib64" }.Select(d => Path.Combine(d, found!)).FirstOrDefault(File.Exists);
        if (file == null) Assert.Ignore($"cuBLASLt was loaded by soname ({found}) and its file is not in a known folder");
        var chosen = CublasLtLibrary.Find(v => v == CublasLtLibrary.PathVariable ? file : null, Load);
        Assert.That(chosen.Why, Is.Null);
        Assert.That(chosen.Path, Is.EqualTo(file));
        Assert.That(chosen.Handle, Is.Not.EqualTo(IntPtr.Zero));
        NativeLibrary.Free(chosen.Handle);
    }
}
