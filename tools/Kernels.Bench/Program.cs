// kernels-bench: the command line only: every command's options and what it runs (the commands the GPU machine's bundle
// leaves out are in Program.Host.cs). The harness (device and fatbin, CPU and GPU rooflines, verify's runner and judge)
// is in Harness/, verify's cases in Verify/, the timing suites in Suites/, the llama.cpp comparison in Peer/, the tables
// and charts in Report/.
using System.CommandLine;
using Kernels.Runtime.KvCache;

namespace Kernels.Bench;

public static partial class Program
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
        var root = new RootCommand("kernels-bench: kernel and engine benchmarks");
#if DEVICE_BUNDLE
        root.SetAction(_ => Help(root));
#else
        var rootQuick = new Option<bool>("--quick") { Description = "Same as `quick`: every suite on tiny shapes, bench-quick.json" };
        root.Options.Add(rootQuick);
        root.SetAction((p, _) => p.GetValue(rootQuick) ? Quick.Run("bench-quick.json") : Task.FromResult(Help(root)));
        foreach (var command in HostCommands()) root.Subcommands.Add(command);
#endif
        root.Subcommands.Add(throughput);
        root.Subcommands.Add(decode);
        root.Subcommands.Add(prefix);
        root.Subcommands.Add(verify);
        root.Subcommands.Add(kernelsCmd);
        root.Subcommands.Add(e2e);
        root.Subcommands.Add(gpuStep);
        root.Subcommands.Add(sharedGpu);
        root.Subcommands.Add(e2eEmulated);
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
