// Seeded mutations of model files (bit flips, truncations, size/offset fields set to boundary values) and the runner
// that loads each mutant and checks it ends in a clear error or a normal load and run, within time and memory bounds.
using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Tests.Models.Hostile;

/// <summary>One mutant: a description to reproduce it by, and the files to write (name under the case directory, bytes).</summary>
public sealed record FuzzCase(string Description, IReadOnlyList<(string Name, byte[] Bytes)> Files, string ModelName);

public enum FuzzOutcome { Refused, Loaded }

public static unsafe class ModelFileFuzzer
{
    /// <summary>The sizes, offsets and counts the issue names: 0, 2^31 - 1, 2^32, 2^63, 2^64 - 1, and their neighbours.</summary>
    public static readonly ulong[] Boundaries =
    [
        0, 1, 2, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x1_0000_0000, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, ulong.MaxValue,
        ulong.MaxValue - 1, 1UL << 20, 1UL << 40,
    ];

    /// <summary>Signed 32-bit boundaries (llama2.c header fields).</summary>
    public static readonly int[] Int32Boundaries = [0, 1, -1, 2, int.MaxValue, int.MinValue, int.MinValue + 1, 1 << 16, (1 << 16) + 1, 1 << 22, 3, 7];

    public static ulong Boundary(Random rng) => rng.Next(5) == 0 ? (ulong)rng.NextInt64() : Boundaries[rng.Next(Boundaries.Length)];

    // ---------------------------------------------------------------------------------------------------- mutations

    /// <summary>Flips 1-8 bits, mostly in the first <paramref name="hot"/> bytes (the header), sometimes anywhere.</summary>
    public static (byte[], string) FlipBits(byte[] source, Random rng, long hot)
    {
        var b = (byte[])source.Clone();
        int n = 1 + rng.Next(8);
        var where = new List<string>();
        for (int i = 0; i < n; i++)
        {
            long limit = rng.Next(4) == 0 ? b.Length : Math.Min(hot, b.Length);
            int at = (int)rng.NextInt64(limit), bit = rng.Next(8);
            b[at] ^= (byte)(1 << bit);
            where.Add($"{at}.{bit}");
        }
        return (b, $"bit flips at {string.Join(",", where)}");
    }

    /// <summary>Cuts the file, mostly inside the header, sometimes anywhere, sometimes at one of <paramref name="cuts"/>.</summary>
    public static (byte[], string) Truncate(byte[] source, Random rng, long hot, params long[] cuts)
    {
        long at = rng.Next(3) switch
        {
            0 when cuts.Length > 0 => cuts[rng.Next(cuts.Length)],
            1 => rng.NextInt64(source.Length),
            _ => rng.NextInt64(Math.Min(hot, source.Length)),
        };
        at = Math.Clamp(at, 0, source.Length - 1);
        return (source[..(int)at], $"truncated to {at} bytes");
    }

    /// <summary>
    /// A GGUF mutant: one to three edits, each a header field set to a boundary value (a dimension or offset also to
    /// "original + 2^k", which wraps a byte count back to a plausible size), bit flips, or a truncation (always last,
    /// sometimes exactly at the unaligned header end, which puts the aligned data start past the end of the file).
    /// </summary>
    public static (byte[], string) Gguf(byte[] source, GgufLayout layout, Random rng)
    {
        var b = (byte[])source.Clone();
        var what = new List<string>();
        int edits = rng.Next(3) == 0 ? 2 + rng.Next(2) : 1;
        bool truncate = false;
        for (int e = 0; e < edits; e++)
        {
            switch (rng.Next(10))
            {
                case < 6:
                    what.Add(SetGgufField(b, layout, rng));
                    break;
                case < 8:
                {
                    var (flipped, w) = FlipBits(b, rng, layout.HeaderEnd);
                    b = flipped;
                    what.Add(w);
                    break;
                }
                default:
                    truncate = true;
                    break;
            }
        }
        if (truncate)
        {
            var (cut, w) = Truncate(b, rng, layout.HeaderEnd, layout.HeaderEnd, (layout.HeaderEnd + 31) / 32 * 32, source.Length - 1);
            b = cut;
            what.Add(w);
        }
        return (b, string.Join("; ", what));
    }

