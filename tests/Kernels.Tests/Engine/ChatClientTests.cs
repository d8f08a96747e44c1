// The IChatClient adapter (streaming and not, option mapping, stop strings, seeds, errors) and the chat templates.
using System.Text.Json;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Engine.Chat;
using Microsoft.Extensions.AI;

namespace Kernels.Tests.Engine;

public class ChatClientTests
{
    private InferenceEngine _engine = null!;
    private IChatClient _client = null!;

    private static readonly ChatMessage[] Conversation =
    [
        new(ChatRole.System, "You are terse."),
        new(ChatRole.User, "Tell me a story."),
    ];

    [OneTimeSetUp]
    public void Load()
    {
        _engine = InferenceEngine.Create("synthetic:tiny");
        _client = _engine.AsChatClient();
    }

    [OneTimeTearDown]
    public void Unload()
    {
        _client.Dispose();
        _engine.Dispose();
    }

    private static ChatOptions Greedy(int maxTokens) => new() { Temperature = 0, MaxOutputTokens = maxTokens };

    // ---- Responses -------------------------------------------------------------------------------------------------

    [Test]
    public async Task ResponseEqualsTheConcatenatedStream()
    {
        var response = await _client.GetResponseAsync(Conversation, Greedy(40));
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in _client.GetStreamingResponseAsync(Conversation, Greedy(40))) updates.Add(u);

        Assert.That(response.Text, Is.Not.Empty);
        Assert.That(string.Concat(updates.Select(u => u.Text)), Is.EqualTo(response.Text));
        Assert.That(updates.Take(updates.Count - 1).Select(u => u.FinishReason), Has.All.Null, "only the last update finishes");
        var last = updates[^1];
        Assert.That(last.FinishReason, Is.EqualTo(response.FinishReason));
        var usage = last.Contents.OfType<UsageContent>().Single().Details;
        Assert.That(usage.InputTokenCount, Is.EqualTo(response.Usage!.InputTokenCount));
        Assert.That(usage.OutputTokenCount, Is.EqualTo(response.Usage.OutputTokenCount));
        Assert.That(updates.Select(u => u.ResponseId).Distinct().Count(), Is.EqualTo(1));
        Assert.That(updates, Has.All.Property(nameof(ChatResponseUpdate.Role)).EqualTo(ChatRole.Assistant));

