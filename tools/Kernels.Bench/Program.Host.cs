// The commands that need what the GPU machine's bundle (./build.sh publish-device, DeviceBundle=true) leaves out to
// stay within what a device run carries: the CPU suites that start the HTTP server and router (ASP.NET Core, YARP),
// llama.cpp (LLamaSharp) and the charts (ScottPlot, SkiaSharp). tools/device-check.sh calls none of them.
#if !DEVICE_BUNDLE
using System.CommandLine;

namespace Kernels.Bench;

public static partial class Program
{
    private static IEnumerable<Command> HostCommands()
    {
        var json = new Option<string?>("--json") { Description = "Also write the results to this JSON file" };
        var latencyModel = new Option<string>("--model") { DefaultValueFactory = _ => "synthetic:tiny", Description = "Model to serve" };
        var clients = new Option<int>("--clients") { DefaultValueFactory = _ => 32, Description = "Concurrent streaming clients (when no --rate)" };
        var requestCount = new Option<int>("--requests") { DefaultValueFactory = _ => 500, Description = "Requests in all" };
        var latencyTokens = new Option<int>("--max-tokens") { DefaultValueFactory = _ => 16, Description = "max_tokens per request" };
        var words = new Option<int>("--prompt-words") { DefaultValueFactory = _ => 24, Description = "Words per prompt" };
        var rate = new Option<double?>("--rate") { Description = "Poisson arrival rate in requests/s instead of closed-loop clients" };
        var latency = new Command("latency", "TTFT/TPOT percentiles of the HTTP server under concurrent streaming load (in one process, loopback)");
        foreach (var o in new Option[] { latencyModel, clients, requestCount, latencyTokens, words, rate, json }) latency.Options.Add(o);
        latency.SetAction((p, _) => ServingLatency.Run(p.GetValue(latencyModel)!, p.GetValue(clients), p.GetValue(requestCount), p.GetValue(latencyTokens),
            p.GetValue(words), p.GetValue(rate), p.GetValue(json)));
        var hostileModel = new Option<string>("--model")
        {
            DefaultValueFactory = _ => StoriesOrTiny(),
            Description = "Model to serve (default: ../shared/models/stories260K/stories260K.bin when present, else synthetic:tiny)",
        };
        var hostileClients = new Option<int>("--clients") { DefaultValueFactory = _ => 32, Description = "Steady closed-loop streaming clients" };
        var hostileSeconds = new Option<double>("--phase-seconds") { DefaultValueFactory = _ => 40, Description = "Seconds per hostile client, half of them with it on" };
        var hostileWindow = new Option<double>("--window-seconds") { DefaultValueFactory = _ => 2.5, Description = "Length of each window with or without the hostile client (they alternate)" };
        var hostileTokens = new Option<int>("--max-tokens") { DefaultValueFactory = _ => 16, Description = "max_tokens of the steady requests" };
        var hostileKernels = new Option<string?>("--kernels") { Description = "kernels.dll to serve with (default: found next to this program or in the repository's build output)" };
        var hostile = new Command("hostile", "Steady clients' TTFT p99 against `kernels serve` alone and with each hostile client of issue 21 (fan-out, huge stop list, bad Unicode)");
        foreach (var o in new Option[] { hostileModel, hostileClients, hostileSeconds, hostileWindow, hostileTokens, hostileKernels, json }) hostile.Options.Add(o);
        hostile.SetAction((p, _) => HostileLoad.Run(p.GetValue(hostileModel)!, p.GetValue(hostileClients), p.GetValue(hostileSeconds), p.GetValue(hostileWindow),
            p.GetValue(hostileTokens), p.GetValue(hostileKernels), p.GetValue(json)));
        var attackServer = new Option<string>("--server") { Required = true, Description = "Base address of the server to attack" };
        var attackName = new Option<string>("--attack") { Required = true, Description = "Which hostile client (a phase name of `hostile`)" };
        var hostileAttack = new Command("hostile-attack", "One hostile client of `hostile`, run by it as a process of its own (attacks on each \"go SECONDS\" line of stdin)") { Hidden = true };
        foreach (var o in new Option[] { attackServer, attackName }) hostileAttack.Options.Add(o);
        hostileAttack.SetAction((p, _) => HostileLoad.RunAttacker(p.GetValue(attackServer)!, p.GetValue(attackName)!));
        var peerModels = new Option<string>("--models") { DefaultValueFactory = _ => Peer.DefaultModels,
            Description = "Comma-separated GGUF files or names: stories260K (../shared/models, skipped when absent); small:F16 (synthetic:small exported by us), small:Q8_0, small:Q4_K_M, ... (made from it by llama.cpp's quantizer)" };
        var peerPaths = new Option<Peer.Paths>("--paths") { DefaultValueFactory = _ => Peer.Paths.Native, Description = "Native (the best this CPU runs on both sides), Avx2 (both on AVX2), Both (native, then AVX2 in a child process)" };
        var peerCache = new Option<string?>("--cache") { Description = "Folder for the GGUF files small:... names build (default: the temp folder)" };
        var peerPrompt = new Option<int>("--prompt") { DefaultValueFactory = _ => 64, Description = "Prompt tokens P" };
        var peerStoriesPrompt = new Option<int>("--stories-prompt") { DefaultValueFactory = _ => 32, Description = "Prompt tokens P for stories260K (its context is 512)" };
        var peerGenerate = new Option<int>("--generate") { DefaultValueFactory = _ => 64, Description = "New tokens G per sequence" };
        var peerSequences = new Option<int>("--sequences") { DefaultValueFactory = _ => 16, Description = "Sequences sharing the prompt" };
        var peerReps = new Option<int>("--reps") { DefaultValueFactory = _ => 5, Description = "Repetitions of the single-sequence runs (median)" };
        var peerSharedReps = new Option<int>("--shared-reps") { DefaultValueFactory = _ => 3, Description = "Repetitions of the shared-prompt runs (median)" };
        var peerLlamaThreads = new Option<int>("--llama-threads") { DefaultValueFactory = _ => 0, Description = "llama.cpp threads (0 = Environment.ProcessorCount, the same as ours)" };
        var peer = new Command("peer", "CPU side by side with llama.cpp (LLamaSharp) on the same GGUF: 1-sequence pp/tg and N sequences sharing a prompt");
        foreach (var o in new Option[] { peerModels, peerPrompt, peerStoriesPrompt, peerGenerate, peerSequences, peerReps, peerSharedReps, peerLlamaThreads, peerPaths, peerCache, json }) peer.Options.Add(o);
        peer.SetAction(p => Peer.Run(p.GetValue(peerModels)!, p.GetValue(peerPrompt), p.GetValue(peerStoriesPrompt), p.GetValue(peerGenerate),
            p.GetValue(peerSequences), p.GetValue(peerReps), p.GetValue(peerSharedReps), p.GetValue(peerLlamaThreads), p.GetValue(json), p.GetValue(peerPaths), p.GetValue(peerCache)));
        var allOut = new Option<string>("--out") { DefaultValueFactory = _ => "bench-results", Description = "Folder for the suites' JSON files" };
        var allQuick = new Option<bool>("--quick") { Description = "Tiny shapes (CI): checks the suites run, the numbers mean nothing" };
        var allPeer = new Option<string>("--peer-models") { DefaultValueFactory = _ => Peer.DefaultModels, Description = "GGUF files or names for the llama.cpp comparison (see `peer --models`)" };
        var all = new Command("all", "Every CPU suite (decode, prefix, throughput, latency, hostile, peer) into one folder of JSON files, with progress");
        foreach (var o in new Option[] { allOut, allQuick, allPeer }) all.Options.Add(o);
        all.SetAction((p, _) => Suites.RunCpu(p.GetValue(allOut)!, p.GetValue(allQuick), p.GetValue(allPeer)!));
        var reportResults = new Option<string>("--results") { DefaultValueFactory = _ => "bench-results", Description = "Folder of suite JSON files (from `all`, or copied from the GPU machine)" };
        var reportOut = new Option<string>("--out") { DefaultValueFactory = _ => "BENCHMARKS.md", Description = "Markdown file to write" };
        var reportCharts = new Option<string>("--charts") { DefaultValueFactory = _ => "docs/bench", Description = "Folder for the PNG charts" };
        var report = new Command("report", "Tables and PNG charts (Markdown) from a folder of suite results");
        foreach (var o in new Option[] { reportResults, reportOut, reportCharts }) report.Options.Add(o);
        report.SetAction(p => Report.Run(p.GetValue(reportResults)!, p.GetValue(reportOut)!, p.GetValue(reportCharts)!));
        var routeModel = new Option<string>("--model") { DefaultValueFactory = _ => "synthetic:tiny", Description = "Model every replica serves" };
        var routeReplicas = new Option<int>("--replicas") { DefaultValueFactory = _ => 3, Description = "Replicas behind the router" };
        var routePrompts = new Option<int>("--prompts") { DefaultValueFactory = _ => 8, Description = "Distinct system prompts" };
        var routeSystem = new Option<int>("--system-tokens") { DefaultValueFactory = _ => 448, Description = "Tokens per system prompt (synthetic:tiny's context is 512)" };
        var routeRequests = new Option<int>("--requests") { DefaultValueFactory = _ => 500, Description = "Requests per phase" };
        var routeClients = new Option<int>("--clients") { DefaultValueFactory = _ => 32, Description = "Concurrent streaming clients" };
        var routeTokens = new Option<int>("--max-tokens") { DefaultValueFactory = _ => 16, Description = "max_tokens per request" };
        var routeBlocks = new Option<int>("--kv-blocks") { DefaultValueFactory = _ => 128, Description = "KV blocks (16 tokens) per replica; the single-replica reference gets replicas x this" };
        var routeSeed = new Option<int>("--seed") { DefaultValueFactory = _ => 11, Description = "Seed of the prompts and their order" };
        var route = new Command("route", "Replicas behind `kernels route`: prefix-cache hit rate and throughput, cache-aware vs round-robin (single replica as reference), then a replica killed mid-run");
        foreach (var o in new Option[] { routeModel, routeReplicas, routePrompts, routeSystem, routeRequests, routeClients, routeTokens, routeBlocks, routeSeed, json }) route.Options.Add(o);
        route.SetAction((p, _) => RouteBench.Run(new RouteBench.Settings(p.GetValue(routeModel)!, p.GetValue(routeReplicas), p.GetValue(routePrompts), p.GetValue(routeSystem),
            p.GetValue(routeRequests), p.GetValue(routeClients), p.GetValue(routeTokens), p.GetValue(routeBlocks), p.GetValue(routeSeed)), p.GetValue(json)));
        var quickJson = new Option<string>("--json") { DefaultValueFactory = _ => "bench-quick.json", Description = "Where to write the results document (bench-results.schema.json)" };
        var quick = new Command("quick", "Every suite on tiny shapes on the CPU, one JSON document (for CI)");
        quick.Options.Add(quickJson);
        quick.SetAction((p, _) => Quick.Run(p.GetValue(quickJson)!));
        return [quick, all, report, latency, hostile, hostileAttack, route, peer];
    }
}
#endif
