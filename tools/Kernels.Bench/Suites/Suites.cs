// `kernels-bench all`: every CPU suite in one go (full shapes, or tiny ones with --quick), one JSON file per suite
// plus run.json (machine, date, commit) in one folder, with progress on stderr; `report` turns the folder into tables.
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Kernels.Bench;

public static class Suites
{
    private sealed record Suite(string Name, Func<string, Task> Run);

    public static async Task<int> RunCpu(string directory, bool quick, string peerModels)
    {
        Directory.CreateDirectory(directory);
        string Part(string name) => Path.Combine(directory, name + ".json");
        var suites = quick
            ? new List<Suite>
            {
                new("decode", p => Task.FromResult(CpuDecode.Run("synthetic:tiny", "1,4", steps: 4, context: 16, p))),
                new("prefix", p => Task.FromResult(SharedPrefix.Run("synthetic:tiny", "4", "64", suffix: 8, steps: 2, p))),
                new("throughput", p => Task.FromResult(Throughput.Run("synthetic:tiny", "random,system-prompt,few-shot,samples", requests: 4, inputLength: 8,
                    outputLength: 4, prefixLength: 32, samples: 2, sharing: "both", p))),
                new("latency", p => ServingLatency.Run("synthetic:tiny", clients: 4, requests: 16, maxTokens: 4, promptWords: 4, rate: null, p)),
                new("hostile", p => HostileLoad.Run("synthetic:tiny", clients: 4, phaseSeconds: 2, windowSeconds: 0.5, maxTokens: 4, kernelsDll: null, p)),
            }
            : new List<Suite>
            {
                new("decode", p => Task.FromResult(CpuDecode.Run("synthetic:small", "1,4,16,64", steps: 16, context: 64, p))),
                new("prefix", p => Task.FromResult(SharedPrefix.Run("synthetic:small", "16,64", "256,512,1536", suffix: 32, steps: 4, p))),
                new("throughput", p => Task.FromResult(Throughput.Run("synthetic:small", "random,system-prompt,few-shot,samples", requests: 32, inputLength: 32,
                    outputLength: 32, prefixLength: 512, samples: 8, sharing: "both", p))),
                new("latency", p => ServingLatency.Run("synthetic:tiny", clients: 32, requests: 500, maxTokens: 16, promptWords: 24, rate: null, p)),
                new("hostile", p => HostileLoad.Run(Program.StoriesOrTiny(), clients: 32, phaseSeconds: 40, windowSeconds: 2.5, maxTokens: 16, kernelsDll: null, p)),
                new("peer", p => Task.FromResult(Peer.Run(peerModels, prompt: 64, storiesPrompt: 32, generate: 64, sequences: 16, reps: 7, sharedReps: 7, llamaThreads: 0, p,
                    Peer.Paths.Both, Path.Combine(directory, "models")))),
            };
        var run = new JsonObject
        {
            ["machine"] = HostInfo.Machine(),
            ["date"] = DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm 'UTC'"),
            ["commit"] = HostInfo.Commit(),
            ["mode"] = quick ? "quick (tiny shapes, for CI: the numbers are not meaningful)" : "full",
        };
        File.WriteAllText(Part("run"), run.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        var total = Stopwatch.StartNew();
        for (int i = 0; i < suites.Count; i++)
        {
            var clock = Stopwatch.StartNew();
            Console.Error.WriteLine($"[{i + 1}/{suites.Count}] {suites[i].Name} ...");
            await suites[i].Run(Part(suites[i].Name));
            Console.Error.WriteLine($"[{i + 1}/{suites.Count}] {suites[i].Name} done in {clock.Elapsed.TotalSeconds:F0} s (total {total.Elapsed.TotalSeconds:F0} s)");
        }
        return 0;
    }
}
