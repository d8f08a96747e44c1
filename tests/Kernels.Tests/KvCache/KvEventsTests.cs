// KV cache events: vLLM's block hashes (checked against Python's cbor2, the library vLLM hashes with), the MessagePack
// layouts, and a ZeroMQ subscriber that rebuilds a replica's prefix tree from the events alone.
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.KvCache;
using Kernels.Server.KvEvents;
using MessagePack;
using NetMQ;
using NetMQ.Sockets;

namespace Kernels.Tests.KvCache;

[CancelAfter(120_000)]
public class KvEventsTests
{
    // Reference values from Python 3.11 + cbor2 5.4.6 (what vLLM's sha256_cbor uses):
    //   h = lambda x: hashlib.sha256(cbor2.dumps(x, canonical=True)).digest()
    //   none = h("vllm-none-hash"); b1 = h((none, tuple(range(1, 17)), None)); b2 = h((b1, tuple(range(100, 116)), None))
    private const string NoneHash = "9bd96a485ad84efdafb72ee48a1d7a69bcead0f8f0433173941b276b9581eef0";
    private const string Block1 = "cd7c51bc5a8fc8643f383a2b9e01522fba7473c669e9270c7b0bf7bf7fd01682";
    private const string Block2 = "25accf495351c26102a681e16c6ff4c021e5e8672ce7e6b2aa12ed6d417918a3";

    [Test]
    public void BlockHashesMatchVllmsSha256Cbor()
    {
        var hasher = new VllmBlockHasher(VllmBlockHasher.DefaultSeed);
        Assert.That(Convert.ToHexStringLower(hasher.NoneHash), Is.EqualTo(NoneHash));
        byte[] b1 = hasher.Hash(null, Enumerable.Range(1, 16).ToArray());
        Assert.That(Convert.ToHexStringLower(b1), Is.EqualTo(Block1));
        byte[] b2 = hasher.Hash(b1, Enumerable.Range(100, 16).ToArray());
        Assert.That(Convert.ToHexStringLower(b2), Is.EqualTo(Block2));
        // On the wire: int.from_bytes(hash, "big") & (2**64 - 1)
        Assert.That(VllmBlockHasher.External(b1), Is.EqualTo(8866452693264111234UL));
        Assert.That(VllmBlockHasher.External(b2), Is.EqualTo(12255118589534214307UL));
        // Token ids past one byte take cbor2's wider heads (1, 2 and 4 bytes): cbor2.dumps((none, (1, 2, 300, 70000), None), canonical=True)
        var expected = Convert.FromHexString("835820" + NoneHash + "84010219012c1a00011170f6");
        Assert.That(hasher.Hash(null, [1, 2, 300, 70000]), Is.EqualTo(System.Security.Cryptography.SHA256.HashData(expected)));
        Assert.That(new VllmBlockHasher("0").NoneHash, Is.Not.EqualTo(hasher.NoneHash), "the seed (PYTHONHASHSEED) changes every hash");
    }

    [Test]
    public void BatchesUseVllmsPositionalOrMapLayout()
    {
        var batch = new KvEventBatch(1234.5, [
            new KvBlockStored([7UL, ulong.MaxValue], 5UL, Enumerable.Range(0, 32).ToArray(), 16),
            new KvBlockRemoved([9UL]),
            new KvAllBlocksCleared(),
        ]);
        var array = (object[])MessagePackSerializer.Deserialize<object>(KvEventEncoding.Encode(batch, KvEventLayout.Array))!;
        Assert.That(array, Has.Length.EqualTo(3));
        Assert.That(array[0], Is.EqualTo(1234.5));
        Assert.That(Convert.ToInt32(array[2]), Is.EqualTo(0), "data_parallel_rank");
        var events = (object[])array[1];
        var stored = (object[])events[0];
        Assert.That(stored[0], Is.EqualTo("BlockStored"));
        Assert.That(((object[])stored[1]).Select(Convert.ToUInt64), Is.EqualTo(new[] { 7UL, ulong.MaxValue }));
        Assert.That(Convert.ToUInt64(stored[2]), Is.EqualTo(5UL));
        Assert.That(((object[])stored[3]).Length, Is.EqualTo(32));
        Assert.That(Convert.ToInt32(stored[4]), Is.EqualTo(16));
        Assert.That(stored[5], Is.Null, "lora_id");
        Assert.That(stored[6], Is.EqualTo("GPU"), "medium");
        Assert.That(stored[7], Is.Null, "lora_name");
        Assert.That((object[])events[1], Is.EqualTo(new object[] { "BlockRemoved", new object[] { (byte)9 }, "GPU" }));
        Assert.That((object[])events[2], Is.EqualTo(new object[] { "AllBlocksCleared" }));

        var map = (object[])MessagePackSerializer.Deserialize<object>(KvEventEncoding.Encode(batch, KvEventLayout.Map))!;
        var storedMap = (Dictionary<object, object?>)((object[])map[1])[0];
        Assert.That(storedMap["type"], Is.EqualTo("BlockStored"));
        Assert.That(Convert.ToInt32(storedMap["block_size"]), Is.EqualTo(16));
        Assert.That(((Dictionary<object, object?>)((object[])map[1])[2])["type"], Is.EqualTo("AllBlocksCleared"));

        foreach (var layout in new[] { KvEventLayout.Array, KvEventLayout.Map })
        {
            var back = KvEventEncoding.Decode(KvEventEncoding.Encode(batch, layout));
            var s = (KvBlockStored)back.Events[0];
            Assert.That(s.BlockHashes, Is.EqualTo(new[] { 7UL, ulong.MaxValue }));
            Assert.That(s.ParentBlockHash, Is.EqualTo(5UL));
            Assert.That(s.TokenIds, Is.EqualTo(Enumerable.Range(0, 32)));
            Assert.That(((KvBlockRemoved)back.Events[1]).BlockHashes, Is.EqualTo(new[] { 9UL }));
            Assert.That(back.Events[2], Is.TypeOf<KvAllBlocksCleared>());
        }
    }

