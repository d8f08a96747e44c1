// kernels route: the approximate prefix tree, the policies, and the router over real replicas on loopback: streams
// passed through, requests retried when a replica is gone before its first byte, a stream cut by a dying replica
// ended with an error event, and the replica readmitted when it returns.
using System.Text;
using System.Text.Json.Nodes;
using Kernels.Bench;
using Kernels.Router;
using Kernels.Runtime.Engine;
using Kernels.Tests.Server;
using Microsoft.Extensions.Logging;

namespace Kernels.Tests.Routing;

[CancelAfter(120_000)]
public class RouterTests
{
    [Test]
    public void TreeFindsTheLongestCachedPrefixAmongEligibleTenants()
    {
        var tree = new PrefixAffinityTree<string>(1000);
        tree.Insert("system A: be brief\nuser: one", "r1");
        tree.Insert("system B: be long\nuser: two", "r2");
        var (tenant, matched) = tree.Match("system A: be brief\nuser: three", _ => true);
        Assert.That(tenant, Is.EqualTo("r1"));
        Assert.That(matched, Is.EqualTo("system A: be brief\nuser: ".Length));
        (tenant, matched) = tree.Match("system A: be brief\nuser: three", t => t != "r1");
        Assert.That(tenant, Is.EqualTo("r2"), "r2 shares 'system '");
        Assert.That(matched, Is.EqualTo("system ".Length));
        Assert.That(tree.Size("r1"), Is.EqualTo("system A: be brief\nuser: one".Length));
        tree.Remove("r1");
        Assert.That(tree.Match("system A: be brief", _ => true).Tenant, Is.EqualTo("r2"));
        Assert.That(tree.Size("r1"), Is.Zero);
    }

    [Test]
    public void TreeForgetsTheLeastRecentlyUsedTextBeyondItsLimit()
    {
        var tree = new PrefixAffinityTree<string>(40);
        tree.Insert("aaaaaaaaaaaaaaaaaaaa", "r"); // 20
        tree.Insert("bbbbbbbbbbbbbbbbbbbb", "r"); // 40
        tree.Match("aaaa", _ => true);            // matching does not refresh: the insert order decides
        tree.Insert("cccccccccccccccccccc", "r"); // 60 > 40: the oldest (a...) goes
        Assert.That(tree.Size("r"), Is.LessThanOrEqualTo(40));
        Assert.That(tree.Match("aaaaaaaaaaaaaaaaaaaa", _ => true).Matched, Is.Zero);
        Assert.That(tree.Match("cccccccccccccccccccc", _ => true).Matched, Is.EqualTo(20));
    }

    private static List<Replica> Replicas(int n) => Enumerable.Range(0, n).Select(i => new Replica(new Uri($"http://127.0.0.1:{9000 + i}/"))).ToList();

    [Test]
    public void CacheAwareKeepsPrefixesTogetherSpreadsNewOnesAndFallsBackToTheLeastLoaded()
    {
        var policy = new CacheAwarePolicy(new RouterOptions { Workers = [new Uri("http://x/")], BalanceAbsThreshold = 4, BalanceRelThreshold = 1.5 });
        var replicas = Replicas(3);
        string System(int s) => $"System prompt {s}: " + new string((char)('a' + s), 200);
        var home = new Dictionary<int, Replica>();
        for (int s = 0; s < 3; s++)
        {
            var (r, why) = policy.Pick(System(s) + "\nQ: first?", replicas);
            Assert.That(why, Is.EqualTo(RoutingDecision.SmallestCache));
            home[s] = r;
        }
        Assert.That(home.Values.Distinct().Count(), Is.EqualTo(3), "three new prompts go to three different replicas");
        for (int i = 0; i < 10; i++)
        {
            var (r, why) = policy.Pick(System(i % 3) + $"\nQ: {i}?", replicas);
            Assert.That(why, Is.EqualTo(RoutingDecision.PrefixMatch));
            Assert.That(r, Is.SameAs(home[i % 3]));
        }

        // Loads diverge (10 vs 0, beyond both thresholds): the least loaded replica takes the request whatever it caches.
        for (int i = 0; i < 10; i++) home[0].Begin();
        var (target, reason) = policy.Pick(System(0) + "\nQ: busy?", replicas);
        Assert.That(reason, Is.EqualTo(RoutingDecision.LeastLoaded));
        Assert.That(target, Is.Not.SameAs(home[0]));
        for (int i = 0; i < 10; i++) home[0].End();

        // A replica that goes down is forgotten: its prompt moves, and stays where it moved.
        policy.ReplicaChanged(home[1], down: true);
        var rest = replicas.Where(r => r != home[1]).ToList();
        var (moved, _) = policy.Pick(System(1) + "\nQ: again?", rest);
        Assert.That(policy.Pick(System(1) + "\nQ: and again?", replicas).Replica, Is.SameAs(moved), "the returned replica starts empty");
    }

