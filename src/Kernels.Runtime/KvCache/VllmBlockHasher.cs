// Prefix-cache block hashes computed the way vLLM computes them (its default algorithm, sha256_cbor), so a router that
// hashes prompts itself (llm-d's KV-cache indexer, Dynamo's KV router) finds our blocks under the keys it expects.
using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Kernels.Runtime.KvCache;

/// <summary>
/// vLLM's chained block hash: block i's hash is SHA-256 over the canonical CBOR encoding of the 3-tuple
/// (parent hash bytes, token ids of the block, extra keys = None), where the parent of the first block is
/// NONE_HASH = SHA-256(CBOR(seed)). vLLM's seed is PYTHONHASHSEED when set, else "vllm-none-hash" for sha256_cbor;
/// a consumer that recomputes hashes must be configured with the same seed and block size. On the wire (KV events)
/// a hash is its last 8 bytes read big-endian as an unsigned 64-bit integer (vLLM's VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES,
/// on by default). Extra keys (LoRA name, multimodal hashes, cache salt) are always None here: the engine has none of them.
/// </summary>
internal sealed class VllmBlockHasher
{
    /// <summary>vLLM's NONE_HASH seed for cryptographic hash algorithms when PYTHONHASHSEED is not set.</summary>
    public const string DefaultSeed = "vllm-none-hash";

    public static VllmBlockHasher Default { get; } = new(DefaultSeed);

    public string Seed { get; }
    /// <summary>The parent hash of every first block: SHA-256 of the CBOR text string <see cref="Seed"/>.</summary>
    public byte[] NoneHash { get; }

    public VllmBlockHasher(string seed)
    {
        ArgumentNullException.ThrowIfNull(seed);
        Seed = seed;
        byte[] utf8 = Encoding.UTF8.GetBytes(seed);
        var cbor = new List<byte>(utf8.Length + 9);
        Head(cbor, 3, (ulong)utf8.Length);
        cbor.AddRange(utf8);
        NoneHash = SHA256.HashData(cbor.ToArray());
    }

    /// <summary>The hash of a full block holding <paramref name="tokens"/> after the block whose hash is <paramref name="parent"/> (null: the first block).</summary>
    public byte[] Hash(byte[]? parent, ReadOnlySpan<int> tokens)
    {
        parent ??= NoneHash;
        var cbor = new List<byte>(parent.Length + 6 + tokens.Length * 5);
        cbor.Add(0x83);                         // array of 3: (parent, tokens, extra_keys)
        Head(cbor, 2, (ulong)parent.Length);    // byte string
        cbor.AddRange(parent);
        Head(cbor, 4, (ulong)tokens.Length);    // array of unsigned integers
        foreach (int t in tokens)
        {
            if (t < 0) throw new ArgumentOutOfRangeException(nameof(tokens), t, "token ids are non-negative");
            Head(cbor, 0, (ulong)t);
        }
        cbor.Add(0xF6);                         // null: no extra keys
        return SHA256.HashData(cbor.ToArray());
    }

    /// <summary>The 64-bit form consumers receive in KV events: the hash's last 8 bytes, big-endian.</summary>
    public static ulong External(ReadOnlySpan<byte> hash) => BinaryPrimitives.ReadUInt64BigEndian(hash[^8..]);

    /// <summary>A CBOR head in its shortest form (canonical CBOR, RFC 8949 section 4.2.1).</summary>
    private static void Head(List<byte> cbor, int major, ulong value)
    {
        byte m = (byte)(major << 5);
        if (value < 24) cbor.Add((byte)(m | value));
        else if (value <= byte.MaxValue) { cbor.Add((byte)(m | 24)); cbor.Add((byte)value); }
        else if (value <= ushort.MaxValue) { cbor.Add((byte)(m | 25)); cbor.Add((byte)(value >> 8)); cbor.Add((byte)value); }
        else if (value <= uint.MaxValue)
        {
            cbor.Add((byte)(m | 26));
            for (int s = 24; s >= 0; s -= 8) cbor.Add((byte)(value >> s));
        }
        else
        {
            cbor.Add((byte)(m | 27));
            for (int s = 56; s >= 0; s -= 8) cbor.Add((byte)(value >> s));
        }
    }
}
