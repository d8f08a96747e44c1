// CUDA graphs of CudaBackend's decode step: the shape key, its block-table bucketing, and the cache of captured graphs.
using Kernels.Interop;

namespace Kernels.Runtime.Backends.Cuda;

/// <summary>
/// The fixed shape of a captured decode step: every kernel argument of the step (buffer pointers, row counts, the
/// block-table width, the attention split plan) follows from it, so a graph captured for a key replays any step of
/// that key after the step's ids, positions, slots, lengths and block tables are copied to the device.
/// </summary>
internal readonly record struct DecodeGraphKey(int NumSeqs, int BlocksPerSeq, int AttentionItems = 0);

/// <summary>
/// Graphs of decode steps by <see cref="DecodeGraphKey"/>, captured on first use and replayed afterwards. A failed
/// capture turns graphs off for the backend's lifetime (<see cref="DisabledReason"/> says why) and the step runs with
/// direct launches. At most <see cref="Capacity"/> graphs are kept; a new key beyond that drops them all.
/// </summary>
internal sealed class DecodeGraphCache : IDisposable
{
    private readonly Dictionary<DecodeGraphKey, CuGraphExecHandle> _graphs = new();

    public DecodeGraphCache(bool enabled, int capacity = 64)
    {
        if (capacity < 1) throw new ArgumentOutOfRangeException(nameof(capacity), capacity, "capacity must be >= 1");
        Capacity = capacity;
        DisabledReason = enabled ? null : "disabled by CudaBackendOptions.UseCudaGraphs";
    }

    public int Capacity { get; }
    /// <summary>Null while graphs are in use; otherwise why every step launches its kernels directly.</summary>
    public string? DisabledReason { get; private set; }
    public bool Enabled => DisabledReason == null;
    public int Captures { get; private set; }
    public int Replays { get; private set; }
    public int Count => _graphs.Count;

    /// <summary>
    /// Block-table width a graph is captured for: the next power of two at or above <paramref name="blocksPerSeq"/>,
    /// capped at <paramref name="maxBlocksPerSeq"/>, so a growing context takes a new graph at 1, 2, 4, ... blocks and
    /// not at every block. The extra table entries are padding: the kernels stop at each sequence's length.
    /// </summary>
    public static int BucketBlocks(int blocksPerSeq, int maxBlocksPerSeq)
    {
        if (blocksPerSeq < 1) throw new ArgumentOutOfRangeException(nameof(blocksPerSeq), blocksPerSeq, "blocksPerSeq must be >= 1");
        if (maxBlocksPerSeq < blocksPerSeq)
            throw new ArgumentOutOfRangeException(nameof(maxBlocksPerSeq), maxBlocksPerSeq, $"maxBlocksPerSeq must be >= blocksPerSeq = {blocksPerSeq}");
        int bucket = 1;
        while (bucket < blocksPerSeq) bucket <<= 1;
        return Math.Min(bucket, maxBlocksPerSeq);
    }

    /// <summary>
    /// The graph for <paramref name="key"/>, capturing it with <paramref name="enqueue"/> the first time; null when graphs
    /// are off or the capture failed (then graphs are off from now on). Nothing runs during a capture: the caller
    /// launches the returned graph.
    /// </summary>
    public CuGraphExecHandle? GetOrCapture(DecodeGraphKey key, CudaDevice device, CuStreamHandle stream, Action enqueue)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(enqueue);
        if (!Enabled) return null;
        if (_graphs.TryGetValue(key, out var graph))
        {
            Replays++;
            return graph;
        }
        if (_graphs.Count >= Capacity) Clear();
        try
        {
            graph = device.CaptureGraph(stream, enqueue);
        }
        catch (Exception e) when (e is CudaException or InvalidOperationException or ArgumentException or EntryPointNotFoundException)
        {
            DisabledReason = $"capture of the decode step ({key.NumSeqs} sequences, {key.BlocksPerSeq} blocks each) failed: {e.GetType().Name}: {e.Message}";
            Clear();
            return null;
        }
        _graphs.Add(key, graph);
        Captures++;
        return graph;
    }

    /// <summary>One line for the backend description: on with counts, or off with the reason.</summary>
    public string Describe() => Enabled
        ? $"CUDA graphs for decode: on ({Count} cached, {Captures} captured, {Replays} replays)"
        : $"CUDA graphs for decode: off ({DisabledReason})";

    private void Clear()
    {
        foreach (var g in _graphs.Values) g.Dispose();
        _graphs.Clear();
    }

    public void Dispose() => Clear();
}
