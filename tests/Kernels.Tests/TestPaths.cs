// Where test data lives: the golden models copied into the test output, and the model directory shared beside the repo.
namespace Kernels.Tests;

public static class TestPaths
{
    public static string Golden(string model) => Path.Combine(TestContext.CurrentContext.TestDirectory, "Golden", model);

    public static readonly string[] GoldenModels = ["tiny-llama-f32", "tiny-llama-bf16", "tiny-qwen2-f16"];

    /// <summary>The repository's root (the folder holding Kernels.sln above the test output).</summary>
    public static string RepoRoot()
    {
        for (var d = new DirectoryInfo(TestContext.CurrentContext.TestDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Kernels.sln"))) return d.FullName;
        throw new DirectoryNotFoundException("Kernels.sln not found above " + TestContext.CurrentContext.TestDirectory);
    }
}
