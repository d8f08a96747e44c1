// config.json reading (RoPE settings at the top level or under rope_parameters) and RoPE frequency scaling.
using System.Text.Json.Nodes;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Tests.Models;

public class ConfigTests
{
    private static ModelConfig Read(JsonObject json)
    {
        string dir = Path.Combine(Path.GetTempPath(), "kernels-config-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            File.WriteAllText(Path.Combine(dir, "config.json"), json.ToJsonString());
            return HfConfigReader.Read(Path.Combine(dir, "config.json"));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    private static JsonObject Llama31() => new()
    {
        ["architectures"] = new JsonArray("LlamaForCausalLM"),
        ["hidden_size"] = 4096, ["intermediate_size"] = 14336, ["num_hidden_layers"] = 32,
        ["num_attention_heads"] = 32, ["num_key_value_heads"] = 8, ["vocab_size"] = 128256,
        ["max_position_embeddings"] = 131072, ["rms_norm_eps"] = 1e-5,
    };

    private static JsonObject Llama3Scaling() => new()
    {
        ["rope_type"] = "llama3", ["factor"] = 8.0, ["low_freq_factor"] = 1.0, ["high_freq_factor"] = 4.0,
        ["original_max_position_embeddings"] = 8192,
    };

    [Test]
    public void RopeSettingsAreReadFromTheTopLevel()
    {
        var json = Llama31();
        json["rope_theta"] = 500000.0;
        json["rope_scaling"] = Llama3Scaling();
        var c = Read(json);
        Assert.That(c.RopeTheta, Is.EqualTo(500000.0));
        Assert.That(c.RopeScaling, Is.EqualTo(new RopeScaling(RopeScalingType.Llama3, 8, 1, 4, 8192)));
        Assert.That(c.HeadDim, Is.EqualTo(128));
    }

    [Test]
    public void RopeSettingsAreReadFromRopeParameters()
    {
        var json = Llama31();
        var p = Llama3Scaling();
        p["rope_theta"] = 500000.0;
        json["rope_parameters"] = p;
        var c = Read(json);
        Assert.That(c.RopeTheta, Is.EqualTo(500000.0));
        Assert.That(c.RopeScaling.Type, Is.EqualTo(RopeScalingType.Llama3));
    }

    [Test]
    public void Llama3ScalingKeepsHighFrequenciesDividesLowOnesAndBlendsBetween()
    {
        var json = Llama31();
        json["rope_theta"] = 500000.0;
        json["rope_scaling"] = Llama3Scaling();
        var scaled = RopeFrequencies.Compute(Read(json));
        json.Remove("rope_scaling");
        var plain = RopeFrequencies.Compute(Read(json));
        Assert.That(scaled, Has.Length.EqualTo(64));
        for (int i = 0; i < 64; i++)
        {
            double wavelen = 2 * Math.PI / plain[i];
            if (wavelen < 8192 / 4.0) Assert.That(scaled[i], Is.EqualTo(plain[i]), $"high frequency {i} unchanged");
            else if (wavelen > 8192 / 1.0) Assert.That(scaled[i], Is.EqualTo(plain[i] / 8).Within(1e-6).Percent, $"low frequency {i} / factor");
            else
            {
                double smooth = (8192 / wavelen - 1) / (4 - 1);
                Assert.That(scaled[i], Is.EqualTo((1 - smooth) * plain[i] / 8 + smooth * plain[i]).Within(1e-5).Percent, $"medium frequency {i}");
            }
        }
    }

    [Test]
    public void Qwen2DefaultsToQkvBiasAndTiedEmbeddingsFromItsConfig()
    {
        var c = HfConfigReader.Read(Path.Combine(TestPaths.Golden("tiny-qwen2-f16"), "config.json"));
        Assert.That(c.Architecture, Is.EqualTo(ModelArchitecture.Qwen2));
        Assert.That(c.AttentionBias && c.TieWordEmbeddings);
        Assert.That(c.RopeTheta, Is.EqualTo(1e6));
        Assert.That(c.SlidingWindow, Is.Null);
    }

    [Test]
    public void UnsupportedRopeScalingIsAnError()
    {
        var json = Llama31();
        json["rope_scaling"] = new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0 };
        var e = Assert.Throws<ModelFormatException>(() => Read(json));
        Assert.That(e!.Message, Does.Contain("yarn"));
    }

    [Test]
    public void HeadCountsThatDoNotDivideAreAnError()
    {
        var json = Llama31();
        json["num_key_value_heads"] = 5;
        Assert.That(Assert.Throws<ModelFormatException>(() => Read(json))!.Message, Does.Contain("num_key_value_heads"));
    }
}
