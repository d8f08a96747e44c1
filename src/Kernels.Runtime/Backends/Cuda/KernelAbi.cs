// The C# side of kernels/include/abi.h: the ABI version the launchers in this folder were written against.
namespace Kernels.Runtime.Backends.Cuda;

internal static class KernelAbi
{
    /// <summary>Mirrors KERNELS_ABI_VERSION; KernelModule.Load refuses a fatbin whose kernels_abi_version differs.</summary>
    public const int Version = 4;

    /// <summary>The __constant__ int the fatbin exports with its ABI version.</summary>
    public const string VersionSymbol = "kernels_abi_version";
}