    [Test]
    public void RoundRobinCyclesThroughTheCandidates()
    {
        var policy = new RoundRobinPolicy();
        var replicas = Replicas(3);
        var picks = Enumerable.Range(0, 6).Select(_ => policy.Pick("same prompt", replicas).Replica).ToList();
        Assert.That(picks.Take(3).Distinct().Count(), Is.EqualTo(3));
        Assert.That(picks.Skip(3), Is.EqualTo(picks.Take(3)));
    }

    private static RouterOptions Options(IEnumerable<ReplicaHost> hosts, RoutingPolicyKind policy, TimeSpan health) => new()
    {
        Workers = hosts.Select(h => h.Address).ToList(),
        Policy = policy,
        Port = 0,
        HealthInterval = health,
        MinimumLogLevel = LogLevel.Error,
    };

    private static async Task<(HttpResponseMessage Response, string Text)> Complete(HttpClient http, object body)
    {
        var response = await http.PostAsync("/v1/completions", TestServer.Content(body));
        return (response, await response.Content.ReadAsStringAsync());
    }

    [Test]
    public async Task StreamsPassThroughAndMatchTheReplicasOwnText()
    {
        await using var a = await ReplicaHost.StartAsync("synthetic:tiny");
        await using var b = await ReplicaHost.StartAsync("synthetic:tiny");
        await using var router = RouterApp.Build(Options([a, b], RoutingPolicyKind.CacheAware, TimeSpan.FromSeconds(1)));
        await router.StartAsync();
        using var http = new HttpClient { BaseAddress = router.BaseAddress };

        var body = new { prompt = "Once upon a time", max_tokens = 12, temperature = 0, stream = true, ignore_eos = true };
        var chunks = TestServer.ParseSse(await (await http.PostAsync("/v1/completions", TestServer.Content(body))).Content.ReadAsStringAsync());
        string routed = string.Concat(chunks.Select(c => c["choices"]![0]!["text"]!.GetValue<string>()));
        Assert.That(chunks.Count, Is.GreaterThan(1), "events as the replica sent them, not one body");
        Assert.That(chunks[^1]["choices"]![0]!["finish_reason"]!.GetValue<string>(), Is.EqualTo("length"));
        string direct = (await a.Engine!.GenerateAsync([new GenerationRequest { Prompt = "Once upon a time", MaxNewTokens = 12, IgnoreEos = true, Sampling = new SamplingOptions { Temperature = 0 } }]))[0].Text;
        Assert.That(routed, Is.EqualTo(direct));

        var chat = await http.PostAsync("/v1/chat/completions", TestServer.Content(new { messages = new[] { new { role = "user", content = "Hi" } }, max_tokens = 4 }));
        Assert.That((int)chat.StatusCode, Is.EqualTo(200));
        Assert.That(JsonNode.Parse(await chat.Content.ReadAsStringAsync())!["object"]!.GetValue<string>(), Is.EqualTo("chat.completion"));
        var models = JsonNode.Parse(await http.GetStringAsync("/v1/models"))!;
        Assert.That(models["data"]![0]!["id"]!.GetValue<string>(), Is.EqualTo("synthetic:tiny"));
        var bad = await http.PostAsync("/v1/completions", TestServer.Content("{not json"));
        Assert.That((int)bad.StatusCode, Is.EqualTo(400));
        Assert.That(JsonNode.Parse(await bad.Content.ReadAsStringAsync())!["error"]!["code"]!.GetValue<string>(), Is.EqualTo("invalid_json"));
        Assert.That(await http.GetStringAsync("/metrics"), Does.Contain("kernels_router_replica_healthy{replica=\"http://127.0.0.1:"));
    }