    private static string SetGgufField(byte[] b, GgufLayout layout, Random rng)
    {
        ulong wrap = rng.Next(4) switch { 0 => 1UL << 61, 1 => 1UL << 62, 2 => 1UL << 63, _ => unchecked(0UL - (4UL << 20)) };
        if (rng.Next(8) == 0)
        {
            // Every tensor offset moved by the same amount, as an attacker aiming the whole model at other memory would.
            foreach (long at in layout.TensorOffsets.Values) GgufLayout.Set(b, at, 8, unchecked(GgufLayout.Get(b, at) + wrap));
            return $"every tensor offset + {wrap}";
        }
        // A field kind first, then a field of that kind: the few offsets and counts are drawn as often as the many
        // string lengths of a vocabulary.
        var kinds = layout.Fields.Select(f => f.Kind).Distinct().ToArray();
        var kind = kinds[rng.Next(kinds.Length)];
        var ofKind = layout.Fields.Where(f => f.Kind == kind).ToArray();
        var pick = ofKind[rng.Next(ofKind.Length)];
        ulong value = Boundary(rng);
        if (pick.Kind is GgufLayout.FieldKind.TensorOffset or GgufLayout.FieldKind.Dimension && rng.Next(2) == 0)
            value = unchecked(GgufLayout.Get(b, pick.Position) + wrap);
        GgufLayout.Set(b, pick.Position, pick.Width, value);
        return $"{pick.Kind} of '{pick.Owner}' at {pick.Position} set to {value} ({pick.Width} bytes)";
    }

    /// <summary>A safetensors mutant: an entry's shape, offsets or dtype changed, the header length set, bits flipped, or cut.</summary>
    public static (byte[], string) Safetensors(byte[] source, Random rng)
    {
        int headerLen = (int)BitConverter.ToUInt64(source, 0);
        switch (rng.Next(10))
        {
            case < 5:
            {
                string name = "", what = "";
                var edited = TestModelFiles.EditSafetensorsHeader(source, header =>
                {
                var names = header.Select(p => p.Key).Where(k => k != "__metadata__").ToArray();
                name = names[rng.Next(names.Length)];
                var entry = header[name]!.AsObject();
                switch (rng.Next(6))
                {
                    case 0:
                    {
                        var shape = entry["shape"]!.AsArray();
                        int d = rng.Next(shape.Count + 1);
                        JsonNode value = BoundaryJson(rng);
                        if (d == shape.Count) shape.Add(value);
                        else shape[d] = value;
                        what = $"shape[{d}] = {value.ToJsonString()}";
                        break;
                    }
                    case 1:
                    {
                        int i = rng.Next(2);
                        JsonNode value = BoundaryJson(rng);
                        entry["data_offsets"]!.AsArray()[i] = value;
                        what = $"data_offsets[{i}] = {value.ToJsonString()}";
                        break;
                    }
                    case 2:
                    {
                        string dtype = new[] { "F32", "F16", "BF16", "I8", "U8", "I32", "I64", "F64", "BOOL", "F8_E4M3", "Q4", "" }[rng.Next(12)];
                        entry["dtype"] = dtype;
                        what = $"dtype = {dtype}";
                        break;
                    }
                    case 3:
                    {
                        string field = new[] { "dtype", "shape", "data_offsets" }[rng.Next(3)];
                        entry.Remove(field);
                        what = $"{field} removed";
                        break;
                    }
                    case 4:
                    {
                        string field = new[] { "dtype", "shape", "data_offsets" }[rng.Next(3)];
                        JsonNode? value = WrongKind(rng);
                        entry[field] = value;
                        what = $"{field} = {value?.ToJsonString() ?? "null"}";
                        break;
                    }
                    default:
                    {
                        // Shape and offsets changed together so the size still matches: a tensor whose element count overflows.
                        long begin = (long)entry["data_offsets"]![0]!;
                        ulong dim = (1UL << 62) + (ulong)rng.Next(64);
                        entry["shape"] = new JsonArray(dim);
                        entry["data_offsets"] = new JsonArray(begin, begin + rng.Next(256));
                        what = $"shape = [{dim}] with a small span";
                        break;
                    }
                }
                });
                return (edited, $"tensor '{name}': {what}");
            }
            case 5:
            {
                var b = (byte[])source.Clone();
                ulong value = Boundary(rng);
                GgufLayout.Set(b, 0, 8, value);
                return (b, $"header length set to {value}");
            }
            case < 8:
                return FlipBits(source, rng, 8 + headerLen);
            default:
                return Truncate(source, rng, 8 + headerLen, 8, 8 + headerLen, source.Length - 1);
        }
    }

