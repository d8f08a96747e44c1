// `kernels route`: an OpenAI-compatible router in front of several `kernels serve` replicas (cache-aware or
// round-robin), until Ctrl+C. See docs/deploy.md.
using System.CommandLine;
using Kernels.Router;

namespace Kernels.Cli.Commands;

public static class RouteCommand
{
    public static Command Create(CliIo io)
    {
        var workers = new Option<string[]>("--worker-urls") { Description = "Replica base addresses (http://host:port), space-separated or repeated", AllowMultipleArgumentsPerToken = true, Required = true };
        var policy = new Option<string>("--policy") { Description = "cache_aware (prefix affinity, least-loaded fallback) or round_robin", DefaultValueFactory = _ => "cache_aware" };
        policy.AcceptOnlyFromAmong("cache_aware", "round_robin");
        var host = new Option<string>("--host") { Description = "Address to listen on (an IP, localhost, or 0.0.0.0 for every interface)", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "TCP port (0 = any free port)", DefaultValueFactory = _ => 8080 };
        var threshold = new Option<double>("--cache-threshold") { Description = "Share of the prompt a cached prefix must cover to route on it", DefaultValueFactory = _ => 0.3 };
        var absThreshold = new Option<int>("--balance-abs-threshold") { Description = "Loads diverge when max - min in-flight requests exceed this ...", DefaultValueFactory = _ => 64 };
        var relThreshold = new Option<double>("--balance-rel-threshold") { Description = "... and max exceeds min times this: then the least loaded replica is used", DefaultValueFactory = _ => 1.5 };
        var treeChars = new Option<int>("--max-tree-chars") { Description = "Prompt characters remembered per replica", DefaultValueFactory = _ => 1 << 24 };
        var health = new Option<int>("--health-interval-ms") { Description = "How often each replica's /health is probed", DefaultValueFactory = _ => 1000 };
        var healthFailures = new Option<int>("--health-failures") { Description = "Failed probes in a row that take a replica out (a failed request takes it out at once)", DefaultValueFactory = _ => 3 };
        var attempts = new Option<int>("--max-attempts") { Description = "Replicas one request may be tried on when they fail before answering", DefaultValueFactory = _ => 3 };

        var command = new Command("route", "Route OpenAI requests over several replicas (kernels serve or any OpenAI-compatible server): cache-aware or round-robin, health-checked, retried");
        foreach (var o in new Option[] { workers, policy, host, port, threshold, absThreshold, relThreshold, treeChars, health, healthFailures, attempts }) command.Options.Add(o);
        command.SetAction(async (parse, cancellation) =>
        {
            RouterOptions options;
            try
            {
                options = new RouterOptions
                {
                    Workers = (parse.GetValue(workers) ?? []).SelectMany(w => w.Split(',', StringSplitOptions.RemoveEmptyEntries)).Select(RouterOptions.ParseWorker).ToList(),
                    Policy = parse.GetValue(policy) == "round_robin" ? RoutingPolicyKind.RoundRobin : RoutingPolicyKind.CacheAware,
                    Host = parse.GetValue(host) ?? "127.0.0.1",
                    Port = parse.GetValue(port),
                    CacheThreshold = parse.GetValue(threshold),
                    BalanceAbsThreshold = parse.GetValue(absThreshold),
                    BalanceRelThreshold = parse.GetValue(relThreshold),
                    MaxTreeChars = parse.GetValue(treeChars),
                    HealthInterval = TimeSpan.FromMilliseconds(parse.GetValue(health)),
                    HealthFailures = parse.GetValue(healthFailures),
                    MaxAttempts = parse.GetValue(attempts),
                };
                options.Validate();
            }
            catch (ArgumentException e)
            {
                throw new CliUsageException(e.Message);
            }
            await using var router = RouterApp.Build(options);
            await router.StartAsync(cancellation);
            await router.WaitForShutdownAsync(cancellation); // Ctrl+C / SIGTERM
            io.Error.WriteLine("router stopped");
            return 0;
        });
        return command;
    }
}
