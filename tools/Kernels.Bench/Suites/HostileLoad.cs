// `kernels-bench hostile`: steady streaming clients against `kernels serve` on loopback, with and without a hostile
// client (issue 21's fan-out, huge stop list and bad Unicode, refused; the largest fan-out and stop list the limits
// allow, served). For each hostile client the steady clients run on while the hostile one is switched on and off in
// short alternating windows, so both sides of each ratio see the same (shared, drifting) machine; reports the steady
// clients' time-to-first-token percentiles with and without it and the p99 ratio; acceptance: within 2x.
using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Kernels.Bench;

public static class HostileLoad
{
    /// <summary>
    /// A hostile client: a name, what it sends (a JSON body, or raw bytes for invalid UTF-8), whether it streams, and
    /// whether it is one of issue 21's requests (the acceptance) or the largest the limits serve (for information:
    /// served work slows each step by the rows it adds, as any engine's would).
    /// </summary>
    private sealed record Attack(string Name, string Description, Func<int, byte[]> Body, bool Stream, bool Refused, bool ToSink = false);

    private sealed record PhaseResult(string Phase, string Attack, int SteadyRequests, int SteadyFailures, double P50, double P90, double P99,
        int AttackRequests, string AttackStatuses, double RatioP99, bool Counts);

    /// <summary>One steady request: when it started (seconds into the block), its TTFT in ms, or failed.</summary>
    private readonly record struct Observation(double Start, double TtftMs, bool Failed);

    /// <summary>Requests starting this soon after the attacker is switched on or off count for neither side.</summary>
    private const double SettleSeconds = 0.25;

