// What every launch plan must satisfy whatever numbers the planner picks: CUDA's grid and block limits, and a grid that
// covers the work the kernel's header maps onto it exactly once, with no block left without work. The launch-plan
// tests sweep shapes through these instead of pinning grid sizes copied from the planner.
using Kernels.Runtime.Backends.Cuda;

namespace Kernels.Tests.Backends.Cuda;

internal static class LaunchProperties
{
    // CUDA's limits for every compute capability we build for (sm_80, sm_90): the CUDA C++ Programming Guide's table
    // "Technical Specifications per Compute Capability" (grid x 2^31 - 1, grid y and z 65535, 1024 threads per block).
    public const long MaxGridX = int.MaxValue;
    public const long MaxGridYZ = 65535;
    public const int MaxThreadsPerBlock = 1024, Warp = 32;

    /// <summary>
    /// Grid within the device limits and non-empty in every dimension (a zero extent is a launch error); the block a
    /// whole number of warps, at most 1024 threads (every kernel here reduces or splits work by warps).
    /// </summary>
    public static void WithinLimits(KernelLaunch p)
    {
        Assert.That(p.GridX, Is.InRange(1L, MaxGridX), $"{p}: grid x");
        Assert.That(p.GridY, Is.InRange(1L, MaxGridYZ), $"{p}: grid y");
        Assert.That(p.GridZ, Is.InRange(1L, MaxGridYZ), $"{p}: grid z");
        Assert.That(p.BlockX, Is.InRange(Warp, MaxThreadsPerBlock), $"{p}: block");
        Assert.That(p.BlockX % Warp, Is.Zero, $"{p}: block is whole warps");
    }

    /// <summary>
    /// Block b of a grid extent takes items [b * perBlock, (b + 1) * perBlock): every one of <paramref name="items"/>
    /// lands in exactly one block (the tiles are disjoint) iff the grid reaches the last item, and no block starts past
    /// the end.
    /// </summary>
    public static void Tiles(uint grid, long items, long perBlock, string what)
    {
        Assert.That((long)grid * perBlock, Is.GreaterThanOrEqualTo(items), $"{what}: {grid} blocks of {perBlock} reach all {items}");
        Assert.That(((long)grid - 1) * perBlock, Is.LessThan(items), $"{what}: {grid} blocks of {perBlock} for {items}: the last block has work");
    }

    /// <summary>
    /// A grid-stride loop (block b takes items b, b + grid, ...) covers every item exactly once for any grid >= 1; the
    /// plan must also leave no block idle (grid &lt;= items) and use one block per item as far as the extent's limit allows.
    /// </summary>
    public static void Strides(uint grid, long items, long limit, string what)
    {
        Assert.That(grid, Is.InRange(1L, Math.Min(items, limit)), $"{what}: {grid} blocks striding over {items} (limit {limit}): none idle");
        Assert.That((long)grid, Is.EqualTo(Math.Min(items, limit)), $"{what}: one block per item up to the limit");
    }

    /// <summary>Shapes that hit every tile edge: 1, around the tile, around the 65535 cap, and large.</summary>
    public static IEnumerable<int> Counts(int tile) =>
        new[] { 1, 2, tile - 1, tile, tile + 1, 3 * tile + 5, 65534, 65535, 65536, 100_000 }.Where(n => n >= 1).Distinct();
}