    [Test]
    public async Task ARequestWhoseReplicaIsGoneIsRetriedAndTheReplicaReadmittedWhenItReturns()
    {
        await using var a = await ReplicaHost.StartAsync("synthetic:tiny");
        await using var b = await ReplicaHost.StartAsync("synthetic:tiny");
        await using var router = RouterApp.Build(Options([a, b], RoutingPolicyKind.RoundRobin, TimeSpan.FromMilliseconds(200)));
        await router.StartAsync();
        using var http = new HttpClient { BaseAddress = router.BaseAddress };
        var replicaA = router.Replicas.All.Single(r => r.Address == a.Address);

        await a.KillAsync(); // the router still believes in it until a request or a probe says otherwise
        for (int i = 0; i < 6; i++)
        {
            var (response, text) = await Complete(http, new { prompt = $"Request {i}", max_tokens = 3 });
            Assert.That((int)response.StatusCode, Is.EqualTo(200), text);
        }
        Assert.That(replicaA.Healthy, Is.False);
        Assert.That(router.Metrics.Retries + replicaA.Requests, Is.GreaterThan(0));

        await a.StartAgainAsync(); // same port, empty cache
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (!replicaA.Healthy && clock.Elapsed < TimeSpan.FromSeconds(10)) await Task.Delay(20);
        Assert.That(replicaA.Healthy, Is.True, "readmitted by its /health probe");
        long before = replicaA.Requests;
        for (int i = 0; i < 4; i++) Assert.That((int)(await Complete(http, new { prompt = $"After {i}", max_tokens = 2 })).Response.StatusCode, Is.EqualTo(200));
        Assert.That(replicaA.Requests - before, Is.EqualTo(2), "round-robin gives it every other request again");

        await a.KillAsync();
        await b.KillAsync();
        var (none, body) = await Complete(http, new { prompt = "nobody home", max_tokens = 2 });
        Assert.That((int)none.StatusCode, Is.AnyOf(502, 503));
        Assert.That(JsonNode.Parse(body)!["error"]!["message"]!.GetValue<string>(), Is.Not.Empty);
    }

    [Test]
    public async Task AStreamCutByADyingReplicaEndsWithAnErrorEvent()
    {
        await using var a = await ReplicaHost.StartAsync("synthetic:tiny");
        await using var b = await ReplicaHost.StartAsync("synthetic:tiny");
        await using var router = RouterApp.Build(Options([a, b], RoutingPolicyKind.CacheAware, TimeSpan.FromSeconds(5)));
        await router.StartAsync();
        using var http = new HttpClient { BaseAddress = router.BaseAddress };

        var body = new { prompt = "A long story", max_tokens = 480, temperature = 0, stream = true, ignore_eos = true };
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = TestServer.Content(body) };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        Assert.That(await reader.ReadLineAsync(), Does.StartWith("data: {"), "the stream has begun");
        var serving = router.Replicas.All.Single(r => r.InFlight == 1);
        await new[] { a, b }.Single(h => h.Address == serving.Address).KillAsync();

        string rest = await reader.ReadToEndAsync();
        var events = rest.Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => e.Trim()).Where(e => e.StartsWith("data: ", StringComparison.Ordinal)).ToList();
        Assert.That(events[^1], Is.EqualTo("data: [DONE]"));
        var error = JsonNode.Parse(events[^2]["data: ".Length..])!["error"]!;
        Assert.That(error["code"]!.GetValue<string>(), Is.EqualTo("replica_failed"));
        Assert.That(router.Metrics.StreamsBroken, Is.EqualTo(1));
        Assert.That(serving.Healthy, Is.False);
        var (next, text) = await Complete(http, new { prompt = "A long story", max_tokens = 3 });
        Assert.That((int)next.StatusCode, Is.EqualTo(200), "the router keeps serving on the other replica: " + text);
    }

    [Test]
    public void RouteRefusesBadWorkerAddresses()
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        Assert.That(Kernels.Cli.Program.Run(["route", "--worker-urls", "localhost:8000"], stdout, stderr), Is.EqualTo(1));
        Assert.That(stderr.ToString(), Does.Contain("--worker-urls: 'localhost:8000' is not a replica base address"));
        Assert.That(Kernels.Cli.Program.Run(["route", "--worker-urls", "http://127.0.0.1:8000", "http://127.0.0.1:8000/"], stdout, stderr), Is.EqualTo(1));
        Assert.That(stderr.ToString(), Does.Contain("listed twice"));
    }
}
