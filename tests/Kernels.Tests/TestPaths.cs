// Where test data lives: the golden models copied into the test output, and the model directory shared beside the repo.
namespace Kernels.Tests;

public static class TestPaths
{
    public static string Golden(string model) => Path.Combine(TestContext.CurrentContext.TestDirectory, "Golden", model);

    public static readonly string[] GoldenModels = ["tiny-llama-f32", "tiny-llama-bf16", "tiny-qwen2-f16"];
}
