// The library's public surface, checked against a baseline kept beside the project (src/Kernels.Runtime/PublicAPI.txt):
// a change to what a host can reference shows up as a diff in review, never by accident. Kernels, layouts and SIMD
// helpers are internal (the tools and tests see them through InternalsVisibleTo).
using System.Reflection;
using System.Text;
using Kernels.Runtime.Engine;

namespace Kernels.Tests.Architecture;

public sealed class PublicApiTests
{
    [Test]
    public void PublicSurfaceMatchesTheBaseline()
    {
        var actual = Surface(typeof(InferenceEngine).Assembly);
        string path = Path.Combine(TestPaths.RepoRoot(), "src", "Kernels.Runtime", "PublicAPI.txt");
        if (Environment.GetEnvironmentVariable("KERNELS_UPDATE_API_BASELINE") == "1")
        {
            File.WriteAllLines(path, actual);
            Assert.Ignore($"baseline rewritten: {path}");
        }
        Assert.That(File.Exists(path), Is.True, $"{path} is missing; run the tests once with KERNELS_UPDATE_API_BASELINE=1 to write it");
        var expected = File.ReadAllLines(path).Where(l => l.Length > 0).ToArray();
        var added = actual.Except(expected).ToArray();
        var removed = expected.Except(actual).ToArray();
        var message = new StringBuilder("the public API changed; if that is deliberate, rerun with KERNELS_UPDATE_API_BASELINE=1 and commit the baseline\n");
        foreach (var l in added) message.AppendLine("+ " + l);
        foreach (var l in removed) message.AppendLine("- " + l);
        Assert.That(added.Length + removed.Length, Is.Zero, message.ToString());
    }

    [Test]
    public void KernelsAndLayoutsAreNotPublic()
    {
        // The audit's examples: raw-pointer kernels and SIMD helpers were public. None may come back.
        var exported = typeof(InferenceEngine).Assembly.GetExportedTypes();
        var pointerMethods = exported.SelectMany(t => t.GetMethods(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly))
            .Where(m => m.ReturnType.IsPointer || m.GetParameters().Any(p => p.ParameterType.IsPointer || p.ParameterType.GetElementType()?.IsPointer == true))
            .Select(m => $"{m.DeclaringType!.FullName}.{m.Name}").ToArray();
        Assert.That(pointerMethods, Is.Empty, "public methods taking raw pointers");
        Assert.That(exported.Where(t => t.Namespace!.StartsWith("Kernels.Runtime.Backends.Cpu") && !t.Name.EndsWith("Options") && t.Name != "CpuBackend").Select(t => t.FullName), Is.Empty,
            "CPU kernels exported");
    }

    /// <summary>One line per public type and per public or protected member, sorted: what a host can compile against.</summary>
    internal static string[] Surface(Assembly assembly)
    {
        var lines = new List<string>();
        const BindingFlags flags = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        foreach (var t in assembly.GetExportedTypes())
        {
            string kind = t.IsEnum ? "enum" : t.IsInterface ? "interface" : t.IsValueType ? "struct" : typeof(Delegate).IsAssignableFrom(t) ? "delegate" : "class";
            string baseType = t.BaseType is { } b && b != typeof(object) && b != typeof(ValueType) && b != typeof(Enum) ? " : " + Name(b) : "";
            string interfaces = string.Join(", ", t.GetInterfaces().Select(Name).Order());
            lines.Add($"{kind} {Name(t)}{baseType}{(interfaces.Length > 0 ? " [" + interfaces + "]" : "")}");
            foreach (var m in t.GetMembers(flags))
            {
                bool visible = m switch
                {
                    MethodBase mb => mb.IsPublic || mb.IsFamily || mb.IsFamilyOrAssembly,
                    FieldInfo f => f.IsPublic || f.IsFamily || f.IsFamilyOrAssembly,
                    PropertyInfo p => p.GetAccessors(true).Any(a => a.IsPublic || a.IsFamily || a.IsFamilyOrAssembly),
                    EventInfo e => e.AddMethod is { } a && (a.IsPublic || a.IsFamily),
                    _ => false, // nested types are listed as types of their own
                };
                if (!visible) continue;
                if (m is MethodInfo { IsSpecialName: true }) continue; // property and event accessors: listed with the property
                if (t.IsEnum && m.Name == "value__") continue;
                lines.Add($"  {Name(t)}::{Member(m)}");
            }
        }
        return lines.Order(StringComparer.Ordinal).ToArray();
    }

    private static string Member(MemberInfo m) => m switch
    {
        ConstructorInfo c => $".ctor({Parameters(c)})",
        MethodInfo mi => $"{mi.Name}{(mi.IsGenericMethod ? "<" + string.Join(", ", mi.GetGenericArguments().Select(a => a.Name)) + ">" : "")}({Parameters(mi)}) : {Name(mi.ReturnType)}{(mi.IsStatic ? " static" : "")}",
        PropertyInfo p => $"{p.Name} : {Name(p.PropertyType)} {{{(p.GetMethod is { } g && (g.IsPublic || g.IsFamily) ? " get;" : "")}{(p.SetMethod is { } s && (s.IsPublic || s.IsFamily) ? (s.ReturnParameter.GetRequiredCustomModifiers().Any(x => x.Name == "IsExternalInit") ? " init;" : " set;") : "")} }}",
        FieldInfo f => $"{f.Name} : {Name(f.FieldType)}{(f.IsLiteral ? " const" : f.IsInitOnly ? " readonly" : "")}{(f.IsStatic && !f.IsLiteral ? " static" : "")}",
        EventInfo e => $"event {e.Name} : {Name(e.EventHandlerType!)}",
        _ => m.Name,
    };

    private static string Parameters(MethodBase m) => string.Join(", ", m.GetParameters().Select(p => (p.IsOut ? "out " : p.ParameterType.IsByRef ? "ref " : "") + Name(p.ParameterType) + (p.HasDefaultValue ? " = " + (p.DefaultValue ?? "null") : "")));

    private static string Name(Type t)
    {
        if (t.IsByRef) return Name(t.GetElementType()!);
        if (t.IsGenericParameter) return t.Name;
        if (t.IsArray) return Name(t.GetElementType()!) + "[" + new string(',', t.GetArrayRank() - 1) + "]";
        if (t.IsPointer) return Name(t.GetElementType()!) + "*";
        string name = t.IsNested ? Name(t.DeclaringType!) + "." + t.Name : (t.Namespace is { } ns ? ns + "." : "") + t.Name;
        if (!t.IsGenericType) return name;
        int tick = name.IndexOf('`');
        return (tick >= 0 ? name[..tick] : name) + "<" + string.Join(", ", t.GetGenericArguments().Select(Name)) + ">";
    }
}
