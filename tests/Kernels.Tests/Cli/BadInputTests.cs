// Bad input ends with one clear message naming the file or argument and the problem, and a non-zero exit code.
using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;

namespace Kernels.Tests.Cli;

public class BadInputTests
{
    private string _dir = "";

    [SetUp]
    public void CreateDirectory()
    {
        _dir = Path.Combine(Path.GetTempPath(), "kernels-bad-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
    }

    [TearDown]
    public void RemoveDirectory() => Directory.Delete(_dir, recursive: true);

    private static (int Code, string Out, string Error) Kernels(params string[] args) => CliRunner.Run(args);

    /// <summary>A copy of the golden tiny Llama as an HF directory we may damage.</summary>
    private string CopyGoldenModel()
    {
        string model = Path.Combine(_dir, "model");
        Directory.CreateDirectory(model);
        foreach (var f in Directory.GetFiles(TestPaths.Golden("tiny-llama-f32")))
            if (!f.EndsWith("golden.safetensors")) File.Copy(f, Path.Combine(model, Path.GetFileName(f)));
        return model;
    }

    private static void AssertOneClearError((int Code, string Out, string Error) r, params string[] fragments)
    {
        Assert.That(r.Code, Is.Not.EqualTo(0), r.Error);
        var errorLines = r.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.StartsWith("error:")).ToArray();
        Assert.That(errorLines, Has.Length.EqualTo(1), r.Error);
        foreach (var f in fragments) Assert.That(errorLines[0], Does.Contain(f));
        Assert.That(r.Error, Does.Not.Contain("   at "), "no stack trace");
    }

    [Test]
    public void TruncatedSafetensors()
    {
        string model = CopyGoldenModel();
        string file = Path.Combine(model, "model.safetensors");
        var bytes = File.ReadAllBytes(file);
        File.WriteAllBytes(file, bytes[..(bytes.Length / 2)]);
        AssertOneClearError(Kernels("logits", "--model", model, "--ids", "1,2"), file, "truncated");

        File.WriteAllBytes(file, bytes[..5]);
        AssertOneClearError(Kernels("logits", "--model", model, "--ids", "1,2"), file, "truncated");
    }

    [Test]
    public void SafetensorsHeaderThatLiesAboutOffsets()
    {
        string model = CopyGoldenModel();
        string file = Path.Combine(model, "model.safetensors");
        File.WriteAllBytes(file, Models.Hostile.TestModelFiles.EditSafetensorsHeader(File.ReadAllBytes(file), header =>
        {
            var entry = header["model.norm.weight"]!.AsObject();
            long begin = (long)entry["data_offsets"]![0]!;
            entry["data_offsets"] = new JsonArray(begin, begin + 4 * 64 + 8); // 8 bytes more than [64] F32 holds
        }));
        AssertOneClearError(Kernels("logits", "--model", model, "--ids", "1,2"), file, "model.norm.weight", "data_offsets");
    }

    [Test]
    public void GgufWithBadMagic()
    {
        string file = Path.Combine(_dir, "model.gguf");
        File.WriteAllBytes(file, Encoding.ASCII.GetBytes("GGML").Concat(new byte[60]).ToArray());
        AssertOneClearError(Kernels("info", "--model", file), file, "bad magic");
    }

    [Test]
    public void GgufWithUnsupportedVersion()
    {
        string file = Path.Combine(_dir, "model.gguf");
        var bytes = new byte[64];
        Encoding.ASCII.GetBytes("GGUF").CopyTo(bytes, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(4), 7);
        File.WriteAllBytes(file, bytes);
        AssertOneClearError(Kernels("info", "--model", file), file, "version 7");
    }

    [Test]
    public void TruncatedGguf()
    {
        string source = SharedData.Require("models/stories260K/stories260K.gguf");
        string file = Path.Combine(_dir, "cut.gguf");
        var bytes = File.ReadAllBytes(source);
        File.WriteAllBytes(file, bytes[..(bytes.Length - 1000)]);
        AssertOneClearError(Kernels("info", "--model", file), file, "truncated");
    }

    [Test]
    public void TruncatedLlama2cCheckpoint()
    {
        string source = SharedData.Require("models/stories260K/stories260K.bin");
        string file = Path.Combine(_dir, "cut.bin");
        var bytes = File.ReadAllBytes(source);
        File.WriteAllBytes(file, bytes[..(bytes.Length / 3)]);
        AssertOneClearError(Kernels("info", "--model", file), file, "truncated");
    }

    [Test]
    public void ConfigNamingAnUnknownArchitecture()
    {
        string model = CopyGoldenModel();
        string config = Path.Combine(model, "config.json");
        var json = JsonNode.Parse(File.ReadAllText(config))!.AsObject();
        json["architectures"] = new JsonArray("GPT2LMHeadModel");
        json["model_type"] = "gpt2";
        File.WriteAllText(config, json.ToJsonString());
        AssertOneClearError(Kernels("info", "--model", model), config, "unknown architecture 'GPT2LMHeadModel'");
    }

    [Test]
    public void MissingTokenizer()
    {
        string model = CopyGoldenModel(); // weights and config, no tokenizer.json / tokenizer.model
        AssertOneClearError(Kernels("generate", "--model", model, "--prompt", "hello", "--max-tokens", "2"), model, "tokenizer");
    }

    [Test]
    public void PromptLongerThanTheContext()
    {
        string prompt = new('x', 600); // the synthetic tokenizer makes one token per byte; tiny's context is 512
        AssertOneClearError(Kernels("generate", "--model", "synthetic:tiny", "--prompt", prompt), "--prompt", "601 tokens", "context is 512");
    }

    [Test]
    public void ModelPathThatDoesNotExist()
    {
        string missing = Path.Combine(_dir, "nope");
        AssertOneClearError(Kernels("info", "--model", missing), missing, "no such file or directory");
    }

    [Test]
    public void TokenIdOutsideTheVocabulary()
    {
        AssertOneClearError(Kernels("logits", "--model", "synthetic:tiny", "--ids", "1,9999"), "--ids", "9999");
    }

    [Test]
    public void ShapeThatDoesNotMatchTheConfig()
    {
        string model = CopyGoldenModel();
        string config = Path.Combine(model, "config.json");
        var json = JsonNode.Parse(File.ReadAllText(config))!.AsObject();
        json["intermediate_size"] = 200;
        File.WriteAllText(config, json.ToJsonString());
        AssertOneClearError(Kernels("info", "--model", model), "gate_proj", "[176, 64]", "[200, 64]");
    }

    [Test]
    public void BadKvCacheOptionsNameTheOption()
    {
        AssertOneClearError(Kernels("logits", "--model", "synthetic:tiny", "--ids", "1,2", "--kv-cache", "kivi2", "--kv-group", "24"), "--kv-group", "multiple of 16");
        AssertOneClearError(Kernels("logits", "--model", "synthetic:tiny", "--ids", "1,2", "--kv-cache", "kivi2", "--kv-window", "-1"), "--kv-window");
        var r = Kernels("logits", "--model", "synthetic:tiny", "--ids", "1,2", "--kv-cache", "int3");
        Assert.That(r.Code, Is.Not.EqualTo(0));
        Assert.That(r.Error, Does.Contain("int3").And.Contain("kivi2"));
    }
}
