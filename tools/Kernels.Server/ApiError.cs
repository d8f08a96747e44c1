// OpenAI-style errors: the exception handlers throw, and the one writer of {"error":{message,type,param,code}} bodies.
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;

namespace Kernels.Server;

/// <summary>A request the server refuses; becomes an HTTP status and an OpenAI-style error body.</summary>
public sealed class ApiException(int status, string message, string? param = null, string? code = null, string type = "invalid_request_error")
    : Exception(message)
{
    public int Status { get; } = status;
    public string? Param { get; } = param;
    public string? Code { get; } = code;
    public string Type { get; } = type;

    public static ApiException BadRequest(string param, string message) => new(StatusCodes.Status400BadRequest, $"{param}: {message}", param);

    public static ApiException NotSupported(string param, string what) =>
        new(StatusCodes.Status400BadRequest, $"{param}: {what} is not supported by this server", param, "unsupported_parameter");

    public JsonObject ToJson() => Body(Message, Type, Param, Code);

    public static JsonObject Body(string message, string type, string? param, string? code) => new()
    {
        ["error"] = new JsonObject
        {
            ["message"] = message,
            ["type"] = type,
            ["param"] = param,
            ["code"] = code,
        },
    };

    public async Task WriteAsync(HttpResponse response)
    {
        response.StatusCode = Status;
        if (Status == StatusCodes.Status401Unauthorized) response.Headers.WWWAuthenticate = "Bearer";
        response.ContentType = "application/json; charset=utf-8";
        await response.WriteAsync(ToJson().ToJsonString(ServerApp.Json)).ConfigureAwait(false);
    }
}