    public static async Task<int> Run(string model, int clients, double phaseSeconds, double windowSeconds, int maxTokens, string? kernelsDll, string? jsonPath)
    {
        string dll = FindKernels(kernelsDll);
        int rounds = Math.Max(1, (int)Math.Round(phaseSeconds / (2 * windowSeconds)));
        Console.WriteLine($"# hostile clients vs steady ones, {model} served by `kernels serve` ({dll}) on loopback");
        Console.WriteLine($"# machine: {HostInfo.Machine()} (shared: other builds and tests run on it too)");
        Console.WriteLine($"# {clients} closed-loop streaming clients (8-word prompts, max_tokens {maxTokens}, temperature 0, ignore_eos); per hostile client " +
                          $"{rounds} rounds of {windowSeconds:G} s without it then {windowSeconds:G} s with it (sending back to back from a process of its own); " +
                          $"requests starting within {SettleSeconds} s of a switch are not counted");
        using var server = await ServerProcess.StartAsync(dll, model);
        using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = clients + 8 }) { BaseAddress = server.Address, Timeout = TimeSpan.FromMinutes(5) };

        await SteadyBlock(http, clients, Math.Max(2 * windowSeconds, 3), windowSeconds, maxTokens, null); // warm-up: JIT tiers, connections
        var results = new List<PhaseResult>();
        foreach (var attack in Attacks())
        {
            var (without, with, attackCount, statuses) = await SteadyBlock(http, clients, rounds * 2 * windowSeconds, windowSeconds, maxTokens, attack);
            var off = without.Where(o => !o.Failed).Select(o => o.TtftMs).ToList();
            var on = with.Where(o => !o.Failed).Select(o => o.TtftMs).ToList();
            double offP99 = Percentile(off, .99), onP99 = Percentile(on, .99);
            results.Add(new PhaseResult("no attacker", "-", off.Count, without.Count(o => o.Failed), Percentile(off, .5), Percentile(off, .9), offP99, 0, "", 0, false));
            results.Add(new PhaseResult(attack.Name, attack.Description, on.Count, with.Count(o => o.Failed), Percentile(on, .5), Percentile(on, .9), onP99,
                attackCount, statuses, offP99 > 0 ? onP99 / offP99 : 0, attack.Refused));
            Console.Error.WriteLine($"  {attack.Name}: steady p99 TTFT {offP99:F1} ms without, {onP99:F1} ms with ({off.Count} / {on.Count} requests); attacker {attackCount} requests ({statuses})");
        }
        server.Stop();

        Console.WriteLine();
        Console.WriteLine("| phase | hostile client | steady requests | TTFT p50 ms | p90 ms | p99 ms | p99 vs without it (interleaved) | attacker's requests (statuses) |");
        Console.WriteLine("|---|---|---:|---:|---:|---:|---:|---|");
        foreach (var r in results)
            Console.WriteLine($"| {r.Phase} | {r.Attack} | {r.SteadyRequests}{(r.SteadyFailures > 0 ? $" ({r.SteadyFailures} failed)" : "")} | {r.P50:F1} | {r.P90:F1} | {r.P99:F1} | " +
                              $"{(r.Attack == "-" ? "-" : $"{r.RatioP99:F2}x")} | {(r.AttackRequests > 0 ? $"{r.AttackRequests} ({r.AttackStatuses})" : "-")} |");
        bool pass = results.All(r => r.SteadyFailures == 0) && results.Where(r => r.Counts).All(r => r.RatioP99 <= 2.0);
        Console.WriteLine();
        Console.WriteLine("acceptance (with each of issue 21's hostile clients, the steady clients' p99 TTFT within 2x of their p99 without it; " +
                          $"no steady request failed; the served ones are for information): {(pass ? "holds" : "does NOT hold")}");
        if (jsonPath != null)
            await File.WriteAllTextAsync(jsonPath, new JsonObject
            {
                ["model"] = model, ["clients"] = clients, ["phaseSeconds"] = phaseSeconds, ["windowSeconds"] = windowSeconds, ["maxTokens"] = maxTokens,
                ["machine"] = HostInfo.Machine(), ["pass"] = pass,
                ["phases"] = new JsonArray(results.Select(r => (JsonNode)new JsonObject
                {
                    ["phase"] = r.Phase, ["attack"] = r.Attack, ["steadyRequests"] = r.SteadyRequests, ["steadyFailures"] = r.SteadyFailures,
                    ["ttftMs"] = new JsonObject { ["p50"] = r.P50, ["p90"] = r.P90, ["p99"] = r.P99 },
                    ["attackRequests"] = r.AttackRequests, ["attackStatuses"] = r.AttackStatuses, ["ratioP99"] = r.RatioP99, ["acceptance"] = r.Counts,
                }).ToArray()),
            }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        return 0;
    }

    /// <summary>The hostile clients: issue 21's requests (refused by the limits) and the largest the limits let through.</summary>
    private static List<Attack> Attacks()
    {
        byte[] Json(object body) => JsonSerializer.SerializeToUtf8Bytes(body);
        // 20,000 prompts x n = 128 (80 KB): what stalled the engine for 15 minutes.
        string fanOut = "{\"prompt\": [" + string.Join(",", Enumerable.Repeat("[1]", 20_000)) + "], \"n\": 128, \"max_tokens\": 16}";
        // 800,000 stop strings x n = 128 (4 MB with the JSON around them: under the body limit).
        string stops = "{\"prompt\": \"Once upon a time\", \"n\": 128, \"max_tokens\": 16, \"stop\": [" + string.Join(",", Enumerable.Repeat("\"zq\"", 800_000)) + "]}";
        var fanOutBytes = Encoding.UTF8.GetBytes(fanOut);
        var stopsBytes = Encoding.UTF8.GetBytes(stops);
        // Invalid text in turn in each field: lone surrogates (valid JSON escapes) and invalid UTF-8 bytes.
        var badUnicode = new[]
        {
            Encoding.UTF8.GetBytes("""{"prompt": "a\ud800b", "max_tokens": 4}"""),
            Encoding.UTF8.GetBytes("""{"prompt": "abc", "stop": ["\udc00"], "max_tokens": 4}"""),
            Encoding.UTF8.GetBytes("""{"prompt": "abc", "model": "\ud83d", "max_tokens": 4}"""),
            [.. Encoding.UTF8.GetBytes("{\"prompt\": \"a"), 0xFF, 0xC3, .. Encoding.UTF8.GetBytes("b\", \"max_tokens\": 4}")],
            [.. Encoding.UTF8.GetBytes("{\"prompt\": \"a"), 0xED, 0xA0, 0x80, .. Encoding.UTF8.GetBytes("\", \"max_tokens\": 4}")],
        };
        return
        [
            new("fan-out", "20,000 prompts x n 128 (issue 21; refused)", _ => fanOutBytes, false, true),
            new("huge stop list", "800,000 stop strings x n 128 (issue 21; refused)", _ => stopsBytes, false, true),
            new("bad Unicode", "lone surrogates / invalid UTF-8 in prompt, stop, model (refused)", i => badUnicode[i % badUnicode.Length], false, true),
            // Control: the same 4 MB requests sent to a sink in the attacker's own process, which takes each whole, does
            // nothing with it and answers 400: what the attacker's traffic alone costs the shared machine.
            new("huge stop list to a sink", "control: the 800,000-stop requests sent to a do-nothing sink, not the server", _ => stopsBytes, false, false, ToSink: true),
            new("fan-out at the limit", "32 prompts x n 4 = 128 choices, max_tokens 64, streamed (served)",
                _ => Json(new { prompt = Enumerable.Range(0, 32).Select(i => $"Tell me story {i}").ToArray(), n = 4, max_tokens = 64, ignore_eos = true, stream = true }), true, false),
            new("stop list at the limit", "16 stop strings of 256 characters x n 128, max_tokens 64, streamed (served)",
                _ => Json(new { prompt = "Once upon a time", n = 128, max_tokens = 64, ignore_eos = true, stream = true,
                    stop = Enumerable.Range(0, 16).Select(i => new string((char)('a' + i), 255) + "!").ToArray() }), true, false),
        ];
    }

    /// <summary>
    /// Runs the steady clients for <paramref name="seconds"/> while the attacker (if any) is on in every second window
    /// of <paramref name="window"/> seconds; returns the steady requests started with it off and with it on.
    /// </summary>
    private static async Task<(List<Observation> Off, List<Observation> On, int AttackRequests, string AttackStatuses)> SteadyBlock(
        HttpClient http, int clients, double seconds, double window, int maxTokens, Attack? attack)
    {
        var observations = new List<Observation>();
        int sequence = 0;
        using var attacker = attack == null ? null : await AttackerProcess.StartAsync(http.BaseAddress!, attack.Name);
        var clock = Stopwatch.StartNew();
        async Task Client()
        {
            while (clock.Elapsed.TotalSeconds < seconds)
            {
                int i = Interlocked.Increment(ref sequence);
                string prompt = string.Join(' ', Enumerable.Range(0, 8).Select(w => $"word{(i * 31 + w) % 97}"));
                var body = JsonSerializer.Serialize(new { prompt, max_tokens = maxTokens, temperature = 0, stream = true, ignore_eos = true });
                double startedAt = clock.Elapsed.TotalSeconds;
                long start = Stopwatch.GetTimestamp();
                double first = -1;
                bool failed = false;
                try
                {
                    using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
                    using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
                    response.EnsureSuccessStatusCode();
                    using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
                    bool done = false;
                    while (await reader.ReadLineAsync() is { } line)
                    {
                        if (!line.StartsWith("data: ")) continue;
                        if (line == "data: [DONE]") { done = true; continue; }
                        if (first < 0) first = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                        if (line.Contains("\"error\"")) throw new InvalidOperationException(line);
                    }
                    if (!done || first < 0) throw new InvalidOperationException("the stream ended without tokens or [DONE]");
                }
                catch (Exception e) when (e is HttpRequestException or InvalidOperationException or IOException)
                {
                    failed = true;
                }
                lock (observations) observations.Add(new Observation(startedAt, first, failed));
            }
        }
        // The attacker's windows: [w, 2w), [3w, 4w), ... (it stops sending at each window's end).
        async Task Switch()
        {
            for (double at = window; attacker != null && at + window <= seconds + 1e-9; at += 2 * window)
            {
                var wait = TimeSpan.FromSeconds(at) - clock.Elapsed;
                if (wait > TimeSpan.Zero) await Task.Delay(wait);
                attacker.Go(window);
            }
        }
        var tasks = Enumerable.Range(0, clients).Select(_ => Task.Run(Client)).Append(Switch()).ToList();
        await Task.WhenAll(tasks);
        var (attackRequests, statusText) = attacker == null ? (0, "") : await attacker.ResultAsync();

        bool AttackerOn(double t) => attacker != null && (int)Math.Floor(t / window) % 2 == 1;
        bool Settled(double t) => t - Math.Floor(t / window) * window >= SettleSeconds;
        var counted = observations.Where(o => Settled(o.Start)).ToList();
        return (counted.Where(o => !AttackerOn(o.Start)).ToList(), counted.Where(o => AttackerOn(o.Start)).ToList(), attackRequests, statusText);
    }

    /// <summary>
    /// `kernels-bench hostile-attack`: one hostile client, run by <see cref="SteadyBlock"/> as a process of its own. It
    /// builds its requests and says "ready"; each "go SECONDS" line on stdin makes it send back to back for that long
    /// (each response read to its end); at the end of stdin it prints "requests N statuses TEXT" for all windows.
    /// </summary>
    public static async Task<int> RunAttacker(string server, string name)
    {
        var attack = Attacks().SingleOrDefault(a => a.Name == name) ?? throw new ArgumentException($"--attack: unknown '{name}'");
        using var sink = attack.ToSink ? new Sink() : null;
        using var http = new HttpClient { BaseAddress = sink?.Address ?? new Uri(server), Timeout = TimeSpan.FromMinutes(5) };
        _ = attack.Body(0);
        Console.WriteLine("ready");
        var statuses = new Dictionary<int, int>();
        int requests = 0;
        while (await Console.In.ReadLineAsync() is { } line && line.StartsWith("go "))
        {
            double seconds = double.Parse(line[3..], System.Globalization.CultureInfo.InvariantCulture);
            var clock = Stopwatch.StartNew();
            while (clock.Elapsed.TotalSeconds < seconds)
            {
                var content = new ByteArrayContent(attack.Body(requests));
                content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
                int status;
                try
                {
                    using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = content };
                    using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
                    await response.Content.CopyToAsync(Stream.Null); // read it all, as a real client would (a stream to its end)
                    status = (int)response.StatusCode;
                }
                catch (Exception e) when (e is HttpRequestException or IOException)
                {
                    status = 0;
                }
                statuses[status] = statuses.GetValueOrDefault(status) + 1;
                requests++;
            }
        }
        string text = string.Join(", ", statuses.OrderBy(s => s.Key).Select(s => $"{(s.Key == 0 ? "connection error" : s.Key.ToString())} x{s.Value}"));
        Console.WriteLine($"requests {requests} statuses {text}");
        return 0;
    }

    /// <summary>
    /// A do-nothing HTTP endpoint on loopback for the control phase: reads each request whole (headers, then as many
    /// bytes as Content-Length says, discarded), answers 400 and closes: the attacker's traffic with no work behind it.
    /// </summary>
    private sealed class Sink : IDisposable
    {
        private static readonly byte[] Answer = Encoding.ASCII.GetBytes("HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        private readonly System.Net.Sockets.TcpListener _listener = new(IPAddress.Loopback, 0);
        public Uri Address { get; }

        public Sink()
        {
            _listener.Start();
            Address = new Uri($"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}/");
            _ = Task.Run(async () =>
            {
                while (true)
                {
                    System.Net.Sockets.TcpClient client;
                    try
                    {
                        client = await _listener.AcceptTcpClientAsync();
                    }
                    catch (Exception e) when (e is ObjectDisposedException or System.Net.Sockets.SocketException)
                    {
                        return;
                    }
                    _ = Task.Run(async () =>
                    {
                        using (client)
                        {
                            try
                            {
                                var stream = client.GetStream();
                                var buffer = new byte[64 << 10];
                                int read = 0, headerEnd = -1;
                                while (headerEnd < 0 && read < buffer.Length && await stream.ReadAsync(buffer.AsMemory(read)) is var n and > 0)
                                {
                                    read += n;
                                    headerEnd = buffer.AsSpan(0, read).IndexOf("\r\n\r\n"u8);
                                }
                                if (headerEnd < 0) return;
                                string headers = Encoding.ASCII.GetString(buffer, 0, headerEnd);
                                var length = System.Text.RegularExpressions.Regex.Match(headers, @"Content-Length:\s*(\d+)", System.Text.RegularExpressions.RegexOptions.IgnoreCase);
                                long left = (length.Success ? long.Parse(length.Groups[1].Value) : 0) - (read - headerEnd - 4);
                                while (left > 0 && await stream.ReadAsync(buffer) is var m and > 0) left -= m;
                                await stream.WriteAsync(Answer);
                            }
                            catch (IOException)
                            {
                            }
                        }
                    });
                }
            });
        }

        public void Dispose() => _listener.Stop();
    }

    /// <summary>The child process of one hostile client (see <see cref="RunAttacker"/>).</summary>
    private sealed class AttackerProcess : IDisposable
    {
        private readonly Process _process;
        private readonly TaskCompletionSource<string> _result = new(TaskCreationOptions.RunContinuationsAsynchronously);

        private AttackerProcess(Process process) => _process = process;

        public static async Task<AttackerProcess> StartAsync(Uri server, string name)
        {
            var start = SelfProcess.StartInfo("hostile-attack", "--server", server.ToString(), "--attack", name);
            start.RedirectStandardInput = true;
            start.RedirectStandardOutput = true;
            var attacker = new AttackerProcess(Process.Start(start) ?? throw new InvalidOperationException("could not start the attacker"));
            var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            attacker._process.OutputDataReceived += (_, e) =>
            {
                if (e.Data == "ready") ready.TrySetResult();
                else if (e.Data?.StartsWith("requests ") == true) attacker._result.TrySetResult(e.Data);
                else if (e.Data == null) attacker._result.TrySetResult("");
            };
            attacker._process.BeginOutputReadLine();
            await ready.Task.WaitAsync(TimeSpan.FromMinutes(1));
            return attacker;
        }

        public void Go(double seconds) => _process.StandardInput.WriteLine($"go {seconds.ToString(System.Globalization.CultureInfo.InvariantCulture)}");

        public async Task<(int Requests, string Statuses)> ResultAsync()
        {
            _process.StandardInput.Close();
            string line = await _result.Task.WaitAsync(TimeSpan.FromMinutes(5));
            await _process.WaitForExitAsync();
            var parts = line.Split(' ', 4);
            return parts.Length == 4 ? (int.Parse(parts[1]), parts[3]) : (0, "no result");
        }

        public void Dispose()
        {
            if (!_process.HasExited) _process.Kill();
            _process.Dispose();
        }
    }

    private static double Percentile(List<double> values, double q)
    {
        if (values.Count == 0) return 0;
        var sorted = values.Order().ToArray();
        return sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)];
    }

    /// <summary>
    /// kernels.dll: the --kernels path, else next to this program (the test output carries it), else the CLI's build
    /// output in the repository this program was built from.
    /// </summary>
    private static string FindKernels(string? given)
    {
        if (given != null) return File.Exists(given) ? Path.GetFullPath(given) : throw new FileNotFoundException($"--kernels: {given}: no such file", given);
        string beside = Path.Combine(AppContext.BaseDirectory, "kernels.dll");
        if (File.Exists(beside)) return beside;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            foreach (string config in new[] { "Release", "Debug" })
            {
                string candidate = Path.Combine(dir.FullName, "tools", "Kernels.Cli", "bin", config, "net10.0", "kernels.dll");
                if (File.Exists(candidate)) return candidate;
            }
        throw new FileNotFoundException("kernels.dll not found: build the CLI (./build.sh build) or pass --kernels PATH");
    }

    /// <summary>`dotnet kernels.dll serve --port 0` as a child process, until <see cref="Stop"/> (SIGTERM, then its drain).</summary>
    private sealed class ServerProcess : IDisposable
    {
        private readonly Process _process;
        public Uri Address { get; }

        private ServerProcess(Process process, Uri address)
        {
            _process = process;
            Address = address;
        }

        public static async Task<ServerProcess> StartAsync(string dll, string model)
        {
            var start = new ProcessStartInfo("dotnet", [dll, "serve", "--model", model, "--port", "0", "--shutdown-timeout", "5"])
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            };
            var process = Process.Start(start) ?? throw new InvalidOperationException("could not start dotnet");
            var listening = new TaskCompletionSource<Uri>(TaskCreationOptions.RunContinuationsAsynchronously);
            var errors = new StringBuilder();
            void Read(string? line)
            {
                if (line == null) return;
                int at = line.IndexOf("Now listening on: ", StringComparison.Ordinal);
                if (at >= 0) listening.TrySetResult(new Uri(line[(at + "Now listening on: ".Length)..].Trim()));
                if (line.StartsWith("error:")) lock (errors) errors.AppendLine(line);
            }
            process.OutputDataReceived += (_, e) => Read(e.Data);
            process.ErrorDataReceived += (_, e) => Read(e.Data);
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            process.EnableRaisingEvents = true;
            process.Exited += (_, _) => listening.TrySetException(new InvalidOperationException($"kernels serve exited with {process.ExitCode}: {errors}"));
            try
            {
                return new ServerProcess(process, await listening.Task.WaitAsync(TimeSpan.FromMinutes(2)));
            }
            catch
            {
                if (!process.HasExited) process.Kill();
                process.Dispose();
                throw;
            }
        }

        public void Stop()
        {
            if (_process.HasExited) return;
            using (var kill = Process.Start("kill", ["-TERM", _process.Id.ToString()])) kill?.WaitForExit();
            if (!_process.WaitForExit(TimeSpan.FromSeconds(15))) _process.Kill();
        }

        public void Dispose()
        {
            if (!_process.HasExited) _process.Kill();
            _process.Dispose();
        }
    }
}