    /// <summary>A boundary value as JSON: an integer (2^64 - 1 included, beyond long), a negative one, or a huge real.</summary>
    public static JsonNode BoundaryJson(Random rng) => rng.Next(6) switch
    {
        0 => JsonValue.Create(-(long)rng.Next(1, 3)),
        1 => JsonNode.Parse("1e400")!,
        2 => JsonNode.Parse("18446744073709551615")!,
        3 => JsonValue.Create(rng.NextDouble() * 100),
        _ => JsonValue.Create(Boundary(rng)),
    };

    /// <summary>A JSON value of the wrong kind for most fields.</summary>
    public static JsonNode? WrongKind(Random rng) => rng.Next(7) switch
    {
        0 => null,
        1 => "text",
        2 => new JsonArray(1, 2),
        3 => new JsonObject { ["x"] = 5 },
        4 => true,
        5 => JsonValue.Create(5),
        _ => new JsonArray(),
    };

    /// <summary>config.json or tokenizer_config.json with one field set to a boundary or wrong-kind value, removed, or its text damaged.</summary>
    public static (byte[], string) Json(byte[] source, Random rng, string[] extraFields)
    {
        var root = JsonNode.Parse(source)!.AsObject();
        switch (rng.Next(8))
        {
            case < 3:
            {
                var fields = root.Select(p => p.Key).Concat(extraFields).Distinct().ToArray();
                string f = fields[rng.Next(fields.Length)];
                JsonNode? value = BoundaryJson(rng);
                root[f] = value;
                return (Encoding.UTF8.GetBytes(root.ToJsonString()), $"{f} = {value.ToJsonString()}");
            }
            case < 5:
            {
                var fields = root.Select(p => p.Key).Concat(extraFields).Distinct().ToArray();
                string f = fields[rng.Next(fields.Length)];
                JsonNode? value = WrongKind(rng);
                root[f] = value;
                return (Encoding.UTF8.GetBytes(root.ToJsonString()), $"{f} = {value?.ToJsonString() ?? "null"}");
            }
            case 5:
            {
                var fields = root.Select(p => p.Key).ToArray();
                string f = fields[rng.Next(fields.Length)];
                root.Remove(f);
                return (Encoding.UTF8.GetBytes(root.ToJsonString()), $"{f} removed");
            }
            case 6:
            {
                // Nested RoPE settings with every factor drawn from the boundaries.
                var scaling = new JsonObject
                {
                    ["rope_type"] = new[] { "linear", "llama3", "default", "yarn" }[rng.Next(4)],
                    ["factor"] = BoundaryJson(rng),
                    ["low_freq_factor"] = BoundaryJson(rng),
                    ["high_freq_factor"] = BoundaryJson(rng),
                    ["original_max_position_embeddings"] = BoundaryJson(rng),
                };
                root[rng.Next(2) == 0 ? "rope_scaling" : "rope_parameters"] = scaling;
                return (Encoding.UTF8.GetBytes(root.ToJsonString()), $"rope settings {scaling.ToJsonString()}");
            }
            default:
                return FlipBits(source, rng, source.Length);
        }
    }

