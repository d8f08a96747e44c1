// The seeded fuzz suite over every model reader: thousands of mutants of small valid files (GGUF, safetensors +
// config.json + tokenizer_config.json, llama2.c checkpoints and tokenizers; stories260K too when ../shared has it).
// Each must end in a ModelFormatException or a normal load and run, in bounded time and memory, every tensor inside
// the model's memory. Counts and outcomes are printed; a failure names the seed, the case and the mutation.
using System.Text;
using Kernels.Runtime.Numerics;

namespace Kernels.Tests.Models.Hostile;

[NonParallelizable]
public class ModelFileFuzzTests
{
    private const int Seed = 21;
    public const string SummaryFile = "fuzz-summary.txt";
    private static readonly TimeSpan CaseTimeout = TimeSpan.FromSeconds(30);

    private string _dir = "";

    [SetUp]
    public void CreateDirectory()
    {
        _dir = Path.Combine(Path.GetTempPath(), "kernels-fuzz-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
    }

    [TearDown]
    public void RemoveDirectory() => Directory.Delete(_dir, recursive: true);

    private void RunAll(string what, int count, int seed, Func<Random, FuzzCase> make, FuzzCase original)
    {
        // The unmutated files load and run: otherwise every mutant would be "refused" for the wrong reason.
        Assert.That(ModelFileFuzzer.Run(original, _dir, CaseTimeout), Is.EqualTo(FuzzOutcome.Loaded), $"{what}: the original files load and run ({ModelFileFuzzer.LastTokenizerRefusal})");
        var rng = new Random(seed);
        var outcomes = new Dictionary<FuzzOutcome, int>();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        for (int i = 0; i < count; i++)
        {
            var fuzz = make(rng);
            fuzz = fuzz with { Description = $"{what} seed {seed} case {i}: {fuzz.Description}" };
            var outcome = ModelFileFuzzer.Run(fuzz, _dir, CaseTimeout);
            outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + 1;
        }
        string line = $"fuzz {what}: {count} cases (seed {seed}) in {clock.Elapsed.TotalSeconds:F1} s: " +
                      $"{outcomes.GetValueOrDefault(FuzzOutcome.Refused)} refused with a ModelFormatException, {outcomes.GetValueOrDefault(FuzzOutcome.Loaded)} loaded and ran";
        TestContext.Out.WriteLine(line);
        // `./build.sh test` prints this file after the run (dotnet test shows no output of passing tests).
        lock (SummaryFile) File.AppendAllText(Path.Combine(TestContext.CurrentContext.WorkDirectory, SummaryFile), line + "\n");
        Assert.That(outcomes.GetValueOrDefault(FuzzOutcome.Refused), Is.GreaterThan(0), "the mutations reach the checks");
    }

    [Test]
    public void Gguf()
    {
        var source = TestModelFiles.TinyGguf(TensorDType.F16);
        var layout = GgufLayout.Of(source);
        RunAll("tiny GGUF F16", 1500, Seed, rng =>
        {
            var (bytes, what) = ModelFileFuzzer.Gguf(source, layout, rng);
            return new FuzzCase(what, [("model.gguf", bytes)], "model.gguf");
        }, new FuzzCase("original", [("model.gguf", source)], "model.gguf"));
    }

    [Test]
    public void GgufQ8_0()
    {
        var source = TestModelFiles.TinyGguf(TensorDType.Q8_0);
        var layout = GgufLayout.Of(source);
        RunAll("tiny GGUF Q8_0", 500, Seed + 1, rng =>
        {
            var (bytes, what) = ModelFileFuzzer.Gguf(source, layout, rng);
            return new FuzzCase(what, [("model.gguf", bytes)], "model.gguf");
        }, new FuzzCase("original", [("model.gguf", source)], "model.gguf"));
    }

    [Test]
    public void Stories260KGguf()
    {
        var source = File.ReadAllBytes(SharedData.Require("models/stories260K/stories260K.gguf"));
        var layout = GgufLayout.Of(source);
        RunAll("stories260K GGUF", 600, Seed + 2, rng =>
        {
            var (bytes, what) = ModelFileFuzzer.Gguf(source, layout, rng);
            return new FuzzCase(what, [("model.gguf", bytes)], "model.gguf");
        }, new FuzzCase("original", [("model.gguf", source)], "model.gguf"));
    }

    [Test]
    public void HuggingFaceDirectory()
    {
        string golden = TestModelFiles.HfDirectory(Path.Combine(_dir, "..", Path.GetFileName(_dir) + "-source"), withTokenizer: true);
        try
        {
            var weights = File.ReadAllBytes(Path.Combine(golden, "model.safetensors"));
            var config = File.ReadAllBytes(Path.Combine(golden, "config.json"));
            var tokenizerConfig = File.ReadAllBytes(Path.Combine(golden, "tokenizer_config.json"));
            var tokenizer = File.ReadAllBytes(Path.Combine(golden, "tokenizer.json"));
            string[] configExtras = ["head_dim", "sliding_window", "use_sliding_window", "rope_theta", "eos_token_id", "bos_token_id", "tie_word_embeddings", "quantization_config"];
            string[] tokenizerExtras = ["chat_template", "bos_token", "eos_token", "add_bos_token"];
            RunAll("HF directory (safetensors + config.json + tokenizer_config.json + tokenizer.json)", 1200, Seed + 3, rng =>
            {
                byte[] w = weights, c = config, t = tokenizerConfig, j = tokenizer;
                string what;
                switch (rng.Next(12))
                {
                    case < 5: (w, what) = ModelFileFuzzer.Safetensors(weights, rng); what = "model.safetensors: " + what; break;
                    case < 8: (c, what) = ModelFileFuzzer.Json(config, rng, configExtras); what = "config.json: " + what; break;
                    case < 10: (t, what) = ModelFileFuzzer.Json(tokenizerConfig, rng, tokenizerExtras); what = "tokenizer_config.json: " + what; break;
                    default: (j, what) = ModelFileFuzzer.TokenizerJson(tokenizer, rng); what = "tokenizer.json: " + what; break;
                }
                return new FuzzCase(what, [("model.safetensors", w), ("config.json", c), ("tokenizer_config.json", t), ("tokenizer.json", j)], "");
            }, new FuzzCase("original", [("model.safetensors", weights), ("config.json", config), ("tokenizer_config.json", tokenizerConfig), ("tokenizer.json", tokenizer)], ""));
        }
        finally
        {
            Directory.Delete(golden, true);
        }
    }

    [Test]
    public void Llama2cCheckpoint()
    {
        var checkpoint = TestModelFiles.Llama2cCheckpoint();
        var tokenizer = Llama2cTokenizerBytes();
        RunAll("llama2.c checkpoint + tokenizer.bin", 800, Seed + 4, rng =>
        {
            byte[] c = checkpoint, t = tokenizer;
            string what;
            if (rng.Next(4) == 0) { (t, what) = ModelFileFuzzer.Llama2cTokenizer(tokenizer, rng); what = "tokenizer.bin: " + what; }
            else { (c, what) = ModelFileFuzzer.Llama2c(checkpoint, rng); what = "model.bin: " + what; }
            return new FuzzCase(what, [("model.bin", c), ("tokenizer.bin", t)], "model.bin");
        }, new FuzzCase("original", [("model.bin", checkpoint), ("tokenizer.bin", tokenizer)], "model.bin"));
    }

    [Test]
    public void Stories260KLlama2c()
    {
        var checkpoint = File.ReadAllBytes(SharedData.Require("models/stories260K/stories260K.bin"));
        var tokenizer = File.ReadAllBytes(SharedData.Require("models/stories260K/tok512.bin"));
        RunAll("stories260K llama2.c checkpoint + tok512.bin", 400, Seed + 5, rng =>
        {
            byte[] c = checkpoint, t = tokenizer;
            string what;
            if (rng.Next(3) == 0) { (t, what) = ModelFileFuzzer.Llama2cTokenizer(tokenizer, rng); what = "tok512.bin: " + what; }
            else { (c, what) = ModelFileFuzzer.Llama2c(checkpoint, rng); what = "stories260K.bin: " + what; }
            return new FuzzCase(what, [("stories260K.bin", c), ("tok512.bin", t)], "stories260K.bin");
        }, new FuzzCase("original", [("stories260K.bin", checkpoint), ("tok512.bin", tokenizer)], "stories260K.bin"));
    }

    /// <summary>A llama2.c tok*.bin for synthetic:tiny's 512 ids: &lt;unk&gt;, BOS, EOS, 256 byte tokens, then letters and pairs.</summary>
    private static byte[] Llama2cTokenizerBytes()
    {
        using var stream = new MemoryStream();
        using var w = new BinaryWriter(stream);
        var pieces = new List<string> { "<unk>", "\n<s>\n", "\n</s>\n" };
        for (int b = 0; b < 256; b++) pieces.Add($"<0x{b:X2}>");
        for (char a = 'a'; a <= 'z'; a++) pieces.Add(" " + a);
        for (int i = 0; pieces.Count < 512; i++) pieces.Add($"{(char)('a' + i / 26)}{(char)('a' + i % 26)}");
        w.Write(pieces.Max(p => Encoding.UTF8.GetByteCount(p)));
        for (int i = 0; i < pieces.Count; i++)
        {
            var bytes = Encoding.UTF8.GetBytes(pieces[i]);
            w.Write(i < 259 ? 0f : -i);
            w.Write(bytes.Length);
            w.Write(bytes);
        }
        w.Flush();
        return stream.ToArray();
    }
}
