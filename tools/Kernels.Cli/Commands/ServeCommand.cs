// `kernels serve`: loads a model into an InferenceEngine and serves it over HTTP (OpenAI-compatible) until Ctrl+C.
using System.CommandLine;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Models;
using Kernels.Runtime.KvCache;
using Kernels.Server;
using Kernels.Server.KvEvents;

namespace Kernels.Cli.Commands;

public static class ServeCommand
{
    public static Command Create(CliIo io)
    {
        var model = new ModelOptions();
        var host = new Option<string>("--host") { Description = "Address to listen on (an IP, localhost, or 0.0.0.0 for every interface)", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "TCP port (0 = any free port)", DefaultValueFactory = _ => 8000 };
        var apiKey = new Option<string?>("--api-key") { Description = "Require 'Authorization: Bearer KEY' on /v1/* (/health and /metrics stay open)" };
        var sharing = new Option<string>("--prefix-sharing") { Description = "Share the KV blocks and attention of common prompt prefixes (Hydragen)", DefaultValueFactory = _ => "on" };
        sharing.AcceptOnlyFromAmong("on", "off");
        var kvEvents = new Option<string?>("--kv-events") { Description = "Publish prefix-cache changes as vLLM KV events on this ZeroMQ PUB address (tcp://*:5557 binds); off by default" };
        var kvReplay = new Option<string?>("--kv-events-replay") { Description = "ROUTER address answering KV event replay requests (e.g. tcp://*:5558)" };
        var kvTopic = new Option<string>("--kv-events-topic") { Description = "Topic frame of every KV event message", DefaultValueFactory = _ => "" };
        var kvSeed = new Option<string>("--kv-events-hash-seed") { Description = "Seed of the block hashes (vLLM's PYTHONHASHSEED; its default for sha256_cbor)", DefaultValueFactory = _ => VllmBlockHasher.DefaultSeed };
        var kvLayout = new Option<string>("--kv-events-encoding") { Description = "Event layout: array (vLLM <= 0.23, read by every consumer) or map (newer vLLM)", DefaultValueFactory = _ => "array" };
        kvLayout.AcceptOnlyFromAmong("array", "map");

        var command = new Command("serve", "Serve a model over HTTP: OpenAI-compatible /v1/completions, /v1/chat/completions, /v1/models; /health, /metrics");
        model.AddTo(command);
        foreach (var o in new Option[] { host, port, apiKey, sharing, kvEvents, kvReplay, kvTopic, kvSeed, kvLayout }) command.Options.Add(o);
        command.SetAction(parse =>
        {
            var options = new ServerOptions
            {
                Host = parse.GetValue(host) ?? "127.0.0.1",
                Port = parse.GetValue(port),
                ApiKey = parse.GetValue(apiKey),
            };
            try
            {
                options.Validate();
            }
            catch (ArgumentException e)
            {
                throw new CliUsageException(e.Message);
            }

            using var logging = ServerApp.CreateLoggerFactory(options);
            using var publisher = KvEventsPublisher(parse.GetValue(kvEvents), parse.GetValue(kvReplay), parse.GetValue(kvTopic) ?? "",
                parse.GetValue(kvLayout) == "map" ? KvEventLayout.Map : KvEventLayout.Array, logging);
            using var engine = ModelOptions.WithKvOptionErrors(() => InferenceEngine.Create(parse.GetValue(model.Model) ?? ModelOptions.DefaultModel, new InferenceEngineOptions
            {
                Load = new ModelLoadOptions { TokenizerPath = parse.GetValue(model.Tokenizer) },
                Cpu = model.CpuOptions(parse),
                Scheduling = new GeneratorOptions { PrefixSharing = parse.GetValue(sharing) != "off" },
                LoggerFactory = logging,
                Backend = BackendSelector.Parse(parse.GetValue(model.Backend) ?? "auto"),
                KvEvents = publisher == null ? null : new KvEventOptions(publisher) { HashSeed = parse.GetValue(kvSeed) ?? VllmBlockHasher.DefaultSeed },
            }));
            var app = ServerApp.Build(engine, options);
            try
            {
                app.Run(); // until Ctrl+C / SIGTERM (ASP.NET's console lifetime), then requests in flight drain
            }
            finally
            {
                ((IDisposable)app).Dispose();
            }
            io.Error.WriteLine("server stopped");
            return 0;
        });
        return command;
    }

    /// <summary>The KV event publisher --kv-events asks for (null without it); bad or busy addresses are usage errors.</summary>
    private static ZmqKvEventPublisher? KvEventsPublisher(string? endpoint, string? replay, string topic, KvEventLayout layout, Microsoft.Extensions.Logging.ILoggerFactory logging)
    {
        if (endpoint == null)
        {
            if (replay != null) throw new CliUsageException("--kv-events-replay: needs --kv-events (the PUB address)");
            return null;
        }
        var options = new KvEventPublisherOptions { Endpoint = endpoint, ReplayEndpoint = replay, Topic = topic, Layout = layout };
        try
        {
            return new ZmqKvEventPublisher(options, logging.CreateLogger("Kernels.KvEvents"));
        }
        catch (ArgumentException e)
        {
            throw new CliUsageException(e.Message);
        }
        catch (NetMQ.NetMQException e)
        {
            throw new CliUsageException($"--kv-events: cannot open {endpoint}{(replay == null ? "" : $" / {replay}")}: {e.Message}");
        }
    }
}
