// KV event batches as MessagePack bytes, laid out as vLLM's msgspec structs encode them (vllm/distributed/kv_events.py).
using System.Buffers;
using Kernels.Runtime.KvCache;
using MessagePack;

namespace Kernels.Server.KvEvents;

/// <summary>How each event inside a batch is laid out (the batch itself is always a positional array).</summary>
public enum KvEventLayout
{
    /// <summary>
    /// A tagged positional array, ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id,
    /// medium, lora_name]: vLLM up to 0.23 (msgspec array_like=True). Every consumer decodes it, old and new.
    /// </summary>
    Array,
    /// <summary>A map with the tag under "type" and fields by name: vLLM after its PR #42892 (newer consumers read both).</summary>
    Map,
}

public static class KvEventEncoding
{
    /// <summary>vLLM's medium of the primary KV tier; consumers treat other media (CPU, disk) as offloaded copies.</summary>
    public const string Medium = "GPU";

    /// <summary>
    /// [ts, [event, ...], data_parallel_rank]: a float64 timestamp (seconds since the epoch), the events, and rank 0
    /// (vLLM's publisher always fills it in; omit_defaults keeps only non-default values, and 0 is not the default None).
    /// </summary>
    public static byte[] Encode(KvEventBatch batch, KvEventLayout layout)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        var w = new MessagePackWriter(buffer);
        w.WriteArrayHeader(3);
        w.Write(batch.Timestamp);
        w.WriteArrayHeader(batch.Events.Count);
        foreach (var e in batch.Events) Write(ref w, e, layout);
        w.Write(0);
        w.Flush();
        return buffer.WrittenSpan.ToArray();
    }

    private static void Write(ref MessagePackWriter w, KvCacheEvent e, KvEventLayout layout)
    {
        bool map = layout == KvEventLayout.Map;
        switch (e)
        {
            case KvBlockStored s:
                if (map) { w.WriteMapHeader(8); w.Write("type"); } else w.WriteArrayHeader(8);
                w.Write("BlockStored");
                if (map) w.Write("block_hashes");
                WriteHashes(ref w, s.BlockHashes);
                if (map) w.Write("parent_block_hash");
                if (s.ParentBlockHash is { } parent) w.Write(parent); else w.WriteNil();
                if (map) w.Write("token_ids");
                w.WriteArrayHeader(s.TokenIds.Count);
                foreach (int t in s.TokenIds) w.Write(t);
                if (map) w.Write("block_size");
                w.Write(s.BlockSize);
                if (map) w.Write("lora_id");
                w.WriteNil();
                if (map) w.Write("medium");
                w.Write(Medium);
                if (map) w.Write("lora_name");
                w.WriteNil();
                break;
            case KvBlockRemoved r:
                if (map) { w.WriteMapHeader(3); w.Write("type"); } else w.WriteArrayHeader(3);
                w.Write("BlockRemoved");
                if (map) w.Write("block_hashes");
                WriteHashes(ref w, r.BlockHashes);
                if (map) w.Write("medium");
                w.Write(Medium);
                break;
            case KvAllBlocksCleared:
                if (map) { w.WriteMapHeader(1); w.Write("type"); } else w.WriteArrayHeader(1);
                w.Write("AllBlocksCleared");
                break;
            default:
                throw new ArgumentException($"unknown KV event {e.GetType().Name}", nameof(e));
        }
    }

    private static void WriteHashes(ref MessagePackWriter w, IReadOnlyList<ulong> hashes)
    {
        w.WriteArrayHeader(hashes.Count);
        foreach (ulong h in hashes) w.Write(h); // uint64, as msgspec writes a Python int above 2^63
    }

    /// <summary>Reads a batch written by <see cref="Encode"/> (or by vLLM, either layout): the subscriber side, for tests and tools.</summary>
    public static KvEventBatch Decode(ReadOnlyMemory<byte> payload)
    {
        var r = new MessagePackReader(payload);
        int fields = r.ReadArrayHeader();
        if (fields < 2) throw new FormatException($"a KV event batch has at least 2 fields, got {fields}");
        double ts = r.ReadDouble();
        int count = r.ReadArrayHeader();
        var events = new List<KvCacheEvent>(count);
        for (int i = 0; i < count; i++) events.Add(ReadEvent(ref r));
        for (int i = 2; i < fields; i++) r.Skip(); // data_parallel_rank and any later field
        return new KvEventBatch(ts, events);
    }

    private static KvCacheEvent ReadEvent(ref MessagePackReader r)
    {
        var fields = new Dictionary<string, object?>();
        string tag;
        if (r.NextMessagePackType == MessagePackType.Map)
        {
            int n = r.ReadMapHeader();
            for (int i = 0; i < n; i++) fields[r.ReadString()!] = ReadValue(ref r);
            tag = fields.GetValueOrDefault("type") as string ?? throw new FormatException("a map-encoded KV event has no \"type\"");
        }
        else
        {
            int n = r.ReadArrayHeader();
            tag = r.ReadString()!;
            string[] names = tag switch
            {
                "BlockStored" => ["block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name"],
                "BlockRemoved" => ["block_hashes", "medium"],
                _ => [],
            };
            for (int i = 1; i < n; i++)
            {
                object? v = ReadValue(ref r);
                if (i - 1 < names.Length) fields[names[i - 1]] = v;
            }
        }
        static ulong[] Hashes(object? v) => ((List<object?>)v!).Select(Convert.ToUInt64).ToArray();
        return tag switch
        {
            "BlockStored" => new KvBlockStored(Hashes(fields["block_hashes"]), fields["parent_block_hash"] is { } p ? Convert.ToUInt64(p) : null,
                ((List<object?>)fields["token_ids"]!).Select(Convert.ToInt32).ToArray(), Convert.ToInt32(fields["block_size"])),
            "BlockRemoved" => new KvBlockRemoved(Hashes(fields["block_hashes"])),
            "AllBlocksCleared" => new KvAllBlocksCleared(),
            _ => throw new FormatException($"unknown KV event type '{tag}'"),
        };
    }

    private static object? ReadValue(ref MessagePackReader r)
    {
        switch (r.NextMessagePackType)
        {
            case MessagePackType.Nil: r.ReadNil(); return null;
            case MessagePackType.String: return r.ReadString();
            case MessagePackType.Integer:
                return r.NextCode == MessagePackCode.UInt64 ? r.ReadUInt64() : r.ReadInt64();
            case MessagePackType.Float: return r.ReadDouble();
            case MessagePackType.Boolean: return r.ReadBoolean();
            case MessagePackType.Array:
                int n = r.ReadArrayHeader();
                var list = new List<object?>(n);
                for (int i = 0; i < n; i++) list.Add(ReadValue(ref r));
                return list;
            default:
                r.Skip();
                return null;
        }
    }
}
