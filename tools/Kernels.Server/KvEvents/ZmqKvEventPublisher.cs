// KV event batches on ZeroMQ as vLLM's ZmqEventPublisher sends them: a PUB socket with three frames per batch
// (topic, 8-byte big-endian sequence number, MessagePack payload) and an optional ROUTER socket that replays the
// buffered batches from a given sequence number to a subscriber that missed some.
using System.Buffers.Binary;
using Kernels.Runtime.KvCache;
using Microsoft.Extensions.Logging;
using NetMQ;
using NetMQ.Sockets;

namespace Kernels.Server.KvEvents;

public sealed record KvEventPublisherOptions
{
    /// <summary>PUB address. With '*' or '::' (or ipc://, inproc://) it binds, else it connects (vLLM's rule), e.g. tcp://*:5557.</summary>
    public required string Endpoint { get; init; }
    /// <summary>ROUTER address for replay requests (8-byte big-endian start sequence), e.g. tcp://*:5558; null: no replay.</summary>
    public string? ReplayEndpoint { get; init; }
    /// <summary>First frame of every message; subscribers filter on it ("" = all).</summary>
    public string Topic { get; init; } = "";
    public KvEventLayout Layout { get; init; } = KvEventLayout.Array;
    /// <summary>Batches kept for replay (vLLM's buffer_steps).</summary>
    public int BufferSteps { get; init; } = 10_000;
    /// <summary>ZeroMQ send high-water mark of the PUB socket (vLLM's hwm).</summary>
    public int HighWaterMark { get; init; } = 100_000;

    /// <summary>Throws ArgumentException naming the option when an address is not a ZeroMQ endpoint.</summary>
    public void Validate()
    {
        Check("--kv-events", Endpoint);
        if (ReplayEndpoint != null) Check("--kv-events-replay", ReplayEndpoint);
        if (BufferSteps < 1) throw new ArgumentException($"KV event replay buffer: must hold at least 1 batch, got {BufferSteps}");

        static void Check(string option, string endpoint)
        {
            if (!(endpoint.StartsWith("tcp://", StringComparison.Ordinal) || endpoint.StartsWith("ipc://", StringComparison.Ordinal)
                  || endpoint.StartsWith("inproc://", StringComparison.Ordinal)) || endpoint.EndsWith("://", StringComparison.Ordinal))
                throw new ArgumentException($"{option}: '{endpoint}' is not a ZeroMQ endpoint (tcp://HOST:PORT, tcp://*:PORT to bind, ipc://PATH)");
        }
    }

    internal static bool Binds(string endpoint) =>
        endpoint.Contains('*') || endpoint.Contains("::") || endpoint.StartsWith("ipc://", StringComparison.Ordinal) || endpoint.StartsWith("inproc://", StringComparison.Ordinal);
}

/// <summary>
/// The engine hands batches to <see cref="Publish"/> (any thread, never blocks); one poller thread owns both sockets,
/// numbers the batches from 0, sends them and answers replay requests. Dispose sends what is queued, then closes.
/// </summary>
public sealed class ZmqKvEventPublisher : IKvEventSink, IDisposable
{
    /// <summary>The replay stream's end marker: sequence -1 (8 bytes, big-endian, signed) with an empty payload.</summary>
    public static readonly byte[] EndOfReplay = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

    private readonly KvEventPublisherOptions _options;
    private readonly ILogger _log;
    private readonly PublisherSocket _pub;
    private readonly RouterSocket? _replay;
    private readonly NetMQQueue<KvEventBatch> _queue = new();
    private readonly NetMQPoller _poller;
    private readonly Queue<(long Seq, byte[] Payload)> _buffer = new();
    private readonly byte[] _topic;
    private long _next;
    private bool _disposed;

    /// <summary>Batches sent so far (the next sequence number).</summary>
    public long Sent => Interlocked.Read(ref _next);

