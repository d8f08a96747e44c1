// Locates the shared, uncommitted test data (../shared next to the repository) and skips tests when it is absent.
using NUnit.Framework;

namespace Kernels.Tests;

/// <summary>
/// Large or licensed files (stories260K, reference vectors) live in <c>&lt;repo&gt;/../shared</c>, not in the
/// repository. Tests ask for them through <see cref="Require"/>, which turns "not on this machine" into an ignored
/// test with a message instead of a failure.
/// </summary>
public static class SharedData
{
    /// <summary>The shared folder, or null when none was found walking up from the test binaries.</summary>
    public static string? Root => LazyRoot.Value;

    // Located on first use, inside a test, where NUnit's TestContext is populated.
    private static readonly Lazy<string?> LazyRoot = new(Locate);

    /// <summary>Full path of <paramref name="relative"/> under the shared folder; Assert.Ignore when it is missing.</summary>
    public static string Require(string relative)
    {
        if (Root is null)
            Assert.Ignore($"shared test data not found (looked for a 'shared/models' folder beside an ancestor of {TestContext.CurrentContext.TestDirectory}); needs {relative}");
        string path = Path.Combine(Root!, relative);
        if (!File.Exists(path) && !Directory.Exists(path))
            Assert.Ignore($"shared test data missing: {path}");
        return path;
    }

    // The repository root is an ancestor of the test directory, and shared/ sits beside it: <repo>/../shared.
    // Checking every ancestor's sibling "shared" folder also works for worktrees placed next to the main checkout.
    private static string? Locate()
    {
        for (var dir = new DirectoryInfo(TestContext.CurrentContext.TestDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "shared");
            if (Directory.Exists(Path.Combine(candidate, "models")))
                return candidate;
        }
        return null;
    }
}
