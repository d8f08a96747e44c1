// A model ready to run: its config, weights (owning the mapped files) and, when one was found, its tokenizer.
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Tokenization;

namespace Kernels.Runtime.Models;

public enum ModelFormat
{
    HuggingFace,
    Gguf,
    Llama2c,
    Synthetic,
}

public sealed class LoadedModel : IDisposable
{
    private readonly Lazy<ITextTokenizer> _tokenizer;

    public string Source { get; }
    public ModelFormat Format { get; }
    public ModelConfig Config { get; }
    internal ModelWeights Weights { get; }

    /// <summary>The Jinja chat template the model's files carry (tokenizer_config.json, GGUF tokenizer.chat_template), if any.</summary>
    public string? ChatTemplateText { get; init; }

    internal LoadedModel(string source, ModelFormat format, ModelConfig config, ModelWeights weights, Func<ITextTokenizer> tokenizer)
    {
        Source = source;
        Format = format;
        Config = config;
        Weights = weights;
        // Loaded on first use: `kernels logits --ids` needs no tokenizer, and a missing one is reported only when needed.
        _tokenizer = new Lazy<ITextTokenizer>(() =>
        {
            var t = tokenizer();
            if (t.VocabSize > config.VocabSize)
                throw new ModelFormatException(source, $"tokenizer has {t.VocabSize} tokens but the model's vocabulary is {config.VocabSize}");
            return t;
        }, LazyThreadSafetyMode.ExecutionAndPublication);
    }

    /// <summary>The tokenizer; throws <see cref="ModelFormatException"/> naming what is missing or wrong.</summary>
    public ITextTokenizer Tokenizer => _tokenizer.Value;

    public void Dispose() => Weights.Dispose();
}
