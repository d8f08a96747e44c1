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
    public void TheGpuDecodeTableCarriesThePyTorchBaselineOfTheSameRun()
    {
        // e2e.json as kernels-bench e2e writes it, torch_decode.json as tools/torch_decode_baseline.py writes it.
        string dir = Path.Combine(Path.GetTempPath(), $"kernels-report-{Guid.NewGuid():N}");
        try
        {
            Directory.CreateDirectory(Path.Combine(dir, "results"));
            File.WriteAllText(Path.Combine(dir, "results", "e2e.json"), """
                {"Device": "NVIDIA H200", "Parity": [], "ThroughputModel": "synthetic:llama3-8b", "CopyBandwidthGBps": 4000,
                 "Throughput": [
                   {"Batch": 1, "Context": 1024, "StepMs": 8.0, "TokensPerSecond": 125, "BytesPerStep": 1.6e10, "RooflineStepMs": 4.0, "FractionOfRoofline": 0.5, "SpeedupOverBatch1": 1},
                   {"Batch": 16, "Context": 1024, "StepMs": 10.0, "TokensPerSecond": 1600, "BytesPerStep": 1.7e10, "RooflineStepMs": 4.3, "FractionOfRoofline": 0.43, "SpeedupOverBatch1": 12.8},
                   {"Batch": 64, "Context": 1024, "StepMs": 20.0, "TokensPerSecond": 3200, "BytesPerStep": 2.0e10, "RooflineStepMs": 5.0, "FractionOfRoofline": 0.25, "SpeedupOverBatch1": 25.6},
                   {"Batch": 1, "Context": 1024, "StepMs": 5.0, "TokensPerSecond": 200, "BytesPerStep": 1.6e10, "RooflineStepMs": 4.0, "FractionOfRoofline": 0.8, "SpeedupOverBatch1": 1, "Kernels": "cuBLASLt + tiled attention"},
                   {"Batch": 16, "Context": 1024, "StepMs": 6.0, "TokensPerSecond": 2667, "BytesPerStep": 1.7e10, "RooflineStepMs": 4.3, "FractionOfRoofline": 0.72, "SpeedupOverBatch1": 13.3, "Kernels": "cuBLASLt + tiled attention"},
                   {"Batch": 64, "Context": 1024, "StepMs": 9.0, "TokensPerSecond": 7111, "BytesPerStep": 2.0e10, "RooflineStepMs": 5.0, "FractionOfRoofline": 0.55, "SpeedupOverBatch1": 35.6, "Kernels": "cuBLASLt + tiled attention"}],
                 "Host": {"Batch": 1, "Context": 1024, "Steps": 16, "StepMs": 8.2, "GpuMs": 8.0, "HostMs": 0.2, "HostFraction": 0.0244}}
                """);
            File.WriteAllText(Path.Combine(dir, "results", "torch_decode.json"), """
                {"device": "NVIDIA H200", "torch": "2.5.1", "dtype": "float16",
                 "decode": [{"batch": 1, "context": 1024, "ms": 6.0}, {"batch": 16, "context": 1024, "ms": 12.5}],
                 "prefill": {"tokens": 2048, "ms": 95.0}}
                """);
            Assert.That(Report.Run(Path.Combine(dir, "results"), Path.Combine(dir, "BENCHMARKS.md"), Path.Combine(dir, "charts")), Is.EqualTo(0));
            string md = File.ReadAllText(Path.Combine(dir, "BENCHMARKS.md"));
            Assert.That(md, Does.Contain("| PyTorch ms/step | ours / PyTorch |"));
            Assert.That(md, Does.Contain("| 6.00 | 0.75x |"), "batch 1: PyTorch 6 ms, ours 8 ms");
            Assert.That(md, Does.Contain("| 12.50 | 1.25x |"), "batch 16: PyTorch 12.5 ms, ours 10 ms");
            Assert.That(md, Does.Contain("| - | - |"), "batch 64 has no baseline row");
            Assert.That(md, Does.Contain("| default | 16 | 1024 |").And.Contain("| cuBLASLt + tiled attention | 1 | 1024 | 5.00 |"), "a row per kernel path");
            Assert.That(md, Does.Contain("| 6.00 | 1.20x |"), "cuBLASLt at batch 1 against the same PyTorch row");
            Assert.That(md, Does.Contain("PyTorch 2.5.1 on NVIDIA H200").And.Contain("2048-token prompt: 95.0 ms"));
            Assert.That(md, Does.Contain("Host time per decode step at batch 1, context 1024").And.Contain("0.200 ms of 8.200 ms (2.4 %"));
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
