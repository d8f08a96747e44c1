// Detects a model's format (HF directory, GGUF, llama2.c .bin, synthetic:NAME) and loads config, weights and tokenizer.
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Tokenization;

namespace Kernels.Runtime.Models;

public sealed record ModelLoadOptions
{
    /// <summary>Explicit tokenizer file (tokenizer.model, tokenizer.json or a llama2.c tok*.bin); null = find it.</summary>
    public string? TokenizerPath { get; init; }
    public int SyntheticSeed { get; init; } = 1234;
}

public static class ModelLoader
{
    /// <summary>Tensors every layer has at least (two norms, seven projections): what bounds a layer count by the files.</summary>
    public const int MinTensorsPerLayer = 9;

    public static LoadedModel Load(string model, ModelLoadOptions? options = null)
    {
        options ??= new ModelLoadOptions();
        if (SyntheticModels.IsSynthetic(model)) return SyntheticModels.Create(model, options.SyntheticSeed);

        if (Directory.Exists(model)) return LoadHfDirectory(model, options);
        if (!File.Exists(model)) throw new ModelFormatException(model, "no such file or directory");
        if (Path.GetFileName(model) is "config.json" or "model.safetensors" or "model.safetensors.index.json")
            return LoadHfDirectory(Path.GetDirectoryName(Path.GetFullPath(model))!, options);

        Span<byte> head = stackalloc byte[28];
        int read;
        using (var f = File.OpenRead(model)) read = f.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        head = head[..read];
        if (GgufFile.HasMagic(head) || model.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase)) return LoadGguf(model, options);
        if (Llama2cCheckpoint.LooksLikeCheckpoint(head)) return LoadLlama2c(model, options);
        throw new ModelFormatException(model, "unrecognized model format: expected a Hugging Face directory (config.json + safetensors), a .gguf file or a llama2.c .bin checkpoint");
    }

    private static LoadedModel LoadHfDirectory(string dir, ModelLoadOptions options)
    {
        string configPath = Path.Combine(dir, "config.json");
        var config = HfConfigReader.Read(configPath);
        var quantization = QuantizationConfig.Read(configPath);
        var files = new List<SafetensorsFile>();
        try
        {
            var lookup = OpenSafetensors(dir, files);
            long tensors = files.Sum(f => (long)f.Entries.Count);
            if ((long)config.NumLayers * MinTensorsPerLayer > tensors)
                throw new ModelFormatException(configPath, $"num_hidden_layers = {config.NumLayers} needs at least {(long)config.NumLayers * MinTensorsPerLayer} tensors; the safetensors files hold {tensors}");
            var weights = ModelWeights.Build(config, lookup, dir, files, quantization);
            return new LoadedModel(dir, ModelFormat.HuggingFace, config, weights,
                () => options.TokenizerPath != null ? TokenizerFromFile(options.TokenizerPath) : TokenizerLoader.ForModelDirectory(dir))
            {
                ChatTemplateText = ReadChatTemplate(Path.Combine(dir, "tokenizer_config.json")),
            };
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    /// <summary>Opens model.safetensors, or every shard named by model.safetensors.index.json.</summary>
    private static Func<string, WeightTensor?> OpenSafetensors(string dir, List<SafetensorsFile> files)
    {
        string single = Path.Combine(dir, "model.safetensors"), index = Path.Combine(dir, "model.safetensors.index.json");
        if (File.Exists(single))
        {
            var f = SafetensorsFile.Open(single);
            files.Add(f);
            return n => f.Entries.ContainsKey(n) ? f.GetWeight(n) : null;
        }
        if (!File.Exists(index))
            throw new ModelFormatException(dir, "no model.safetensors or model.safetensors.index.json in the model directory");

        var weightMap = new Dictionary<string, string>();
        using (var doc = JsonFields.ParseFile(index))
        {
            var root = new JsonFields(doc.RootElement, index);
            var map = root.Object("weight_map") ?? throw new ModelFormatException(index, "malformed index: no \"weight_map\" object");
            foreach (var p in map.Element.EnumerateObject())
            {
                string shard = map.String(p.Name) ?? throw new ModelFormatException(index, $"tensor '{p.Name}' has no shard file");
                // Shards live in the model directory: no absolute paths, no climbing out of it.
                if (shard.Length == 0 || Path.IsPathRooted(shard) || shard.Split('/', '\\').Contains(".."))
                    throw new ModelFormatException(index, $"shard '{shard}' of tensor '{p.Name}' is not a file name inside the model directory");
                if (!weightMap.TryAdd(p.Name, shard)) throw new ModelFormatException(index, $"tensor '{p.Name}' is listed twice");
            }
        }
        var shards = new Dictionary<string, SafetensorsFile>();
        foreach (var shard in weightMap.Values.Distinct())
        {
            var f = SafetensorsFile.Open(Path.Combine(dir, shard));
            files.Add(f);
            shards[shard] = f;
        }
        return n =>
        {
            if (!weightMap.TryGetValue(n, out var shard)) return null;
            var f = shards[shard];
            if (!f.Entries.ContainsKey(n)) throw new ModelFormatException(f.Path, $"the index places tensor '{n}' here but the file does not hold it");
            return f.GetWeight(n);
        };
    }

    private static LoadedModel LoadGguf(string path, ModelLoadOptions options)
    {
        var gguf = GgufFile.Open(path);
        try
        {
            ModelConfig config;
            ModelWeights weights;
            try
            {
                (config, weights) = GgufModel.Load(gguf);
            }
            catch (OverflowException e)
            {
                throw new ModelFormatException(path, $"a metadata value is out of range: {e.Message}", e);
            }
            var metadata = gguf.Metadata;
            return new LoadedModel(path, ModelFormat.Gguf, config, weights,
                () => options.TokenizerPath != null ? TokenizerFromFile(options.TokenizerPath) : TokenizerLoader.FromGgufMetadata(metadata, path))
            {
                ChatTemplateText = gguf.GetString("tokenizer.chat_template"),
            };
        }
        catch
        {
            gguf.Dispose();
            throw;
        }
    }

    private static LoadedModel LoadLlama2c(string path, ModelLoadOptions options)
    {
        var (config, weights) = Llama2cCheckpoint.Load(path);
        return new LoadedModel(path, ModelFormat.Llama2c, config, weights, () =>
        {
            if (options.TokenizerPath != null) return TokenizerFromFile(options.TokenizerPath);
            string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
            string[] candidates = [Path.Combine(dir, "tokenizer.bin"), Path.Combine(dir, $"tok{config.VocabSize}.bin"), Path.Combine(dir, "tokenizer.model")];
            var found = candidates.FirstOrDefault(File.Exists)
                ?? throw new ModelFormatException(path, $"missing tokenizer: none of {string.Join(", ", candidates.Select(Path.GetFileName))} next to the checkpoint; point ModelLoadOptions.TokenizerPath at one");
            return TokenizerFromFile(found);
        });
    }

    /// <summary>tokenizer_config.json's "chat_template" (a string, or the "default" entry of a list of named templates).</summary>
    private static string? ReadChatTemplate(string path)
    {
        if (!File.Exists(path)) return null;
        using var doc = JsonFields.ParseFile(path);
        var root = new JsonFields(doc.RootElement, path);
        const string Key = "chat_template";
        if (root.Raw(Key) is not { } t) return null;
        if (t.ValueKind == System.Text.Json.JsonValueKind.String) return root.Text(t, Key);
        if (t.ValueKind != System.Text.Json.JsonValueKind.Array) throw root.Wrong(Key, t, "a string or a list of {\"name\", \"template\"} objects");
        int i = 0;
        foreach (var named in t.EnumerateArray())
        {
            if (named.ValueKind != System.Text.Json.JsonValueKind.Object) throw root.Wrong($"{Key}[{i}]", named, "a {\"name\", \"template\"} object");
            var entry = new JsonFields(named, path, $"{Key}[{i}].");
            string? name = entry.String("name");
            string? template = entry.String("template");
            if (name == "default") return template;
            i++;
        }
        return null;
    }

    /// <summary>A tokenizer file named explicitly; its kind is told by its name.</summary>
    public static ITextTokenizer TokenizerFromFile(string path)
    {
        if (!File.Exists(path)) throw new ModelFormatException(path, "tokenizer file not found");
        return Path.GetExtension(path).ToLowerInvariant() switch
        {
            ".json" => TokenizerLoader.FromHfTokenizerJson(path),
            ".model" => TokenizerLoader.FromSentencePieceModel(path),
            ".bin" => TokenizerLoader.FromLlama2cFile(path),
            _ => throw new ModelFormatException(path, "unknown tokenizer kind: expected tokenizer.json, tokenizer.model or a llama2.c tok*.bin"),
        };
    }
}
