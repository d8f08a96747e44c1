// Fixture namespaces for NamespaceLayersTests: each reaches Low through exactly one kind of reference, and CycleA and
// CycleB use each other, so the scanner is shown to see every kind and to report a cycle.

namespace Kernels.Tests.Architecture.LayerFixture.Low
{
    public static class LowMath { public static int Twice(int x) => 2 * x; }
    public class LowBase;
    public interface ILow;
    public sealed class LowException : Exception;
    public sealed class LowBox { public int Value; }
}

namespace Kernels.Tests.Architecture.LayerFixture.CallOnly
{
    public static class Caller { public static int Run(int x) => Low.LowMath.Twice(x); }
}

namespace Kernels.Tests.Architecture.LayerFixture.LambdaOnly
{
    // The call sits in a compiler-generated closure class nested in Lambdas.
    public static class Lambdas { public static Func<int, int> Make() => x => Low.LowMath.Twice(x); }
}

namespace Kernels.Tests.Architecture.LayerFixture.AsyncOnly
{
    // The call sits in the async state machine nested in Async.
    public static class Async
    {
        public static async Task<int> Run(int x)
        {
            await Task.Yield();
            return Low.LowMath.Twice(x);
        }
    }
}

namespace Kernels.Tests.Architecture.LayerFixture.AttributeTypeofOnly
{
    [System.Diagnostics.DebuggerTypeProxy(typeof(Low.LowBase))]
    public sealed class Proxied;
}

namespace Kernels.Tests.Architecture.LayerFixture.ConstraintOnly
{
    public static class Constrained { public static int Run<T>() where T : Low.ILow => 0; }
}

namespace Kernels.Tests.Architecture.LayerFixture.GenericArgumentOnly
{
    public static class Generic { public static int Count() => new List<object>().OfType<Low.ILow>().Count(); }
}

namespace Kernels.Tests.Architecture.LayerFixture.BaseTypeOnly
{
    public sealed class Derived : Low.LowBase;
}

namespace Kernels.Tests.Architecture.LayerFixture.CatchOnly
{
    public static class Catcher
    {
        public static int Run(Action a)
        {
            try { a(); return 0; }
            catch (Low.LowException) { return 1; }
        }
    }
}

namespace Kernels.Tests.Architecture.LayerFixture.CycleA
{
    public static class Ping { public static int Run(int n) => n <= 0 ? 0 : CycleB.Pong.Run(n - 1); }
}

namespace Kernels.Tests.Architecture.LayerFixture.CycleB
{
    public static class Pong { public static int Run(int n) => n <= 0 ? 0 : CycleA.Ping.Run(n - 1); }
}
