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
        var defaults = new RequestLimits();
        var shutdownTimeout = new Option<double>("--shutdown-timeout")
        {
            Description = "Seconds that running requests may go on after SIGTERM/Ctrl+C while new ones get 503; then each stream ends with an error event and [DONE]",
            DefaultValueFactory = _ => new ServerOptions().ShutdownTimeout.TotalSeconds,
        };
        var maxChoices = new Option<int>("--max-choices") { Description = "Most choices (prompts x n) one request may ask for", DefaultValueFactory = _ => defaults.MaxChoices };
        var maxStops = new Option<int>("--max-stop-strings") { Description = "Most stop strings one request may give", DefaultValueFactory = _ => defaults.MaxStopStrings };
        var maxStopLength = new Option<int>("--max-stop-length") { Description = "Longest stop string, in characters", DefaultValueFactory = _ => defaults.MaxStopLength };
        var maxTokens = new Option<long>("--max-request-tokens")
        {
            Description = "Most tokens one request may ask for: its prompts' tokens plus n x max_tokens for each prompt",
            DefaultValueFactory = _ => defaults.MaxRequestTokens,
        };
        var maxSequences = new Option<int>("--max-batch-sequences")
        {
            Description = "Most sequences decoded in one step, shared fairly between requests",
            DefaultValueFactory = _ => new GeneratorOptions().MaxBatchSequences,
        };
        var kvEvents = new Option<string?>("--kv-events") { Description = "Publish prefix-cache changes as vLLM KV events on this ZeroMQ PUB address (tcp://*:5557 binds); off by default" };
        var kvReplay = new Option<string?>("--kv-events-replay") { Description = "ROUTER address answering KV event replay requests (e.g. tcp://*:5558)" };
        var kvTopic = new Option<string>("--kv-events-topic") { Description = "Topic frame of every KV event message", DefaultValueFactory = _ => "" };
        var kvSeed = new Option<string>("--kv-events-hash-seed") { Description = "Seed of the block hashes (vLLM's PYTHONHASHSEED; its default for sha256_cbor)", DefaultValueFactory = _ => VllmBlockHasher.DefaultSeed };
        var kvLayout = new Option<string>("--kv-events-encoding") { Description = "Event layout: array (vLLM <= 0.23, read by every consumer) or map (newer vLLM)", DefaultValueFactory = _ => "array" };
        kvLayout.AcceptOnlyFromAmong("array", "map");

        var command = new Command("serve", "Serve a model over HTTP: OpenAI-compatible /v1/completions, /v1/chat/completions, /v1/models; /health, /metrics");
        model.AddTo(command);
        foreach (var o in new Option[] { host, port, apiKey, sharing, shutdownTimeout, maxChoices, maxStops, maxStopLength, maxTokens, maxSequences, kvEvents, kvReplay, kvTopic, kvSeed, kvLayout })
            command.Options.Add(o);
        command.SetAction(parse =>
        {
            double seconds = parse.GetValue(shutdownTimeout);
            if (!double.IsFinite(seconds) || seconds < 0 || seconds > 3600)
                throw new CliUsageException($"--shutdown-timeout: must be between 0 and 3600 seconds, got {seconds}");
            int sequences = parse.GetValue(maxSequences);
            if (sequences < 1) throw new CliUsageException($"--max-batch-sequences: must be at least 1, got {sequences}");
            var options = new ServerOptions
            {
                Host = parse.GetValue(host) ?? "127.0.0.1",
                Port = parse.GetValue(port),
                ApiKey = parse.GetValue(apiKey),
                ShutdownTimeout = TimeSpan.FromSeconds(seconds),
                DrainOnSignals = true,
                Limits = new RequestLimits
                {
                    MaxChoices = parse.GetValue(maxChoices),
                    MaxStopStrings = parse.GetValue(maxStops),
                    MaxStopLength = parse.GetValue(maxStopLength),
                    MaxRequestTokens = parse.GetValue(maxTokens),
                },
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
            var engine = ModelOptions.WithKvOptionErrors(() => InferenceEngine.Create(parse.GetValue(model.Model) ?? ModelOptions.DefaultModel, new InferenceEngineOptions
            {
                Load = new ModelLoadOptions { TokenizerPath = parse.GetValue(model.Tokenizer) },
                Cpu = model.CpuOptions(parse),
                Scheduling = new GeneratorOptions { PrefixSharing = parse.GetValue(sharing) != "off", MaxBatchSequences = sequences },
                LoggerFactory = logging,
                Backend = BackendSelector.Parse(parse.GetValue(model.Backend) ?? "auto"),
                KvEvents = publisher == null ? null : new KvEventOptions(publisher) { HashSeed = parse.GetValue(kvSeed) ?? VllmBlockHasher.DefaultSeed },
            }));
            bool stopped;
            try
            {
                var app = ServerApp.Build(engine, options);
                var shutdown = ServerApp.Shutdown(app);
                try
                {
                    app.Run(); // until SIGTERM / Ctrl+C: drains (new requests 503) for up to --shutdown-timeout, then stops
                }
                finally
                {
                    ((IDisposable)app).Dispose();
                }
                // The engine stops within what is left of the timeout (at least a moment), even in a long step: then
                // its loop releases the model when the step ends, and the process exits without waiting for it.
                stopped = engine.Shutdown(shutdown.Remaining > TimeSpan.FromMilliseconds(100) ? shutdown.Remaining : TimeSpan.FromMilliseconds(100));
            }
            catch
            {
                engine.Shutdown(TimeSpan.FromSeconds(1));
                throw;
            }
            io.Error.WriteLine(stopped ? "server stopped" : "server stopped (the engine's last step was still running; it was abandoned)");
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
