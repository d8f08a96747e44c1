// KvBlockPool with fixed regions (the CUDA backend's KIVI cache): at most maxBlocks ids and maxFullBlocks blocks full
// precision at once, on top of the byte budget.
using Kernels.Runtime.KvCache;

namespace Kernels.Tests.KvCache;

public class KvBlockPoolLimitsTests
{
    /// <summary>Counts what the pool asks of its storage.</summary>
    private sealed class CountingStorage : IKvStorage
    {
        public int Prepared, Compacted, Released;
        public void Prepare(int block) => Prepared++;
        public void CopyBlock(int source, int destination, int tokens) { }
        public void Compact(int block) => Compacted++;
        public void Release(int block) => Released++;
    }

    // A full block costs 10 units (its slot and its record), a compact one 2; 40 ids, 3 slots; budget = ids' records + slots.
    private static (KvBlockPool Pool, CountingStorage Storage) Make()
    {
        var storage = new CountingStorage();
        var costs = new KvBlockCosts(10, 2, 2);
        return (new KvBlockPool(40 * 2 + 3 * 8, 4, storage, costs, maxBlocks: 40, maxFullBlocks: 3), storage);
    }

    [Test]
    public void CapacityIsTheIdCountNotBudgetOverCompactCost()
    {
        var (pool, _) = Make();
        Assert.That(pool.Capacity, Is.EqualTo(40), "104 units / 2 would be 52 ids, but only 40 compact records exist");
        Assert.That(pool.MaxFullBlocks, Is.EqualTo(3));
        Assert.That(pool.FreeBlocks, Is.EqualTo(3), "three slots bound the full blocks, not the budget (10 of 104)");
    }

    [Test]
    public void SlotsBindFullBlocksAndCompactingFreesThem()
    {
        var (pool, storage) = Make();
        var held = new List<int> { pool.Allocate(), pool.Allocate(), pool.Allocate() };
        Assert.That(pool.FreeBlocks, Is.EqualTo(0));
        var e = Assert.Throws<KvCacheExhaustedException>(() => pool.Allocate())!;
        Assert.That(e.Message, Does.Contain("full-precision slots"), "the message says which limit ran out");

        pool.Compact(held[0]);
        Assert.That(storage.Compacted, Is.EqualTo(1));
        Assert.That(pool.FreeBlocks, Is.EqualTo(1), "a compacted block gives its slot back");
        held.Add(pool.Allocate());
        Assert.That(pool.FreeBlocks, Is.EqualTo(0));

        pool.Release(held[1]); // a full block released: its slot is free again
        Assert.That(pool.FreeBlocks, Is.EqualTo(1));
        pool.Release(held[0]); // a compact block released: no slot to give back
        Assert.That(pool.FreeBlocks, Is.EqualTo(1));
        Assert.That(storage.Prepared, Is.EqualTo(4));
    }

    [Test]
    public void CompactBlocksFillEveryIdButNoMore()
    {
        var (pool, _) = Make();
        for (int i = 0; i < 40; i++)
        {
            int b = pool.Allocate();
            pool.Compact(b);
        }
        Assert.That(pool.FreeBlocks, Is.EqualTo(0), "40 ids, all compact: no id left though slots are");
        Assert.Throws<KvCacheExhaustedException>(() => pool.Allocate());
    }

    [Test]
    public void UnlimitedPoolsAreUnchanged()
    {
        var pool = new KvBlockPool(8, 4, new CountingStorage());
        Assert.That((pool.Capacity, pool.FreeBlocks, pool.MaxFullBlocks), Is.EqualTo((8, 8, int.MaxValue)));
    }
}

/// <summary>The scheduler refuses, at submission and by name, a request that could never fit the pool's full-precision slots.</summary>
public class SlotBoundSubmissionTests
{
    /// <summary>The CPU backend with a KIVI pool of 12 fp16 slots in its place (submission only: nothing runs forward).</summary>
    private sealed class SlotBoundBackend(Kernels.Runtime.Backends.IBackend inner, KvBlockPool pool) : Kernels.Runtime.Backends.IBackend
    {
        public string Name => inner.Name;
        public Kernels.Runtime.Models.ModelConfig Config => inner.Config;
        public KvBlockPool KvPool => pool;
        public IKvCache CreateCache() => new KvSequence(pool);
        public float[][] Forward(IReadOnlyList<Kernels.Runtime.Backends.SequenceStep> batch, Kernels.Runtime.Backends.AttentionPlan? attention = null) =>
            throw new InvalidOperationException("this test submits only");
        public void Dispose() => inner.Dispose();
    }

    [Test]
    public void ARequestWhoseSamplesNeedMoreSlotsThanThereAreIsRefusedByName()
    {
        using var model = Kernels.Runtime.Models.ModelLoader.Load("synthetic:tiny");
        var kivi = new KvCacheFormat { Kind = KvCacheKind.Kivi2, Group = 16, Window = 32 }; // 3 blocks of window + 1 each
        using var cpu = new Kernels.Runtime.Backends.Cpu.CpuBackend(model, new Kernels.Runtime.Backends.Cpu.CpuBackendOptions { KvCache = kivi });
        var costs = cpu.KvPool.Costs;
        var pool = new KvBlockPool(1000 * costs.FullBytes, 16, cpu.KvPool.Storage, costs, maxBlocks: 1000, maxFullBlocks: 12);
        var generator = new Kernels.Runtime.Engine.Generator(new SlotBoundBackend(cpu, pool), model.Tokenizer);
        var request = new Kernels.Runtime.Engine.GenerationRequest { PromptIds = [1, 2, 3], N = 4, MaxNewTokens = 200, IgnoreEos = true };
        // 4 samples x (window 3 + 1) = 16 full blocks at once > 12 slots, though 1000 ids would hold their tokens.
        var e = Assert.Throws<KvCacheExhaustedException>(() => generator.Generate([request]))!;
        Assert.That(e.Message, Does.Contain("full-precision").And.Contain("12"));
        // Three samples need 12: accepted at submission (it then reaches Forward, which this backend refuses).
        Assert.That(() => generator.Generate([request with { N = 3 }]), Throws.InstanceOf<InvalidOperationException>().With.Message.Contains("submits only"));
    }
}