    private static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    /// <summary>Follows a publisher as a router would: replays from 0, then reads live batches; applies them in sequence order.</summary>
    private sealed class Subscriber : IDisposable
    {
        private readonly SubscriberSocket _sub = new();
        private readonly DealerSocket _replay = new();
        public readonly SortedDictionary<long, KvEventBatch> Batches = new();
        public readonly Dictionary<ulong, (ulong? Parent, int[] Tokens)> Blocks = new();
        public int Removed;

        public Subscriber(int pubPort, int replayPort, string topic)
        {
            _sub.Connect($"tcp://127.0.0.1:{pubPort}");
            _sub.Subscribe(topic);
            _replay.Connect($"tcp://127.0.0.1:{replayPort}");
        }

        public void Replay(long from)
        {
            var seq = new byte[8];
            BinaryPrimitives.WriteInt64BigEndian(seq, from);
            _replay.SendMoreFrameEmpty().SendFrame(seq);
            while (true)
            {
                var frames = _replay.ReceiveMultipartMessage();
                Assert.That(frames.FrameCount, Is.EqualTo(3), "replay reply: empty, sequence, payload");
                long n = BinaryPrimitives.ReadInt64BigEndian(frames[1].Buffer);
                if (n == -1) return;
                Batches[n] = KvEventEncoding.Decode(frames[2].ToByteArray());
            }
        }

        /// <summary>Reads live batches until sequence <paramref name="last"/> is in, or the timeout.</summary>
        public void ReadUntil(long last, TimeSpan timeout, string topic)
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var message = new NetMQMessage();
            while (!Batches.ContainsKey(last) && clock.Elapsed < timeout)
            {
                if (!_sub.TryReceiveMultipartMessage(TimeSpan.FromMilliseconds(100), ref message)) continue;
                Assert.That(message.FrameCount, Is.EqualTo(3), "topic, sequence, payload");
                Assert.That(message[0].ConvertToString(), Is.EqualTo(topic));
                Batches[BinaryPrimitives.ReadInt64BigEndian(message[1].Buffer)] = KvEventEncoding.Decode(message[2].ToByteArray());
            }
        }

        public void Apply()
        {
            Assert.That(Batches.Keys, Is.EqualTo(Enumerable.Range(0, Batches.Count).Select(i => (long)i)), "no gap in the sequence numbers");
            foreach (var e in Batches.Values.SelectMany(b => b.Events))
            {
                switch (e)
                {
                    case KvBlockStored s:
                        for (int i = 0; i < s.BlockHashes.Count; i++)
                            Blocks[s.BlockHashes[i]] = (i == 0 ? s.ParentBlockHash : s.BlockHashes[i - 1], s.TokenIds.Skip(i * s.BlockSize).Take(s.BlockSize).ToArray());
                        break;
                    case KvBlockRemoved r:
                        foreach (var h in r.BlockHashes) Assert.That(Blocks.Remove(h), $"removed block {h} was stored before");
                        Removed += r.BlockHashes.Count;
                        break;
                    case KvAllBlocksCleared:
                        Blocks.Clear();
                        break;
                }
            }
        }

