// The Aho-Corasick stop matcher against the matcher it replaced (kept here as the reference): the same releases,
// stops and hold-backs on thousands of random stop sets and random streamings of random text, and on many strings.
using Kernels.Runtime.Engine;

namespace Kernels.Tests.Engine;

public class StopStringsTests
{
    /// <summary>The previous StopStringMatcher, verbatim: per push, IndexOf of every stop string, then the longest held-back tail.</summary>
    private sealed class ReferenceMatcher(IReadOnlyList<string> stops)
    {
        private readonly IReadOnlyList<string> _stops = stops.Where(s => s.Length > 0).ToArray();
        private string _pending = "";

        public (string Release, bool Stopped) Push(string text)
        {
            _pending += text;
            if (_stops.Count == 0)
            {
                var all = _pending;
                _pending = "";
                return (all, false);
            }
            int first = -1;
            foreach (var s in _stops)
            {
                int i = _pending.IndexOf(s, StringComparison.Ordinal);
                if (i >= 0 && (first < 0 || i < first)) first = i;
            }
            if (first >= 0)
            {
                var before = _pending[..first];
                _pending = "";
                return (before, true);
            }
            int hold = 0;
            foreach (var s in _stops)
                for (int len = Math.Min(s.Length - 1, _pending.Length); len > hold; len--)
                    if (_pending.AsSpan(_pending.Length - len).SequenceEqual(s.AsSpan(0, len))) { hold = len; break; }
            var release = _pending[..^hold];
            _pending = _pending[^hold..];
            return (release, false);
        }

        public string Flush()
        {
            var rest = _pending;
            _pending = "";
            return rest;
        }
    }

    // A small alphabet makes overlaps, shared prefixes and stop strings inside stop strings common; the surrogate
    // pair and the newline are what real stop strings hold.
    private static readonly string[] Alphabet = ["a", "b", "c", " ", "\n", "\U0001F600"];

    private static string RandomText(Random rng, int maxPieces)
    {
        int n = rng.Next(maxPieces + 1);
        return string.Concat(Enumerable.Range(0, n).Select(_ => Alphabet[rng.Next(Alphabet.Length)]));
    }

    [Test]
    public void SameResultsAsTheReferenceOnRandomCases([Values(1, 2, 3)] int seed)
    {
        var rng = new Random(seed);
        int stops = 0;
        for (int c = 0; c < 4000; c++)
        {
            var strings = Enumerable.Range(0, rng.Next(0, 7)).Select(_ => RandomText(rng, 5)).ToList();
            var shared = new StopStrings(strings);
            // Two samples of one request walk the same automaton; each must match the reference on its own text.
            var samples = Enumerable.Range(0, 2).Select(_ => (Mine: new StopStringMatcher(shared), Reference: new ReferenceMatcher(strings))).ToArray();
            for (int push = 0, pushes = rng.Next(1, 12); push < pushes; push++)
            {
                foreach (var (mine, reference) in samples)
                {
                    string piece = RandomText(rng, 4); // empty pieces too (a token that completes no character)
                    var expected = reference.Push(piece);
                    var actual = mine.Push(piece);
                    Assert.That(actual, Is.EqualTo(expected), $"seed {seed} case {c}: stops [{string.Join(", ", strings.Select(Show))}], push {push} '{Show(piece)}'");
                    if (expected.Stopped) stops++;
                }
            }
            foreach (var (mine, reference) in samples)
                Assert.That(mine.Flush(), Is.EqualTo(reference.Flush()), $"seed {seed} case {c}: flush");
        }
        Assert.That(stops, Is.GreaterThan(1000), "the random cases do hit stop strings");
    }

    [Test]
    public void ManyStopStringsGiveTheReferenceResults()
    {
        var rng = new Random(7);
        var strings = Enumerable.Range(0, 20_000).Select(i => $"w{i}x{rng.Next(1000)}").Append("the end").ToList();
        var mine = new StopStringMatcher(new StopStrings(strings));
        var reference = new ReferenceMatcher(strings);
        foreach (string piece in new[] { "Once w1", "2 upon w1", "x", "9 a time, th", "e e", "nd of it" })
            Assert.That(mine.Push(piece), Is.EqualTo(reference.Push(piece)), piece);
    }

    [Test]
    public void HeldBackTextIsTheLongestTailThatCanStillGrowIntoAStop()
    {
        var m = new StopStringMatcher(new StopStrings(["abcd", "bcx", "cy"]));
        Assert.That(m.Push("zzabc"), Is.EqualTo(("zz", false)));   // "abc" may become "abcd"
        Assert.That(m.Push("x"), Is.EqualTo(("a", true)));         // "bcx" ends here and starts at the earliest position
        var n = new StopStringMatcher(new StopStrings(["abcd", "bcx", "cy"]));
        n.Push("zzabc");
        Assert.That(n.Push("q"), Is.EqualTo(("abcq", false)));
        Assert.That(n.Flush(), Is.EqualTo(""));
    }

    private static string Show(string s) => s.Replace("\n", "\\n");
}
