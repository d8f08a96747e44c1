// `kernels serve` refuses bad settings, and a port already taken, with one clear error line.
using System.Net;
using System.Net.Sockets;
using Kernels.Tests.Cli;

namespace Kernels.Tests.Server;

public class ServeCommandTests
{
    private static void AssertOneError((int Code, string Out, string Error) r, string fragment)
    {
        Assert.That(r.Code, Is.EqualTo(1), r.Error);
        var lines = r.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.StartsWith("error:")).ToArray();
        Assert.That(lines, Has.Length.EqualTo(1), r.Error);
        Assert.That(lines[0], Does.Contain(fragment));
    }

    [TestCase("--host", "example.com", "--host")]
    [TestCase("--port", "70000", "--port")]
    [TestCase("--api-key", "", "--api-key")]
    public void BadSettingsAreOneErrorLine(string option, string value, string fragment) =>
        AssertOneError(CliRunner.Run("serve", "--model", "synthetic:tiny", option, value), fragment);

    [Test]
    public void APortInUseIsOneErrorLine()
    {
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        int port = ((IPEndPoint)taken.LocalEndpoint).Port;
        AssertOneError(CliRunner.Run("serve", "--model", "synthetic:tiny", "--port", port.ToString()), port.ToString());
    }
}
