// Kernels.Runtime used the way an application uses it, from the NuGet package: one streamed completion through
// InferenceEngine.GenerateAsync and one chat call through Microsoft.Extensions.AI's IChatClient.
//   dotnet run --project tools/Kernels.Sample -c Release [-- MODEL]   (MODEL: a path, or synthetic:tiny by default)
using Kernels.Runtime.Engine;
using Kernels.Runtime.Engine.Chat;
using Microsoft.Extensions.AI;

string model = args.Length > 0 ? args[0] : "synthetic:tiny";
using var engine = InferenceEngine.Create(model);
bool fatbin = typeof(InferenceEngine).Assembly.GetManifestResourceNames().Contains("Kernels.fatbin");
Console.WriteLine($"model {engine.ModelName} on {engine.BackendDescription}; chat format {engine.ChatTemplate.Format}; " +
                  $"CUDA fatbin embedded in Kernels.Runtime.dll: {(fatbin ? "yes" : "no")}");

// ---- Streaming completion ------------------------------------------------------------------------------------------
Console.WriteLine("== GenerateAsync");
var request = new GenerationRequest
{
    Prompt = "Once upon a time",
    MaxNewTokens = 24,
    Sampling = new SamplingOptions { Temperature = 0.8f, TopP = 0.95f, Seed = 7 },
};
await foreach (var e in engine.GenerateAsync(request))
{
    Console.Write(e.Text);
    if (e.Finish is { } finish)
        Console.WriteLine($"\n[finish {finish}; {e.Usage!.PromptTokens} prompt + {e.Usage.CompletionTokens} completion tokens]");
}

// ---- IChatClient ---------------------------------------------------------------------------------------------------
Console.WriteLine("== IChatClient");
IChatClient chat = engine.AsChatClient();
var response = await chat.GetResponseAsync(
    [new ChatMessage(ChatRole.System, "You are terse."), new ChatMessage(ChatRole.User, "Name three rivers.")],
    new ChatOptions { Temperature = 0, MaxOutputTokens = 24 });
Console.WriteLine(response.Text);
Console.WriteLine($"[finish {response.FinishReason}; model {response.ModelId}; {response.Usage?.InputTokenCount} input + " +
                  $"{response.Usage?.OutputTokenCount} output = {response.Usage?.TotalTokenCount} tokens]");
