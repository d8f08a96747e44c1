// `kernels serve`: loads a model into an InferenceEngine and serves it over HTTP (OpenAI-compatible) until Ctrl+C.
using System.CommandLine;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Models;
using Kernels.Server;

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

        var command = new Command("serve", "Serve a model over HTTP: OpenAI-compatible /v1/completions, /v1/chat/completions, /v1/models; /health, /metrics");
        model.AddTo(command);
        foreach (var o in new Option[] { host, port, apiKey, sharing }) command.Options.Add(o);
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
            using var engine = ModelOptions.WithKvOptionErrors(() => InferenceEngine.Create(parse.GetValue(model.Model) ?? ModelOptions.DefaultModel, new InferenceEngineOptions
            {
                Load = new ModelLoadOptions { TokenizerPath = parse.GetValue(model.Tokenizer) },
                Cpu = model.CpuOptions(parse),
                Scheduling = new GeneratorOptions { PrefixSharing = parse.GetValue(sharing) != "off" },
                LoggerFactory = logging,
                Backend = BackendSelector.Parse(parse.GetValue(model.Backend) ?? "auto"),
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
}