        // Microsoft.Extensions.AI's own coalescing of the stream gives the same response.
        var coalesced = updates.ToChatResponse();
        Assert.That(coalesced.Text, Is.EqualTo(response.Text));
        Assert.That(coalesced.FinishReason, Is.EqualTo(response.FinishReason));
        Assert.That(coalesced.Usage!.TotalTokenCount, Is.EqualTo(response.Usage.TotalTokenCount));
        Assert.That(coalesced.Messages, Has.Count.EqualTo(1));
    }

    [Test]
    public async Task ResponseCarriesModelUsageAndRole()
    {
        var response = await _client.GetResponseAsync(Conversation, Greedy(8));
        var request = new InferenceChatClient(_engine).ToRequest(Conversation, Greedy(8));

        Assert.That(response.ModelId, Is.EqualTo("synthetic:tiny"));
        Assert.That(response.Messages.Single().Role, Is.EqualTo(ChatRole.Assistant));
        Assert.That(response.Usage!.InputTokenCount, Is.EqualTo(_engine.PromptIds(request).Length));
        Assert.That(response.Usage.TotalTokenCount, Is.EqualTo(response.Usage.InputTokenCount + response.Usage.OutputTokenCount));
        Assert.That(response.ResponseId, Is.Not.Null.And.Not.Empty);
    }

    [TestCase(1)]
    [TestCase(5)]
    [TestCase(17)]
    public async Task MaxOutputTokensBoundsTheOutput(int max)
    {
        // The adapter cannot ignore EOS, so the sample may end earlier; when it reaches the limit it says Length.
        var response = await _client.GetResponseAsync(Conversation, Greedy(max));
        long output = response.Usage!.OutputTokenCount!.Value;
        Assert.That(output, Is.LessThanOrEqualTo(max));
        if (output == max) Assert.That(response.FinishReason, Is.EqualTo(ChatFinishReason.Length));
        else Assert.That(response.FinishReason, Is.EqualTo(ChatFinishReason.Stop));
    }

    [Test]
    public async Task StopSequenceEndsTheTextBeforeItsFirstOccurrence()
    {
        var full = (await _client.GetResponseAsync(Conversation, Greedy(48))).Text;
        if (full.Length < 12) Assert.Inconclusive($"the synthetic model's greedy text is too short to pick a stop string from: '{full}'");
        string stop = full.Substring(8, 3);
        int first = full.IndexOf(stop, StringComparison.Ordinal);

        var options = Greedy(48);
        options.StopSequences = [stop];
        var response = await _client.GetResponseAsync(Conversation, options);
        Assert.That(response.Text, Is.EqualTo(full[..first]));
        Assert.That(response.FinishReason, Is.EqualTo(ChatFinishReason.Stop));

        var streamed = new List<ChatResponseUpdate>();
        await foreach (var u in _client.GetStreamingResponseAsync(Conversation, options)) streamed.Add(u);
        Assert.That(string.Concat(streamed.Select(u => u.Text)), Is.EqualTo(full[..first]));
    }

    [Test]
    public async Task SeedsReproduce()
    {
        ChatOptions Sampled(long seed) => new() { Temperature = 1.0f, TopP = 0.95f, Seed = seed, MaxOutputTokens = 32 };
        var a = await _client.GetResponseAsync(Conversation, Sampled(42));
        var b = await _client.GetResponseAsync(Conversation, Sampled(42));
        var c = await _client.GetResponseAsync(Conversation, Sampled(43));
        Assert.That(b.Text, Is.EqualTo(a.Text));
        Assert.That(c.Text, Is.Not.EqualTo(a.Text));
    }

    [Test]
    public async Task ConcurrentCallsEachGetTheirOwnAnswer()
    {
        var alone = await _client.GetResponseAsync(Conversation, Greedy(16));
        var together = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => _client.GetResponseAsync(Conversation, Greedy(16))));
        Assert.That(together.Select(r => r.Text), Has.All.EqualTo(alone.Text));
    }

    [Test]
    public void CancelledTokenThrowsOperationCanceled()
    {
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.CatchAsync<OperationCanceledException>(() => _client.GetResponseAsync(Conversation, Greedy(16), cts.Token));
    }

    [Test]
    public void GetServiceDescribesTheClient()
    {
        var metadata = _client.GetService<ChatClientMetadata>();
        Assert.That(metadata!.ProviderName, Is.EqualTo("kernels"));
        Assert.That(metadata.DefaultModelId, Is.EqualTo("synthetic:tiny"));
        Assert.That(_client.GetService<InferenceEngine>(), Is.SameAs(_engine));
        Assert.That(_client.GetService<IChatClient>(), Is.SameAs(_client));
        Assert.That(_client.GetService<ChatClientMetadata>("some key"), Is.Null);
        Assert.That(_client.GetService<string>(), Is.Null);
    }

    // ---- Option mapping --------------------------------------------------------------------------------------------

    [Test]
    public void OptionsMapOntoTheRequest()
    {
        var client = new InferenceChatClient(_engine);
        var options = new ChatOptions
        {
            Temperature = 0.7f, TopP = 0.9f, TopK = 40, Seed = 1234, MaxOutputTokens = 77,
            StopSequences = ["END", "\nuser:"],
            AdditionalProperties = new() { ["min_p"] = 0.05, ["repetition_penalty"] = "1.1" },
        };
        var request = client.ToRequest(Conversation, options);

        Assert.That(request.MaxNewTokens, Is.EqualTo(77));
        Assert.That(request.N, Is.EqualTo(1));
        Assert.That(request.Sampling.Temperature, Is.EqualTo(0.7f));
        Assert.That(request.Sampling.TopP, Is.EqualTo(0.9f));
        Assert.That(request.Sampling.TopK, Is.EqualTo(40));
        Assert.That(request.Sampling.Seed, Is.EqualTo(1234UL));
        Assert.That(request.Sampling.MinP, Is.EqualTo(0.05f));
        Assert.That(request.Sampling.RepetitionPenalty, Is.EqualTo(1.1f));
        // The template's end-of-turn strings come first, the caller's are added once each.
        Assert.That(request.Stop, Is.EqualTo(new[] { "\nuser:", "\nsystem:", "END" }));
        Assert.That(request.Prompt, Is.EqualTo(_engine.ChatTemplate.Render([new("system", "You are terse."), new("user", "Tell me a story.")])));
    }

    [Test]
    public void NoOptionsMeansGreedyUpToTheContext()
    {
        var request = new InferenceChatClient(_engine).ToRequest(Conversation);
        Assert.That(request.Sampling, Is.EqualTo(SamplingOptions.Greedy));
        Assert.That(request.MaxNewTokens, Is.EqualTo(_engine.Config.MaxPositions));
        Assert.That(request.Stop, Is.EqualTo(_engine.ChatTemplate.StopStrings));
    }

    [Test]
    public void InstructionsBecomeALeadingSystemTurn()
    {
        var request = new InferenceChatClient(_engine).ToRequest([new ChatMessage(ChatRole.User, "Hi")], new ChatOptions { Instructions = "Be brief." });
        Assert.That(request.Prompt, Is.EqualTo("system: Be brief.\nuser: Hi\nassistant:"));
    }

    [Test]
    public void JsonElementPropertiesAreRead()
    {
        var json = JsonDocument.Parse("""{"min_p": 0.2, "repetition_penalty": 1.3}""").RootElement;
        var options = new ChatOptions
        {
            AdditionalProperties = new() { ["min_p"] = json.GetProperty("min_p"), ["repetition_penalty"] = json.GetProperty("repetition_penalty") },
        };
        var request = new InferenceChatClient(_engine).ToRequest(Conversation, options);
        Assert.That(request.Sampling.MinP, Is.EqualTo(0.2f));
        Assert.That(request.Sampling.RepetitionPenalty, Is.EqualTo(1.3f));
    }

    // ---- Errors ----------------------------------------------------------------------------------------------------

    [Test]
    public void ToolRoleIsRejected()
    {
        var e = Assert.ThrowsAsync<ArgumentException>(() => _client.GetResponseAsync([new ChatMessage(ChatRole.Tool, "42")]));
        Assert.That(e!.Message, Does.Contain("tool"));
        Assert.That(e.ParamName, Is.EqualTo("messages"));
    }

    [Test]
    public void NonTextContentIsRejected()
    {
        var message = new ChatMessage(ChatRole.User, [new TextContent("look:"), new DataContent(new byte[] { 1, 2, 3 }, "image/png")]);
        var e = Assert.ThrowsAsync<ArgumentException>(() => _client.GetResponseAsync([message]));
        Assert.That(e!.Message, Does.Contain("DataContent"));
        Assert.ThrowsAsync<ArgumentException>(async () =>
        {
            await foreach (var _ in _client.GetStreamingResponseAsync([message])) { }
        });
    }

    [Test]
    public void UnsupportedOptionsAreRejected()
    {
        var tools = new ChatOptions { Tools = [AIFunctionFactory.Create(() => 42, "answer")] };
        Assert.ThrowsAsync<NotSupportedException>(() => _client.GetResponseAsync(Conversation, tools));
        Assert.ThrowsAsync<NotSupportedException>(() => _client.GetResponseAsync(Conversation, new ChatOptions { ResponseFormat = ChatResponseFormat.Json }));
        Assert.ThrowsAsync<NotSupportedException>(() => _client.GetResponseAsync(Conversation, new ChatOptions { PresencePenalty = 0.5f }));
    }

    [Test]
    public void BadValuesAreArgumentExceptions()
    {
        var e = Assert.ThrowsAsync<ArgumentException>(() => _client.GetResponseAsync(Conversation, new ChatOptions { TopP = 2f }));
        Assert.That(e!.Message, Does.Contain(nameof(ChatOptions.TopP)));
        Assert.That(e.InnerException, Is.TypeOf<RequestValidationException>());
        Assert.ThrowsAsync<ArgumentException>(() => _client.GetResponseAsync(Conversation, new ChatOptions { MaxOutputTokens = 0 }));
        Assert.ThrowsAsync<ArgumentException>(() => _client.GetResponseAsync(Conversation,
            new ChatOptions { AdditionalProperties = new() { ["min_p"] = "a lot" } }));
        Assert.ThrowsAsync<ArgumentException>(() => _client.GetResponseAsync([]));
        var tooLong = new ChatMessage(ChatRole.User, new string('x', 600)); // the tiny model's context is 512 tokens
        var p = Assert.ThrowsAsync<ArgumentException>(() => _client.GetResponseAsync([tooLong]));
        Assert.That(p!.ParamName, Is.EqualTo("messages"));
    }
}

