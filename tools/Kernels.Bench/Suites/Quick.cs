// `kernels-bench quick`: every suite on tiny shapes on the CPU (minutes, for CI), gathered into one JSON document
// that follows bench-results.schema.json (kept at the project root and copied to the output).
using System.Text.Json;
using System.Text.Json.Nodes;
using Kernels.Interop;

namespace Kernels.Bench;

public static class Quick
{
    public const string SchemaId = "kernels-bench/results/1";

    public static async Task<int> Run(string jsonPath)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"kernels-bench-quick-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            string Part(string name) => Path.Combine(dir, name + ".json");
            await Suites.RunCpu(dir, quick: true, peerModels: "");

            var kernels = CudaDevice.WhyUnavailable(0) is { } why
                ? new JsonObject { ["status"] = "skipped", ["reason"] = $"CUDA unavailable: {why}" }
                : new JsonObject { ["status"] = "skipped", ["reason"] = "quick mode runs on the CPU; run `kernels-bench verify` on the GPU" };
            File.WriteAllText(Part("kernels"), kernels.ToJsonString());

            var document = new JsonObject
            {
                ["schema"] = SchemaId,
                ["date"] = DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ"),
                ["machine"] = new JsonObject
                {
                    ["cores"] = Environment.ProcessorCount,
                    ["architecture"] = System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString(),
                    ["avx2"] = System.Runtime.Intrinsics.X86.Avx2.IsSupported,
                    ["os"] = System.Runtime.InteropServices.RuntimeInformation.OSDescription,
                    ["runtime"] = Environment.Version.ToString(),
                },
                ["suites"] = new JsonObject
                {
                    ["decode"] = JsonNode.Parse(File.ReadAllText(Part("decode"))),
                    ["prefix"] = JsonNode.Parse(File.ReadAllText(Part("prefix"))),
                    ["throughput"] = JsonNode.Parse(File.ReadAllText(Part("throughput"))),
                    ["latency"] = JsonNode.Parse(File.ReadAllText(Part("latency"))),
                    ["hostile"] = JsonNode.Parse(File.ReadAllText(Part("hostile"))),
                    ["kernels"] = JsonNode.Parse(File.ReadAllText(Part("kernels"))),
                },
            };
            File.WriteAllText(jsonPath, document.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            Console.WriteLine($"wrote {jsonPath} ({SchemaId})");
            return 0;
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
