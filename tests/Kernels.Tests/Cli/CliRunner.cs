// Runs the `kernels` command line in-process and captures what it prints.
namespace Kernels.Tests.Cli;

public static class CliRunner
{
    public static (int Code, string Out, string Error) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = global::Kernels.Cli.Program.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }
}