    public ZmqKvEventPublisher(KvEventPublisherOptions options, ILogger? log = null)
    {
        options.Validate();
        _options = options;
        _log = log ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;
        _topic = System.Text.Encoding.UTF8.GetBytes(options.Topic);
        _pub = new PublisherSocket();
        try
        {
            _pub.Options.SendHighWatermark = options.HighWaterMark;
            _pub.Options.Linger = TimeSpan.Zero;
            if (KvEventPublisherOptions.Binds(options.Endpoint)) _pub.Bind(options.Endpoint);
            else _pub.Connect(options.Endpoint);
            if (options.ReplayEndpoint != null)
            {
                _replay = new RouterSocket();
                _replay.Options.Linger = TimeSpan.Zero;
                _replay.Bind(options.ReplayEndpoint);
            }
        }
        catch
        {
            _replay?.Dispose();
            _pub.Dispose();
            _queue.Dispose();
            throw;
        }
        _queue.ReceiveReady += (_, e) =>
        {
            while (e.Queue.TryDequeue(out var batch, TimeSpan.Zero)) Send(batch);
        };
        _poller = new NetMQPoller { _queue };
        if (_replay != null)
        {
            _replay.ReceiveReady += (_, _) => ServeReplay();
            _poller.Add(_replay);
        }
        _poller.RunAsync("kv-events", isBackgroundThread: true);
    }

    public void Publish(KvEventBatch batch)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _queue.Enqueue(batch);
    }

    private void Send(KvEventBatch batch)
    {
        try
        {
            byte[] payload = KvEventEncoding.Encode(batch, _options.Layout);
            long seq = _next;
            var seqBytes = new byte[8];
            BinaryPrimitives.WriteInt64BigEndian(seqBytes, seq);
            var message = new NetMQMessage(3);
            message.Append(_topic);
            message.Append(seqBytes);
            message.Append(payload);
            _pub.TrySendMultipartMessage(TimeSpan.Zero, message); // over the high-water mark a PUB socket drops, as ZeroMQ does
            _buffer.Enqueue((seq, payload));
            while (_buffer.Count > _options.BufferSteps) _buffer.Dequeue();
            Interlocked.Increment(ref _next);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            _log.LogError(e, "Sending a KV event batch failed");
        }
    }

    /// <summary>A replay request is [identity, empty, start sequence]: every buffered batch from there, then the end marker.</summary>
    private void ServeReplay()
    {
        var router = _replay!;
        var request = new NetMQMessage();
        while (router.TryReceiveMultipartMessage(TimeSpan.Zero, ref request))
        {
            if (request.FrameCount != 3 || request[2].BufferSize != 8)
            {
                _log.LogWarning("Ignored a KV event replay request of {Frames} frames (expected identity, empty, 8-byte sequence)", request.FrameCount);
                continue;
            }
            var identity = request[0].ToByteArray();
            long start = BinaryPrimitives.ReadInt64BigEndian(request[2].Buffer);
            foreach (var (seq, payload) in _buffer)
            {
                if (seq < start) continue;
                var seqBytes = new byte[8];
                BinaryPrimitives.WriteInt64BigEndian(seqBytes, seq);
                var reply = new NetMQMessage(4);
                reply.Append(identity);
                reply.AppendEmptyFrame();
                reply.Append(seqBytes);
                reply.Append(payload);
                router.TrySendMultipartMessage(TimeSpan.FromSeconds(1), reply);
            }
            var end = new NetMQMessage(4);
            end.Append(identity);
            end.AppendEmptyFrame();
            end.Append(EndOfReplay);
            end.AppendEmptyFrame();
            router.TrySendMultipartMessage(TimeSpan.FromSeconds(1), end);
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _poller.Stop();
        while (_queue.TryDequeue(out var batch, TimeSpan.Zero)) Send(batch); // the poller is stopped: this thread owns the sockets now
        _poller.Dispose();
        _queue.Dispose();
        _replay?.Dispose();
        _pub.Dispose();
    }
}