    /// <summary>A tokenizer.json mutant: a vocabulary id or added token set to a boundary, a top-level part of the wrong kind, or damaged text.</summary>
    public static (byte[], string) TokenizerJson(byte[] source, Random rng)
    {
        var root = JsonNode.Parse(source)!.AsObject();
        switch (rng.Next(4))
        {
            case 0:
            {
                var vocab = root["model"]!["vocab"]!.AsObject();
                string key = vocab.ElementAt(rng.Next(vocab.Count)).Key;
                var value = BoundaryJson(rng);
                vocab[key] = value;
                return (Encoding.UTF8.GetBytes(root.ToJsonString()), $"model.vocab['{key}'] = {value.ToJsonString()}");
            }
            case 1:
            {
                var value = BoundaryJson(rng);
                root["added_tokens"]!.AsArray()[rng.Next(2)]!["id"] = value;
                return (Encoding.UTF8.GetBytes(root.ToJsonString()), $"added_tokens id = {value.ToJsonString()}");
            }
            case 2:
                return Json(source, rng, ["model", "added_tokens", "pre_tokenizer", "decoder", "normalizer", "post_processor"]);
            default:
                return FlipBits(source, rng, source.Length);
        }
    }

    /// <summary>A llama2.c checkpoint mutant: a header int set to a boundary value, bits flipped, or cut.</summary>
    public static (byte[], string) Llama2c(byte[] source, Random rng)
    {
        switch (rng.Next(10))
        {
            case < 6:
            {
                var b = (byte[])source.Clone();
                int field = rng.Next(7), value = Int32Boundaries[rng.Next(Int32Boundaries.Length)];
                if (rng.Next(4) == 0) value = BitConverter.ToInt32(b, field * 4) + rng.Next(-2, 3);
                BitConverter.TryWriteBytes(b.AsSpan(field * 4, 4), value);
                return (b, $"header int {field} set to {value}");
            }
            case < 8:
                return FlipBits(source, rng, 28);
            default:
                return Truncate(source, rng, 28, 28, source.Length - 1);
        }
    }

    /// <summary>A llama2.c tokenizer mutant: a max length or token length set to a boundary, bits flipped, or cut.</summary>
    public static (byte[], string) Llama2cTokenizer(byte[] source, Random rng)
    {
        switch (rng.Next(6))
        {
            case < 2:
            {
                var b = (byte[])source.Clone();
                // The header's max_token_length, or the length field of one of the first tokens.
                int at = 0;
                if (rng.Next(2) == 1)
                {
                    int token = rng.Next(20);
                    at = 4;
                    for (int i = 0; i < token; i++) at += 8 + BitConverter.ToInt32(b, at + 4);
                    at += 4;
                }
                int value = Int32Boundaries[rng.Next(Int32Boundaries.Length)];
                BitConverter.TryWriteBytes(b.AsSpan(at, 4), value);
                return (b, $"int at {at} set to {value}");
            }
            case < 4:
                return FlipBits(source, rng, source.Length);
            default:
                return Truncate(source, rng, source.Length);
        }
    }

    // ---------------------------------------------------------------------------------------------------- running

    /// <summary>Managed bytes one case may allocate on its thread: far above a tiny model's load, far below a forged count's.</summary>
    public const long AllocationBound = 256L << 20;