public class ChatTemplateTests
{
    private static readonly ChatTurn[] Turns =
    [
        new("system", "You are terse."),
        new("user", "Hi"),
        new("assistant", "Hello!"),
        new("user", "Name?"),
    ];

    [Test]
    public void Llama3() => Assert.That(new ChatTemplate(ChatFormat.Llama3).Render(Turns), Is.EqualTo(
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>" +
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" +
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>" +
        "<|start_header_id|>user<|end_header_id|>\n\nName?<|eot_id|>" +
        "<|start_header_id|>assistant<|end_header_id|>\n\n"));

    [Test]
    public void ChatMl() => Assert.That(new ChatTemplate(ChatFormat.ChatMl).Render(Turns), Is.EqualTo(
        "<|im_start|>system\nYou are terse.<|im_end|>\n" +
        "<|im_start|>user\nHi<|im_end|>\n" +
        "<|im_start|>assistant\nHello!<|im_end|>\n" +
        "<|im_start|>user\nName?<|im_end|>\n" +
        "<|im_start|>assistant\n"));

    [Test]
    public void Llama2() => Assert.That(new ChatTemplate(ChatFormat.Llama2).Render(Turns), Is.EqualTo(
        "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST] Hello! [INST] Name? [/INST]"));

    [Test]
    public void Mistral() => Assert.That(new ChatTemplate(ChatFormat.Mistral).Render(Turns), Is.EqualTo(
        "[INST] You are terse.\n\nHi [/INST] Hello! [INST] Name? [/INST]"));