        public void Dispose()
        {
            _sub.Dispose();
            _replay.Dispose();
        }
    }

    [Test]
    public async Task SubscriberRebuildsTheEnginesPrefixTreeFromEventsAlone()
    {
        int pubPort = FreePort(), replayPort = FreePort();
        const string Topic = "kv@replica-0@synthetic:tiny";
        using var publisher = new ZmqKvEventPublisher(new KvEventPublisherOptions { Endpoint = $"tcp://*:{pubPort}", ReplayEndpoint = $"tcp://*:{replayPort}", Topic = Topic });
        using var subscriber = new Subscriber(pubPort, replayPort, Topic);
        // 40 blocks: the prompts below need more, so the pool evicts cached prefixes (BlockRemoved) on the way.
        using var engine = InferenceEngine.Create("synthetic:tiny", new InferenceEngineOptions
        {
            Cpu = new CpuBackendOptions { KvCacheBytes = 40 * 8192 },
            KvEvents = new KvEventOptions(publisher),
        });
        var systems = Enumerable.Range(0, 4).Select(s => $"System {s}: " + string.Join(' ', Enumerable.Range(0, 30).Select(w => $"rule{(s * 13 + w) % 41}"))).ToArray();
        var requests = Enumerable.Range(0, 24).Select(i => new GenerationRequest
        {
            Prompt = $"{systems[i % 4]}\nUser {i}: question {i * 7}?",
            MaxNewTokens = 8,
            Sampling = new SamplingOptions { Temperature = 0 },
        }).ToList();
        for (int round = 0; round < 3; round++) await engine.GenerateAsync(requests.Skip(round * 8).Take(8).ToList());

        // Every batch the engine published is sent once the count stops moving.
        long sent = -1;
        while (sent != publisher.Sent)
        {
            sent = publisher.Sent;
            await Task.Delay(200);
        }
        subscriber.Replay(0); // joined late: the replay socket fills in from sequence 0
        subscriber.ReadUntil(sent - 1, TimeSpan.FromSeconds(10), Topic);
        subscriber.Apply();

        var engineBlocks = engine.KvPool.Prefixes.Blocks(); // the engine is idle
        Assert.That(engineBlocks, Is.Not.Empty);
        Assert.That(subscriber.Removed, Is.GreaterThan(0), "the pool evicted, so removals were exercised");
        Assert.That(subscriber.Batches[0].Events[0], Is.TypeOf<KvAllBlocksCleared>(), "the first batch tells subscribers to start over");
        Assert.That(subscriber.Blocks.Keys, Is.EquivalentTo(engineBlocks.Select(b => b.Hash)));
        foreach (var b in engineBlocks)
        {
            Assert.That(subscriber.Blocks[b.Hash].Parent, Is.EqualTo(b.ParentHash));
            Assert.That(subscriber.Blocks[b.Hash].Tokens, Is.EqualTo(b.TokenIds));
        }

        // A consumer that hashes prompts itself (llm-d's indexer) finds the cached prompt under the same keys.
        var last = requests[^1];
        int[] ids = engine.PromptIds(last);
        var hasher = VllmBlockHasher.Default;
        byte[]? parent = null;
        int found = 0;
        for (int b = 0; (b + 1) * 16 <= ids.Length - 1; b++)
        {
            parent = hasher.Hash(parent, ids.AsSpan(b * 16, 16));
            if (subscriber.Blocks.ContainsKey(VllmBlockHasher.External(parent))) found++;
        }
        Assert.That(found, Is.EqualTo((ids.Length - 1) / 16), "every full block of the last prompt is cached under vLLM's hash");
    }

    [Test]
    public async Task NothingIsObservedWhenEventsAreOffAndTheLastBatchClearsOnShutdown()
    {
        using (var off = InferenceEngine.Create("synthetic:tiny"))
        {
            await off.GenerateAsync([new GenerationRequest { Prompt = "Once upon a time there was a prompt long enough for blocks", MaxNewTokens = 2 }]);
            Assert.That(off.KvPool.Prefixes.CachedBlocks, Is.GreaterThan(0));
            Assert.That(off.KvPool.Prefixes.Observer, Is.Null, "without --kv-events no event is even produced");
        }

        var sink = new RecordingSink();
        var engine = InferenceEngine.Create("synthetic:tiny", new InferenceEngineOptions { KvEvents = new KvEventOptions(sink) });
        await engine.GenerateAsync([new GenerationRequest { Prompt = "Once upon a time there was a prompt long enough for blocks", MaxNewTokens = 2 }]);
        engine.Dispose();
        int batches = sink.Batches.Count;
        Assert.That(sink.Batches[0].Events, Is.EqualTo(new KvCacheEvent[] { new KvAllBlocksCleared() }));
        Assert.That(sink.Batches.SelectMany(b => b.Events).OfType<KvBlockStored>(), Is.Not.Empty);
        Assert.That(sink.Batches[^1].Events, Is.EqualTo(new KvCacheEvent[] { new KvAllBlocksCleared() }), "the engine's end clears the subscribers' view");
        await Task.Delay(100);
        Assert.That(sink.Batches.Count, Is.EqualTo(batches), "nothing after the engine stopped");
    }

    private sealed class RecordingSink : IKvEventSink
    {
        public readonly List<KvEventBatch> Batches = new();
        public void Publish(KvEventBatch batch)
        {
            lock (Batches) Batches.Add(batch);
        }
    }

    [Test]
    public void ServeRefusesABadKvEventsAddress()
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = Kernels.Cli.Program.Run(["serve", "--model", "synthetic:tiny", "--kv-events", "localhost:5557"], stdout, stderr);
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stderr.ToString(), Does.Contain("error: --kv-events: 'localhost:5557' is not a ZeroMQ endpoint"));
        code = Kernels.Cli.Program.Run(["serve", "--model", "synthetic:tiny", "--kv-events-replay", "tcp://*:5558"], stdout, stderr);
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stderr.ToString(), Does.Contain("--kv-events-replay: needs --kv-events"));
    }
}