    /// <summary>
    /// Loads <paramref name="fuzz"/>'s files on a worker thread (a hang is a failure after <paramref name="timeout"/>):
    /// a ModelFormatException is a clear refusal; a successful load must have every tensor inside the model's memory,
    /// and then runs: tokenizer round trip and one forward step of two tokens on the CPU backend. Anything else fails.
    /// </summary>
    public static FuzzOutcome Run(FuzzCase fuzz, string dir, TimeSpan timeout)
    {
        foreach (var f in Directory.GetFiles(dir)) File.Delete(f);
        foreach (var (name, bytes) in fuzz.Files) File.WriteAllBytes(Path.Combine(dir, name), bytes);
        string model = Path.Combine(dir, fuzz.ModelName);

        FuzzOutcome outcome = FuzzOutcome.Refused;
        Exception? failure = null;
        long allocated = 0;
        var thread = new Thread(() =>
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            try
            {
                outcome = LoadAndRun(model);
            }
            catch (Exception e)
            {
                failure = e;
            }
            allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        }, 16 << 20) { IsBackground = true, Name = "fuzz case" };
        var clock = Stopwatch.StartNew();
        thread.Start();
        if (!thread.Join(timeout))
            Assert.Fail($"{fuzz.Description}: still running after {timeout.TotalSeconds:F0} s (a hang)");
        if (failure != null)
            Assert.Fail($"{fuzz.Description}: {failure.GetType().Name}: {failure.Message}\n{failure}");
        Assert.That(allocated, Is.LessThan(AllocationBound), $"{fuzz.Description}: allocated {allocated / 1e6:F0} MB");
        return outcome;
    }

    /// <summary>Why the last tokenizer was refused (shown when an original file does not run).</summary>
    public static string? LastTokenizerRefusal;

    private static FuzzOutcome LoadAndRun(string path)
    {
        LastTokenizerRefusal = null;
        LoadedModel loaded;
        try
        {
            loaded = ModelLoader.Load(path);
        }
        catch (ModelFormatException e)
        {
            // The storage backstop in ModelWeights.Build must never be what refuses a file: reaching it means a reader
            // handed out a tensor outside its file (and a copy may already have read there).
            if (e.Message.Contains("does not lie inside")) throw new InvalidOperationException("a reader let a tensor outside its file through: " + e.Message, e);
            return FuzzOutcome.Refused;
        }
        using (loaded)
        {
            AssertTensorsInsideStorage(loaded);
            try
            {
                var tokenizer = loaded.Tokenizer;
                int[] ids = tokenizer.Encode("Once upon a time", addBos: true);
                _ = tokenizer.Decode(ids);
            }
            catch (ModelFormatException e)
            {
                LastTokenizerRefusal = e.Message;
                return FuzzOutcome.Refused; // the model loads, its tokenizer is refused by name: a clear error too
            }
            using var backend = new CpuBackend(loaded, new CpuBackendOptions { KvCacheBytes = 4 << 20 });
            using var cache = backend.CreateCache();
            int vocab = loaded.Config.VocabSize;
            int[] tokens = loaded.Config.MaxPositions >= 2 ? [1 % vocab, 2 % vocab] : [1 % vocab];
            var logits = backend.Forward([new SequenceStep(cache, tokens)])[0];
            Assert.That(logits, Has.Length.EqualTo(vocab));
            return FuzzOutcome.Loaded;
        }
    }

    /// <summary>Every tensor's [Data, Data + ByteLength) inside one of the model's native ranges, checked here independently.</summary>
    public static void AssertTensorsInsideStorage(LoadedModel model)
    {
        var ranges = model.Weights.Storage.Select(s => ((ulong)s.Pointer, (ulong)s.Length)).ToArray();
        foreach (var t in model.Weights.All())
        {
            ulong start = (ulong)t.Data, length = (ulong)t.ByteLength;
            bool inside = ranges.Any(r => start >= r.Item1 && start - r.Item1 <= r.Item2 && length <= r.Item2 - (start - r.Item1));
            if (!inside) throw new InvalidOperationException($"tensor '{t.Name}' [{start:X}, +{length}) lies outside every mapped or owned range of the model");
        }
    }
}
