// A model split across shards with model.safetensors.index.json loads and computes exactly what the single file does.
using System.Text.Json;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Models;

namespace Kernels.Tests.Models;

public class ShardedSafetensorsTests
{
    [Test]
    public void ShardedModelGivesTheSameLogitsAsTheSingleFile()
    {
        string source = TestPaths.Golden("tiny-llama-bf16");
        string dir = Path.Combine(Path.GetTempPath(), "kernels-shards-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            File.Copy(Path.Combine(source, "config.json"), Path.Combine(dir, "config.json"));
            var map = new Dictionary<string, string>();
            using (var single = SafetensorsFile.Open(Path.Combine(source, "model.safetensors")))
            {
                var names = single.Entries.Keys.OrderBy(n => n).ToArray();
                for (int shard = 0; shard < 2; shard++)
                {
                    string file = $"model-0000{shard + 1}-of-00002.safetensors";
                    var part = names.Where((_, i) => i % 2 == shard).ToArray();
                    SafetensorsWriter.Write(Path.Combine(dir, file), part.Select(n => new SafetensorsWriter.Tensor(
                        n, single.Entries[n].DType, single.Entries[n].Shape, single.RawBytes(n).ToArray())).ToArray());
                    foreach (var n in part) map[n] = file;
                }
            }
            File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"), JsonSerializer.Serialize(new { metadata = new { }, weight_map = map }));

            int[] ids = [1, 7, 42, 300, 5];
            float[] Run(string path)
            {
                using var model = ModelLoader.Load(path);
                using var backend = new CpuBackend(model);
                using var cache = backend.CreateCache();
                return backend.Forward([new SequenceStep(cache, ids, AllLogits: true)])[0];
            }
            Assert.That(Run(dir), Is.EqualTo(Run(source)));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
