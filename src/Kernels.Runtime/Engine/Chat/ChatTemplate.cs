// Chat prompt formats of the common model families, chosen from the model's files: Llama 3, ChatML (Qwen2), Llama 2,
// Mistral, and a plain "role: text" format for base models that have none.
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Tokenization;

namespace Kernels.Runtime.Engine.Chat;

/// <summary>One message of a conversation; Role is "system", "user" or "assistant".</summary>
public sealed record ChatTurn(string Role, string Content);

public enum ChatFormat
{
    Llama3,
    ChatMl,
    Llama2,
    Mistral,
    /// <summary>"system: ...\nuser: ...\nassistant:" for base models without a chat template.</summary>
    Plain,
}

/// <summary>
/// Renders a conversation as prompt text. The tokenizer adds BOS itself (when the model uses one), so no format
/// writes it. Special tokens appear as their text: byte-level BPE tokenizers (Llama 3, Qwen2) turn them back into
/// their ids; for SentencePiece models (Llama 2, Mistral) the per-turn "&lt;/s&gt;&lt;s&gt;" between past turns is
/// left out, since SentencePiece would read it as plain text.
/// </summary>
public sealed class ChatTemplate
{
    public ChatFormat Format { get; }

    /// <summary>Strings that end an assistant turn, for formats whose end marker is not an EOS id of the tokenizer.</summary>
    public IReadOnlyList<string> StopStrings { get; }

    public ChatTemplate(ChatFormat format)
    {
        Format = format;
        StopStrings = format switch
        {
            ChatFormat.Llama3 => ["<|eot_id|>"],
            ChatFormat.ChatMl => ["<|im_end|>"],
            ChatFormat.Plain => ["\nuser:", "\nsystem:"],
            _ => [],
        };
    }

    /// <summary>
    /// The format of a model: from its own Jinja template when its files carry one (recognised by the markers each
    /// family uses), else from its tokenizer's special tokens, else <see cref="ChatFormat.Plain"/>.
    /// </summary>
    public static ChatTemplate ForModel(LoadedModel model)
    {
        if (model.ChatTemplateText is { } jinja && FromJinja(jinja) is { } f) return new ChatTemplate(f);
        ITextTokenizer? tokenizer = null;
        try
        {
            tokenizer = model.Tokenizer;
        }
        catch (ModelFormatException)
        {
        }
        if (tokenizer != null)
        {
            bool Special(string text) => tokenizer.Encode(text, addBos: false).Length == 1;
            if (Special("<|start_header_id|>")) return new ChatTemplate(ChatFormat.Llama3);
            if (Special("<|im_start|>")) return new ChatTemplate(ChatFormat.ChatMl);
        }
        return new ChatTemplate(ChatFormat.Plain);
    }

    /// <summary>Recognises a family from the markers in its Jinja template; null when none matches.</summary>
    public static ChatFormat? FromJinja(string jinja) =>
        jinja.Contains("<|start_header_id|>") ? ChatFormat.Llama3
        : jinja.Contains("<|im_start|>") ? ChatFormat.ChatMl
        : jinja.Contains("<<SYS>>") ? ChatFormat.Llama2
        : jinja.Contains("[INST]") ? ChatFormat.Mistral
        : null;

    /// <summary>The prompt for <paramref name="messages"/>, ending where the assistant's reply begins.</summary>
    public string Render(IReadOnlyList<ChatTurn> messages)
    {
        foreach (var m in messages)
            if (m.Role is not ("system" or "user" or "assistant"))
                throw new RequestValidationException("messages", $"unknown role '{m.Role}'; expected system, user or assistant");
        var sb = new System.Text.StringBuilder();
        switch (Format)
        {
            case ChatFormat.Llama3:
                foreach (var m in messages) sb.Append($"<|start_header_id|>{m.Role}<|end_header_id|>\n\n{m.Content.Trim()}<|eot_id|>");
                sb.Append("<|start_header_id|>assistant<|end_header_id|>\n\n");
                break;
            case ChatFormat.ChatMl:
                foreach (var m in messages) sb.Append($"<|im_start|>{m.Role}\n{m.Content}<|im_end|>\n");
                sb.Append("<|im_start|>assistant\n");
                break;
            case ChatFormat.Llama2:
            case ChatFormat.Mistral:
            {
                // The system message goes into the first user turn (Llama 2 wraps it in <<SYS>>).
                string? system = messages.FirstOrDefault(m => m.Role == "system")?.Content;
                bool first = true;
                foreach (var m in messages.Where(m => m.Role != "system"))
                {
                    if (m.Role == "user")
                    {
                        string content = m.Content.Trim();
                        if (first && system != null)
                            content = Format == ChatFormat.Llama2 ? $"<<SYS>>\n{system.Trim()}\n<</SYS>>\n\n{content}" : $"{system.Trim()}\n\n{content}";
                        sb.Append($"[INST] {content} [/INST]");
                        first = false;
                    }
                    else sb.Append($" {m.Content.Trim()} ");
                }
                break;
            }
            default:
                foreach (var m in messages) sb.Append($"{m.Role}: {m.Content}\n");
                sb.Append("assistant:");
                break;
        }
        return sb.ToString();
    }
}
