// Issue 21's crafted model files as named regression tests: the library refuses each with a ModelFormatException
// naming the file, the field and the value, allocating little (no buffer sized by a forged count), and the CLI prints
// one `error:` line with a non-zero exit and no stack trace.
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Kernels.Tests.Cli;

namespace Kernels.Tests.Models.Hostile;

public class CraftedModelTests
{
    /// <summary>Managed bytes a refused load may allocate: far below what any forged count would have reserved.</summary>
    private const long AllocationBound = 64L << 20;

    private string _dir = "";

    [SetUp]
    public void CreateDirectory()
    {
        _dir = Path.Combine(Path.GetTempPath(), "kernels-crafted-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
    }

    [TearDown]
    public void RemoveDirectory() => Directory.Delete(_dir, recursive: true);

    public static IEnumerable<CraftedModel> Cases => CraftedModelFiles.All();
    public static IEnumerable<CraftedModel> StoriesCases => CraftedModelFiles.GgufCases(stories: true);

    [TestCaseSource(nameof(Cases))]
    [TestCaseSource(nameof(StoriesCases))]
    public void LibraryRefusesItByName(CraftedModel crafted)
    {
        var (model, file) = crafted.Build(_dir);
        long before = GC.GetAllocatedBytesForCurrentThread();
        var error = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(model).Dispose());
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.That(error!.Message, Does.Contain(file));
        foreach (string fragment in crafted.Fragments) Assert.That(error.Message, Does.Contain(fragment));
        Assert.That(allocated, Is.LessThan(AllocationBound), $"the refused load allocated {allocated / 1e6:F1} MB");
        TestContext.Out.WriteLine(error.Message);
    }

    /// <summary>A tokenizer.json token id sizes the token table: 2,000,000,000 would have allocated 16 GB when the tokenizer loads.</summary>
    [Test]
    public void ATokenIdBeyondAnyVocabularyIsRefusedByNameWhenTheTokenizerLoads()
    {
        string model = TestModelFiles.HfDirectory(Path.Combine(_dir, "model"), withTokenizer: true);
        string file = Path.Combine(model, "tokenizer.json");
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(file))!.AsObject();
        json["model"]!["vocab"]!["zz"] = 2_000_000_000;
        File.WriteAllText(file, json.ToJsonString());

        using var loaded = ModelLoader.Load(model);
        long before = GC.GetAllocatedBytesForCurrentThread();
        var error = Assert.Throws<ModelFormatException>(() => _ = loaded.Tokenizer);
        Assert.That(GC.GetAllocatedBytesForCurrentThread() - before, Is.LessThan(AllocationBound));
        Assert.That(error!.Message, Does.Contain(file).And.Contain("model.vocab['zz']").And.Contain("2000000000"));

        var (code, _, stderr) = CliRunner.Run("generate", "--model", model, "--prompt", "the", "--max-tokens", "2");
        Assert.That(code, Is.Not.EqualTo(0), stderr);
        Assert.That(stderr.Split('\n').Count(l => l.StartsWith("error:") && l.Contains("model.vocab['zz']")), Is.EqualTo(1), stderr);
        Assert.That(stderr, Does.Not.Contain("   at "));
    }

    [TestCaseSource(nameof(Cases))]
    [TestCaseSource(nameof(StoriesCases))]
    public void CliPrintsOneErrorLine(CraftedModel crafted)
    {
        var (model, file) = crafted.Build(_dir);
        var (code, _, stderr) = CliRunner.Run("info", "--model", model);
        Assert.That(code, Is.Not.EqualTo(0), stderr);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.StartsWith("error:")).ToArray();
        Assert.That(lines, Has.Length.EqualTo(1), stderr);
        Assert.That(lines[0], Does.Contain(file));
        foreach (string fragment in crafted.Fragments) Assert.That(lines[0], Does.Contain(fragment));
        Assert.That(stderr, Does.Not.Contain("   at "), "no stack trace");
    }
}
