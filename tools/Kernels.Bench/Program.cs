// kernels-bench: the command line only: every command's options and what it runs. The harness (device and fatbin,
// CPU and GPU rooflines, verify's runner and judge) is in Harness/, verify's cases in Verify/, the timing suites in
// Suites/, the llama.cpp comparison in Peer/, the tables and charts in Report/.
using System.CommandLine;
using Kernels.Runtime.KvCache;

namespace Kernels.Bench;

public static class Program
{
    public static int Main(string[] args)
    {
        var model = new Option<string>("--model") { DefaultValueFactory = _ => "synthetic:small", Description = "Model to time" };
        var batches = new Option<string>("--batch") { DefaultValueFactory = _ => "1,16", Description = "Comma-separated batch sizes" };
        var steps = new Option<int>("--steps") { DefaultValueFactory = _ => 32, Description = "Timed decode steps per batch size" };
        var context = new Option<int>("--context") { DefaultValueFactory = _ => 64, Description = "Tokens already in each sequence's KV cache" };
        var json = new Option<string?>("--json") { Description = "Also write the results to this JSON file" };
        var kvCache = new Option<string>("--kv-cache") { DefaultValueFactory = _ => "fp32", Description = "KV cache format: fp32, fp16, kivi2, kivi4 (KIVI with G 32, R 128)" };
        kvCache.AcceptOnlyFromAmong("fp32", "fp16", "kivi2", "kivi4");
        var decode = new Command("decode", "CPU decode throughput: tokens/s per batch size, and the weight-streaming roofline");
        foreach (var o in new Option[] { model, batches, steps, context, kvCache, json }) decode.Options.Add(o);
        decode.SetAction(p => CpuDecode.Run(p.GetValue(model)!, p.GetValue(batches)!, p.GetValue(steps), p.GetValue(context), p.GetValue(json),
            new KvCacheFormat { Kind = KvCacheFormat.ParseKind(p.GetValue(kvCache)!) }));
        var prefixModel = new Option<string>("--model") { DefaultValueFactory = _ => "synthetic:small", Description = "Model to time" };
        var prefixBatches = new Option<string>("--batch") { DefaultValueFactory = _ => "16,64", Description = "Comma-separated batch sizes" };
        var prefixLengths = new Option<string>("--prefix") { DefaultValueFactory = _ => "512,1536", Description = "Comma-separated shared prefix lengths" };
        var suffix = new Option<int>("--suffix") { DefaultValueFactory = _ => 32, Description = "Unique tokens per sequence after the prefix" };
        var prefixSteps = new Option<int>("--steps") { DefaultValueFactory = _ => 8, Description = "Timed decode steps per case" };
        var prefix = new Command("prefix", "CPU decode steps of a batch sharing one prompt prefix: Hydragen plan vs per-sequence attention over private copies");
        foreach (var o in new Option[] { prefixModel, prefixBatches, prefixLengths, suffix, prefixSteps, json }) prefix.Options.Add(o);
        prefix.SetAction(p => SharedPrefix.Run(p.GetValue(prefixModel)!, p.GetValue(prefixBatches)!, p.GetValue(prefixLengths)!, p.GetValue(suffix), p.GetValue(prefixSteps), p.GetValue(json)));
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
        var verifyJson = new Option<string?>("--json") { Description = "Also write the results to this JSON file" };
        var fatbin = new Option<string?>("--fatbin") { Description = "Verify this fatbin (e.g. one the GPU machine's nvcc built) instead of the embedded one" };
        var seed = new Option<int>("--seed") { DefaultValueFactory = _ => 1234, Description = "Seed of the random inputs" };
        var ordinal = new Option<int>("--device") { DefaultValueFactory = _ => 0, Description = "CUDA device ordinal" };
        var verify = new Command("verify", "Every op kernel vs its CPU reference on random inputs of real shapes; exit 1 on any FAIL, 2 without CUDA");
        foreach (var o in new Option[] { verifyJson, fatbin, seed, ordinal }) verify.Options.Add(o);
        verify.SetAction(p => Verify.Run(p.GetValue(fatbin), p.GetValue(verifyJson), p.GetValue(seed), p.GetValue(ordinal)));
        var kernelsJson = new Option<string>("--json") { DefaultValueFactory = _ => "kernels.json", Description = "Where to write the timings (Report.cs reads kernels.json)" };
        var kernelsIters = new Option<int>("--iterations") { DefaultValueFactory = _ => 50, Description = "Timed launches per shape (median)" };
        var kernelsQuick = new Option<bool>("--quick") { Description = "A few small shapes only" };
        var kernelsCmd = new Command("kernels", "GPU kernel timings (CUDA events, L2 flushed, median) with achieved GB/s, TFLOP/s and the measured roofline; exit 2 without CUDA");
        foreach (var o in new Option[] { kernelsJson, kernelsIters, kernelsQuick, fatbin, ordinal }) kernelsCmd.Options.Add(o);
        kernelsCmd.SetAction(p => KernelTimings.Run(p.GetValue(fatbin), p.GetValue(kernelsJson)!, p.GetValue(kernelsIters), p.GetValue(kernelsQuick), p.GetValue(ordinal)));
        var e2eJson = new Option<string?>("--json") { Description = "Also write the results to this JSON file" };
        var e2eQuick = new Option<bool>("--quick") { Description = "Fewer leak iterations, batches 1 and 16 only" };
        var e2e = new Command("e2e", "CUDA backend end to end: logits parity with the CPU backend, create/dispose leak check, llama3-8b decode throughput vs roofline; exit 2 without CUDA");
        foreach (var o in new Option[] { e2eJson, e2eQuick, fatbin, ordinal }) e2e.Options.Add(o);
        e2e.SetAction(p => EndToEnd.Run(p.GetValue(fatbin), p.GetValue(e2eJson), p.GetValue(ordinal), p.GetValue(e2eQuick)));
        var sharedJson = new Option<string?>("--json") { Description = "Also write the results to this JSON file" };
        var sharedQuick = new Option<bool>("--quick") { Description = "16 sequences instead of 64, fewer steps" };
        var sharedGpu = new Command("shared-gpu", "CUDA backend, synthetic:llama3-8b: 64 sequences sharing a 4096-token prompt decoding with and without Hydragen levels vs roofline, and a 2048-token prefill with the tensor-core and CUDA-core attention; exit 2 without CUDA");
        foreach (var o in new Option[] { sharedJson, sharedQuick, fatbin, ordinal }) sharedGpu.Options.Add(o);
        sharedGpu.SetAction(p => EndToEnd.RunShared(p.GetValue(fatbin), p.GetValue(sharedJson), p.GetValue(ordinal), p.GetValue(sharedQuick)));
        var emulatedOnly = new Option<string?>("--only") { Description = "Run only the checks whose name contains this text" };
        var e2eEmulated = new Command("e2e-emulated", "The CUDA backend vs the CPU backend on small models, under the CPU emulation of the CUDA driver (LD_LIBRARY_PATH at tests/kernels-emu/driver's libcuda.so.1); exit 2 without a driver");
        e2eEmulated.Options.Add(emulatedOnly);
        e2eEmulated.SetAction(p => EndToEnd.RunEmulated(p.GetValue(emulatedOnly)));
        var stepBatch = new Option<int>("--batch") { DefaultValueFactory = _ => 1, Description = "Sequences decoding together" };
        var stepContext = new Option<int>("--context") { DefaultValueFactory = _ => 1024, Description = "Cached keys per sequence" };
        var stepSteps = new Option<int>("--steps") { DefaultValueFactory = _ => 1, Description = "Decode steps inside the profiled range" };
        var gpuStep = new Command("gpu-step", "Decode steps of synthetic:llama3-8b on the CUDA backend, no graphs, inside cuProfilerStart/Stop: for ncu --profile-from-start off; exit 2 without CUDA");
        foreach (var o in new Option[] { stepBatch, stepContext, stepSteps, fatbin, ordinal }) gpuStep.Options.Add(o);
        gpuStep.SetAction(p => EndToEnd.ProfileSteps(p.GetValue(fatbin), p.GetValue(ordinal), p.GetValue(stepBatch), p.GetValue(stepContext), p.GetValue(stepSteps)));
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
        var tpModel = new Option<string>("--model") { DefaultValueFactory = _ => "synthetic:small", Description = "Model to run" };
        var tpWorkloads = new Option<string>("--workload") { DefaultValueFactory = _ => "random,system-prompt,few-shot,samples", Description = "Comma-separated: random, system-prompt, few-shot, samples" };
        var tpRequests = new Option<int>("--requests") { DefaultValueFactory = _ => 32, Description = "Requests per workload" };
        var tpInput = new Option<int>("--input-len") { DefaultValueFactory = _ => 32, Description = "Mean unique prompt tokens per request" };
        var tpOutput = new Option<int>("--output-len") { DefaultValueFactory = _ => 32, Description = "Mean output tokens per sequence" };
        var tpPrefix = new Option<int>("--prefix-len") { DefaultValueFactory = _ => 512, Description = "Shared system prompt tokens" };
        var tpSamples = new Option<int>("--n") { DefaultValueFactory = _ => 8, Description = "Samples per prompt in the 'samples' workload" };
        var tpSharing = new Option<string>("--prefix-sharing") { DefaultValueFactory = _ => "both", Description = "on, off or both (side by side)" };
        tpSharing.AcceptOnlyFromAmong("on", "off", "both");
        var throughput = new Command("throughput", "Offline batch generation (vLLM-style): requests/s and tokens/s on random and shared-prefix workloads");
        foreach (var o in new Option[] { tpModel, tpWorkloads, tpRequests, tpInput, tpOutput, tpPrefix, tpSamples, tpSharing, json }) throughput.Options.Add(o);
        throughput.SetAction(p => Throughput.Run(p.GetValue(tpModel)!, p.GetValue(tpWorkloads)!, p.GetValue(tpRequests), p.GetValue(tpInput), p.GetValue(tpOutput),
            p.GetValue(tpPrefix), p.GetValue(tpSamples), p.GetValue(tpSharing)!, p.GetValue(json)));
        var kvModels = new Option<string>("--models") { DefaultValueFactory = _ => "../shared/models/stories260K/stories260K.bin", Description = "Comma-separated models for the accuracy table" };
        var kvText = new Option<string>("--text") { DefaultValueFactory = _ => "../shared/data/story.txt", Description = "Text whose perplexity is measured (its first 16 tokens prompt the greedy run)" };
        var kvTokenizer = new Option<string?>("--tokenizer") { Description = "Tokenizer for models that have none (the golden models: ../shared/models/stories260K/tok512.bin)" };
        var kvGreedy = new Option<int>("--greedy-tokens") { DefaultValueFactory = _ => 256, Description = "Greedy tokens compared with fp32" };
        var kvGroup = new Option<int>("--kv-group") { DefaultValueFactory = _ => 32, Description = "KIVI group size G" };
        var kvWindow = new Option<int>("--kv-window") { DefaultValueFactory = _ => 32, Description = "KIVI full-precision window R (small, so the quantized part matters on short texts)" };
        var kvCapModel = new Option<string>("--capacity-model") { DefaultValueFactory = _ => "synthetic:tiny", Description = "Model for the capacity table" };
        var kvBudget = new Option<long>("--kv-bytes") { DefaultValueFactory = _ => 8L * 496 * 512, Description = "KV budget in bytes for the capacity table (default: 8 fp32 sequences of 496 tokens of synthetic:tiny)" };
        var kvRequests = new Option<int>("--requests") { DefaultValueFactory = _ => 64, Description = "Requests in the capacity run" };
        var kvPrompt = new Option<int>("--input-len") { DefaultValueFactory = _ => 400, Description = "Prompt tokens per request in the capacity run" };
        var kvOutput = new Option<int>("--output-len") { DefaultValueFactory = _ => 96, Description = "New tokens per request in the capacity run" };
        var kivi = new Command("kivi", "KIVI KV cache: perplexity and greedy agreement vs fp32, and the largest batch and tokens/s at a fixed KV budget (fp32, fp16, kivi4, kivi2)");
        foreach (var o in new Option[] { kvModels, kvText, kvTokenizer, kvGreedy, kvGroup, kvWindow, kvCapModel, kvBudget, kvRequests, kvPrompt, kvOutput, json }) kivi.Options.Add(o);
        kivi.SetAction(p => KiviBench.Run(p.GetValue(kvModels)!, p.GetValue(kvText)!, p.GetValue(kvTokenizer), p.GetValue(kvGreedy), p.GetValue(kvGroup), p.GetValue(kvWindow),
            p.GetValue(kvCapModel)!, p.GetValue(kvBudget), p.GetValue(kvRequests), p.GetValue(kvPrompt), p.GetValue(kvOutput), p.GetValue(json)));
        var quickJson = new Option<string>("--json") { DefaultValueFactory = _ => "bench-quick.json", Description = "Where to write the results document (bench-results.schema.json)" };
        var quick = new Command("quick", "Every suite on tiny shapes on the CPU, one JSON document (for CI)");
        quick.Options.Add(quickJson);
        quick.SetAction((p, _) => Quick.Run(p.GetValue(quickJson)!));
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
        var root = new RootCommand("kernels-bench: kernel and engine benchmarks");
        var rootQuick = new Option<bool>("--quick") { Description = "Same as `quick`: every suite on tiny shapes, bench-quick.json" };
        root.Options.Add(rootQuick);
        root.SetAction((p, _) => p.GetValue(rootQuick) ? Quick.Run("bench-quick.json") : Task.FromResult(Help(root)));
        root.Subcommands.Add(all);
        root.Subcommands.Add(report);
        root.Subcommands.Add(quick);
        root.Subcommands.Add(throughput);
        root.Subcommands.Add(latency);
        root.Subcommands.Add(hostile);
        root.Subcommands.Add(hostileAttack);
        root.Subcommands.Add(route);
        root.Subcommands.Add(decode);
        root.Subcommands.Add(prefix);
        root.Subcommands.Add(verify);
        root.Subcommands.Add(kernelsCmd);
        root.Subcommands.Add(e2e);
        root.Subcommands.Add(gpuStep);
        root.Subcommands.Add(sharedGpu);
        root.Subcommands.Add(e2eEmulated);
        root.Subcommands.Add(peer);
        root.Subcommands.Add(kivi);
        root.Subcommands.Add(SqueezeGpu.CreateCommand());
        root.Subcommands.Add(Tune.CreateCommand());
        root.Subcommands.Add(MatMulBench.CreateCommand());
        return root.Parse(args).Invoke();
    }

    /// <summary>stories260K from ../shared (beside the repository or the working directory) when present, else synthetic:tiny.</summary>
    internal static string StoriesOrTiny()
    {
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir != null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "shared", "models", "stories260K", "stories260K.bin");
            if (File.Exists(candidate)) return candidate;
        }
        return "synthetic:tiny";
    }

    private static int Help(RootCommand root)
    {
        root.Parse("--help").Invoke();
        return 1;
    }
}
