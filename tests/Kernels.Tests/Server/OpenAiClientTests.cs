// The official OpenAI .NET client (OpenAI 2.15.0) against our server: chat, streaming, errors it must surface.
using System.ClientModel;
using System.Text;
using OpenAI;
using OpenAI.Chat;

namespace Kernels.Tests.Server;

[CancelAfter(120_000)]
public class OpenAiClientTests
{
    private TestServer _server = null!;

    [OneTimeSetUp]
    public async Task Start() => _server = await TestServer.StartAsync();

    [OneTimeTearDown]
    public async Task Stop() => await _server.DisposeAsync();

    private ChatClient Client(string? model = null, string key = TestServer.ApiKey) =>
        new(model ?? _server.Engine.ModelName, new ApiKeyCredential(key), new OpenAIClientOptions { Endpoint = new Uri(_server.BaseAddress, "/v1") });

    private static readonly ChatMessage[] Conversation = [new SystemChatMessage("Be brief."), new UserChatMessage("Tell me a story.")];

    [Test]
    public void CompleteChatAndStreamingAgree()
    {
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 8, Temperature = 0 };
        ChatCompletion completion = Client().CompleteChat(Conversation, options);
        Assert.That(completion.Model, Is.EqualTo(_server.Engine.ModelName));
        Assert.That(completion.Role, Is.EqualTo(ChatMessageRole.Assistant));
        Assert.That(completion.FinishReason, Is.AnyOf(ChatFinishReason.Stop, ChatFinishReason.Length));
        Assert.That(completion.Usage.InputTokenCount, Is.GreaterThan(0));
        Assert.That(completion.Usage.OutputTokenCount, Is.InRange(1, 8));
        Assert.That(completion.Usage.TotalTokenCount, Is.EqualTo(completion.Usage.InputTokenCount + completion.Usage.OutputTokenCount));
        string text = string.Concat(completion.Content.Select(p => p.Text));

        var streamed = new StringBuilder();
        ChatFinishReason? finish = null;
        ChatTokenUsage? usage = null;
        foreach (StreamingChatCompletionUpdate update in Client().CompleteChatStreaming(Conversation, options))
        {
            foreach (var part in update.ContentUpdate) streamed.Append(part.Text);
            finish ??= update.FinishReason;
            usage ??= update.Usage;
        }
        Assert.That(streamed.ToString(), Is.EqualTo(text));
        Assert.That(finish, Is.EqualTo(completion.FinishReason));
        Assert.That(usage?.OutputTokenCount, Is.EqualTo(completion.Usage.OutputTokenCount), "the client asks for include_usage and reads the last chunk");
    }

    [Test]
    public void ChatLogprobsReachTheClientStreamedOrNot()
    {
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 8, Temperature = 0, IncludeLogProbabilities = true, TopLogProbabilityCount = 2 };
        ChatCompletion completion = Client().CompleteChat(Conversation, options);
        var tokens = completion.ContentTokenLogProbabilities;
        Assert.That(tokens, Has.Count.EqualTo(completion.Usage.OutputTokenCount));
        foreach (var t in tokens)
        {
            Assert.That(t.LogProbability, Is.LessThanOrEqualTo(0f));
            Assert.That(t.TopLogProbabilities, Has.Count.EqualTo(2));
            Assert.That(t.TopLogProbabilities[0].LogProbability, Is.EqualTo(t.LogProbability).Within(1e-6), "greedy: the chosen token is the most likely");
            Assert.That(t.TopLogProbabilities[0].LogProbability, Is.GreaterThanOrEqualTo(t.TopLogProbabilities[1].LogProbability));
            Assert.That(LogprobsServerTests.Bytes(t.Token), Is.EqualTo(t.Utf8Bytes!.Value.ToArray()), "token text and bytes agree");
        }
        var bytes = tokens.SelectMany(t => t.Utf8Bytes!.Value.ToArray()).ToArray();
        Assert.That(System.Text.Encoding.UTF8.GetString(bytes), Does.StartWith(string.Concat(completion.Content.Select(p => p.Text))),
            "the tokens' bytes spell the reply (an end-of-turn token may follow it)");

        var streamed = new List<ChatTokenLogProbabilityDetails>();
        foreach (StreamingChatCompletionUpdate update in Client().CompleteChatStreaming(Conversation, options)) streamed.AddRange(update.ContentTokenLogProbabilities);
        Assert.That(streamed.Select(t => t.Token), Is.EqualTo(tokens.Select(t => t.Token)));
        Assert.That(streamed.Select(t => t.LogProbability), Is.EqualTo(tokens.Select(t => t.LogProbability)));

        ChatCompletion without = Client().CompleteChat(Conversation, new ChatCompletionOptions { MaxOutputTokenCount = 8, Temperature = 0 });
        Assert.That(without.ContentTokenLogProbabilities, Is.Empty, "not asked, not given");
    }

    [Test]
    public async Task AsyncStreamingWithASeedRepeats()
    {
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 8, Temperature = 0.9f, TopP = 0.95f };
#pragma warning disable OPENAI001 // Seed is marked experimental in the client
        options.Seed = 7;
#pragma warning restore OPENAI001
        async Task<string> Run()
        {
            var sb = new StringBuilder();
            await foreach (var update in Client().CompleteChatStreamingAsync(Conversation, options))
                foreach (var part in update.ContentUpdate) sb.Append(part.Text);
            return sb.ToString();
        }
        Assert.That(await Run(), Is.EqualTo(await Run()));
    }

    [Test]
    public void ErrorsReachTheClientWithTheirStatus()
    {
        var wrongKey = Assert.Throws<ClientResultException>(() => Client(key: "nope").CompleteChat(Conversation));
        Assert.That(wrongKey!.Status, Is.EqualTo(401));
        var unknownModel = Assert.Throws<ClientResultException>(() => Client(model: "gpt-4o").CompleteChat(Conversation));
        Assert.That(unknownModel!.Status, Is.EqualTo(404));
        Assert.That(unknownModel.Message, Does.Contain("gpt-4o"));
        var badTemperature = Assert.Throws<ClientResultException>(() => Client().CompleteChat(Conversation, new ChatCompletionOptions { Temperature = -1 }));
        Assert.That(badTemperature!.Status, Is.EqualTo(400));
        Assert.That(badTemperature.Message, Does.Contain("temperature"));
    }
}
