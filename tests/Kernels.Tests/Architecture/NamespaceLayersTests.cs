// The runtime's namespaces form layers without cycles, each using only the layers below it (README.md, Layout).
using Kernels.Runtime.Backends.Ilgpu;
using Kernels.Runtime.Engine;

namespace Kernels.Tests.Architecture;

public class NamespaceLayersTests
{
    /// <summary>
    /// The layers of Kernels.Runtime, lowest first (the table in README.md, Layout, says what each holds). A layer may
    /// use any layer before it and none after it; a new folder under src/Kernels.Runtime has to be placed here
    /// deliberately.
    /// </summary>
    public static readonly string[] LayerOrder =
        ["Numerics", "Tokenization", "Models", "Quantization", "KvCache", "Backends", "Engine", "Calibration"];

    private static readonly Lazy<NamespaceGraph> Runtime = new(() =>
    {
        var graph = new NamespaceGraph("Kernels.Runtime");
        graph.AddAssembly(typeof(InferenceEngine).Assembly.Location);
        graph.AddAssembly(typeof(SqueezeLlmLutGemv).Assembly.Location);
        graph.AddUsingDirectives(Path.Combine(RepositoryRoot(), "src"));
        return graph;
    });

    [Test]
    public void RuntimeLayersHaveNoCycle()
    {
        var cycles = Runtime.Value.Cycles();
        Assert.That(cycles, Is.Empty,
            "namespace cycles in Kernels.Runtime (each step with the first reference found for it):\n"
            + string.Join("\n\n", cycles.Select(NamespaceGraph.Describe)));
    }

    [Test]
    public void RuntimeLayersOnlyUseLowerLayers()
    {
        var graph = Runtime.Value;
        Assert.That(graph.TypesOutsideLayers, Is.Empty, "types directly in Kernels.Runtime belong to no layer: give them a folder");
        Assert.That(graph.Layers.Except(LayerOrder), Is.Empty,
            $"namespaces not in the declared layer order ({string.Join(" <- ", LayerOrder)}): add them to LayerOrder and to the table in README.md, Layout");

        var upward = graph.Edges.Values.Where(e => Rank(e.To) >= Rank(e.From)).OrderBy(e => e.From).ThenBy(e => e.To).ToList();
        Assert.That(upward, Is.Empty,
            $"a layer uses one at or above it (order, lowest first: {string.Join(" <- ", LayerOrder)}):\n"
            + NamespaceGraph.Describe(upward));
    }

    /// <summary>
    /// The graph is not empty by accident: the dependencies that define the design are seen (the engine drives
    /// backends through IBackend, backends run loaded models, models are read into Numerics' dtypes).
    /// </summary>
    [TestCase("Engine", "Backends")]
    [TestCase("Engine", "KvCache")]
    [TestCase("Backends", "Models")]
    [TestCase("Backends", "KvCache")]
    [TestCase("Models", "Numerics")]
    [TestCase("Calibration", "Backends")]
    public void RuntimeGraphSeesTheDesignedDependencies(string from, string to) =>
        Assert.That(Runtime.Value.Edges.ContainsKey((from, to)), Is.True,
            $"expected {from} -> {to}; edges seen:\n{NamespaceGraph.Describe(Runtime.Value.Edges.Values.OrderBy(e => e.From).ThenBy(e => e.To))}");

    /// <summary>References into another assembly count: Kernels.Runtime.Ilgpu's kernel (Backends) reads SqueezeLLM's codes.</summary>
    [Test]
    public void ScannerSeesReferencesIntoAnotherAssembly()
    {
        var graph = new NamespaceGraph("Kernels.Runtime");
        graph.AddAssembly(typeof(SqueezeLlmLutGemv).Assembly.Location);
        Assert.That(graph.Edges.ContainsKey(("Backends", "Quantization")), Is.True, $"edges: {string.Join(", ", graph.Edges.Keys)}");
    }

    // ---------------------------------------------------------------- the scanner, on fixture namespaces of this assembly

    private static readonly Lazy<NamespaceGraph> Fixture = new(() =>
    {
        var graph = new NamespaceGraph(typeof(LayerFixture.Low.LowMath).Namespace![..^".Low".Length]);
        graph.AddAssembly(typeof(NamespaceLayersTests).Assembly.Location);
        return graph;
    });

    /// <summary>Each fixture namespace reaches Low through one kind of reference only; every kind must be seen.</summary>
    [TestCase("CallOnly")]
    [TestCase("LambdaOnly")]
    [TestCase("AsyncOnly")]
    [TestCase("AttributeTypeofOnly")]
    [TestCase("ConstraintOnly")]
    [TestCase("GenericArgumentOnly")]
    [TestCase("BaseTypeOnly")]
    [TestCase("CatchOnly")]
    public void ScannerSeesEveryKindOfReference(string layer) =>
        Assert.That(Fixture.Value.Edges.ContainsKey((layer, "Low")), Is.True,
            $"{layer} -> Low not seen; edges: {string.Join(", ", Fixture.Value.Edges.Keys)}");

    [Test]
    public void ScannerFindsACycleAndNamesItsSteps()
    {
        var cycles = Fixture.Value.Cycles();
        Assert.That(cycles, Has.Count.EqualTo(1));
        Assert.That(cycles[0].Select(e => (e.From, e.To)), Is.EquivalentTo(new[] { ("CycleA", "CycleB"), ("CycleB", "CycleA") }));
        Assert.That(NamespaceGraph.Describe(cycles[0]), Does.Contain("CycleB.Pong uses").And.Contain("CycleA.Ping"));
    }

    [Test]
    public void CyclesAreReportedOncePerComponentWithAShortestPath()
    {
        var graph = new NamespaceGraph("R");
        graph.Add("A", "B", "a->b"); graph.Add("B", "C", "b->c"); graph.Add("C", "A", "c->a");
        graph.Add("C", "B", "c->b"); // a shorter cycle B <-> C inside the same component
        graph.Add("D", "A", "d->a"); // outside any cycle
        var cycles = graph.Cycles();
        Assert.That(cycles, Has.Count.EqualTo(1));
        Assert.That(cycles[0].Select(e => e.From), Is.EquivalentTo(new[] { "A", "B", "C" }));
    }

    private static int Rank(string layer) => Array.IndexOf(LayerOrder, layer) is var i and >= 0 ? i : int.MaxValue;

    private static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(TestContext.CurrentContext.TestDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Kernels.sln")))
                return dir.FullName;
        throw new DirectoryNotFoundException($"no Kernels.sln above {TestContext.CurrentContext.TestDirectory}: the test reads src/Kernels.Runtime's sources");
    }
}
