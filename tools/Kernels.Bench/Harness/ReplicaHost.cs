// A `kernels serve` replica hosted in this process, killable and restartable (the route suite's replicas, and the router tests').
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Models;
using Kernels.Server;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;

namespace Kernels.Bench;

/// <summary>A `kernels serve` in this process on a fixed loopback port, which can be killed (connections reset) and started again.</summary>
public sealed class ReplicaHost : IAsyncDisposable
{
    private readonly string _model;
    private readonly int _kvBlocks;
    private readonly bool _prefixSharing;

    public InferenceEngine? Engine { get; private set; }
    public WebApplication? App { get; private set; }
    public int Port { get; private set; }
    public Uri Address => new($"http://127.0.0.1:{Port}/");

    private ReplicaHost(string model, int kvBlocks, bool prefixSharing)
    {
        _model = model;
        _kvBlocks = kvBlocks;
        _prefixSharing = prefixSharing;
    }

    /// <summary>Starts a replica; <paramref name="kvBlocks"/> sizes its KV pool (0: the backend's default).</summary>
    public static async Task<ReplicaHost> StartAsync(string model, int kvBlocks = 0, bool prefixSharing = true)
    {
        var host = new ReplicaHost(model, kvBlocks, prefixSharing);
        await host.StartAgainAsync();
        return host;
    }

    /// <summary>Starts the replica (again, on the same port once it had one), with an empty cache.</summary>
    public async Task StartAgainAsync()
    {
        var cpu = new CpuBackendOptions();
        if (_kvBlocks > 0)
        {
            var config = SyntheticModels.IsSynthetic(_model) ? SyntheticModels.Shapes[_model[SyntheticModels.Prefix.Length..]] : null;
            if (config == null) throw new ArgumentException($"--kv-blocks: needs a synthetic model (its shape sizes a block), got {_model}");
            long blockBytes = 2L * config.NumLayers * config.KvDim * cpu.KvBlockSize * sizeof(float); // fp32 keys and values
            cpu = cpu with { KvCacheBytes = _kvBlocks * blockBytes };
        }
        Engine = InferenceEngine.Create(_model, new InferenceEngineOptions { Cpu = cpu, Scheduling = new GeneratorOptions { PrefixSharing = _prefixSharing } });
        App = ServerApp.Build(Engine, new ServerOptions { Port = Port, MinimumLogLevel = LogLevel.Warning });
        await App.StartAsync();
        Port = ServerApp.BaseAddress(App).Port;
    }

    /// <summary>Dies as a crashed process would: open connections are reset, nothing drains, the cache is gone.</summary>
    public async Task KillAsync()
    {
        if (App == null) return;
        await App.StopAsync(new CancellationToken(canceled: true));
        await App.DisposeAsync();
        Engine!.Dispose();
        App = null;
        Engine = null;
    }

    public async ValueTask DisposeAsync() => await KillAsync();
}
