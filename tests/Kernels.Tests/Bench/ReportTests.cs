// `kernels-bench all --quick` then `report`: every CPU suite's JSON becomes a Markdown section, charts are real PNGs,
// and a folder with no results is a clear error rather than an empty report.
using Kernels.Bench;

namespace Kernels.Tests.Bench;

public class ReportTests
{
    [Test]
    public async Task QuickSuitesTurnIntoTablesAndCharts()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"kernels-report-{Guid.NewGuid():N}");
        try
        {
            var output = Console.Out;
            var error = Console.Error;
            Console.SetOut(TextWriter.Null);
            Console.SetError(TextWriter.Null);
            try
            {
                Assert.That(await Suites.RunCpu(Path.Combine(dir, "results"), quick: true, peerModels: ""), Is.EqualTo(0));
                Assert.That(Report.Run(Path.Combine(dir, "results"), Path.Combine(dir, "BENCHMARKS.md"), Path.Combine(dir, "charts")), Is.EqualTo(0));
            }
            finally
            {
                Console.SetOut(output);
                Console.SetError(error);
            }
            string md = File.ReadAllText(Path.Combine(dir, "BENCHMARKS.md"));
            Assert.That(md, Does.Contain("## Decode steps").And.Contain("## Shared-prefix decode").And.Contain("## Offline throughput").And.Contain("## Serving latency"));
            Assert.That(md, Does.Contain("| commit |").And.Contain("| machine |").And.Contain("quick (tiny shapes"));
            foreach (var chart in new[] { "decode-speedup.png", "decode-roofline.png", "prefix-speedup.png", "throughput.png" })
            {
                Assert.That(md, Does.Contain($"](charts/{chart})"), "linked relative to the Markdown file");
                var bytes = File.ReadAllBytes(Path.Combine(dir, "charts", chart));
                Assert.That(bytes.Take(8), Is.EqualTo(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }), $"{chart} is a PNG");
                Assert.That(bytes.Length, Is.GreaterThan(5000), $"{chart} has a drawing in it");
            }
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    [Test]
    public void AFolderWithoutResultsIsAClearError()
    {
        string dir = Directory.CreateTempSubdirectory("kernels-report-empty").FullName;
        try
        {
            var e = Assert.Throws<FileNotFoundException>(() => Report.Run(dir, Path.Combine(dir, "B.md"), Path.Combine(dir, "charts")));
            Assert.That(e!.Message, Does.Contain(dir).And.Contain("no suite results"));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