    [Test]
    public void Plain() => Assert.That(new ChatTemplate(ChatFormat.Plain).Render(Turns), Is.EqualTo(
        "system: You are terse.\nuser: Hi\nassistant: Hello!\nuser: Name?\nassistant:"));

    [Test]
    public void Llama3TrimsContentChatMlKeepsIt()
    {
        ChatTurn[] padded = [new("user", "  Hi\n")];
        Assert.That(new ChatTemplate(ChatFormat.Llama3).Render(padded), Does.Contain("\n\nHi<|eot_id|>"));
        Assert.That(new ChatTemplate(ChatFormat.ChatMl).Render(padded), Does.Contain("user\n  Hi\n<|im_end|>"));
    }

    [Test]
    public void WithoutSystemLlama2HasNoSysBlock() => Assert.That(
        new ChatTemplate(ChatFormat.Llama2).Render([new("user", "Hi")]), Is.EqualTo("[INST] Hi [/INST]"));

    [TestCase(ChatFormat.Llama3, new[] { "<|eot_id|>" })]
    [TestCase(ChatFormat.ChatMl, new[] { "<|im_end|>" })]
    [TestCase(ChatFormat.Llama2, new string[0])]
    [TestCase(ChatFormat.Mistral, new string[0])]
    [TestCase(ChatFormat.Plain, new[] { "\nuser:", "\nsystem:" })]
    public void StopStrings(ChatFormat format, string[] expected) =>
        Assert.That(new ChatTemplate(format).StopStrings, Is.EqualTo(expected));

    [TestCase("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>{% endfor %}", ChatFormat.Llama3)]
    [TestCase("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}", ChatFormat.ChatMl)]
    [TestCase("{{ bos_token + '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}", ChatFormat.Llama2)]
    [TestCase("{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}", ChatFormat.Mistral)]
    public void FromJinjaRecognisesTheFamily(string jinja, ChatFormat expected) =>
        Assert.That(ChatTemplate.FromJinja(jinja), Is.EqualTo(expected));

    [Test]
    public void FromJinjaUnknownIsNull() =>
        Assert.That(ChatTemplate.FromJinja("{% for m in messages %}<start_of_turn>{{ m.role }}{% endfor %}"), Is.Null);

    [Test]
    public void UnknownRoleIsRejected()
    {
        var e = Assert.Throws<RequestValidationException>(() => new ChatTemplate(ChatFormat.ChatMl).Render([new("tool", "42")]));
        Assert.That(e!.Argument, Is.EqualTo("messages"));
        Assert.That(e.Message, Does.Contain("'tool'"));
    }

    [Test]
    public void SyntheticModelUsesPlain()
    {
        using var engine = InferenceEngine.Create("synthetic:tiny");
        Assert.That(engine.ChatTemplate.Format, Is.EqualTo(ChatFormat.Plain));
    }
}
