// Forged GGUF headers (offsets, counts, shapes chosen to overflow) end in ModelFormatException, never a crash.
using System.Text;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Tests.Models;

public class CorruptGgufTests
{
    private static string Write(Action<BinaryWriter> body)
    {
        string path = Path.Combine(Path.GetTempPath(), $"kernels-corrupt-{Guid.NewGuid():N}.gguf");
        using (var w = new BinaryWriter(File.Create(path)))
        {
            w.Write(Encoding.ASCII.GetBytes("GGUF"));
            w.Write(3u);
            body(w);
            w.Write(new byte[256]); // some data after the header
        }
        return path;
    }

    private static void Str(BinaryWriter w, string s)
    {
        w.Write((ulong)Encoding.UTF8.GetByteCount(s));
        w.Write(Encoding.UTF8.GetBytes(s));
    }

    private static void AssertRejected(string path, string fragment)
    {
        try
        {
            var e = Assert.Throws<ModelFormatException>(() => GgufFile.Open(path).Dispose());
            Assert.That(e!.Message, Does.Contain(path).And.Contain(fragment));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Test]
    public void TensorOffsetBeyondTheFile()
    {
        AssertRejected(Write(w =>
        {
            w.Write(1UL); w.Write(0UL);
            Str(w, "blk.0.attn_q.weight"); w.Write(2u); w.Write(4UL); w.Write(4UL); w.Write(0u);
            w.Write(0x8000000000000000UL);
        }), "blk.0.attn_q.weight");
    }

    [Test]
    public void TensorShapeWhoseByteCountOverflows()
    {
        AssertRejected(Write(w =>
        {
            w.Write(1UL); w.Write(0UL);
            Str(w, "token_embd.weight"); w.Write(2u); w.Write(1UL << 40); w.Write(1UL << 40); w.Write(0u);
            w.Write(0UL);
        }), "corrupt GGUF");
    }

    [Test]
    public void MetadataArrayCountLargerThanTheFile()
    {
        AssertRejected(Write(w =>
        {
            w.Write(0UL); w.Write(1UL);
            Str(w, "tokenizer.ggml.scores"); w.Write(9u); w.Write(6u); w.Write(3_000_000_000UL);
        }), "cannot fit");
    }

    [Test]
    public void AlignmentThatIsNotAnInteger()
    {
        AssertRejected(Write(w =>
        {
            w.Write(0UL); w.Write(1UL);
            Str(w, "general.alignment"); w.Write(8u); Str(w, "x");
        }), "general.alignment");
    }
}
