// Which layers of Kernels.Runtime use which: read from the compiled assemblies' metadata and IL, plus the `using`
// directives of their sources (a constant or a nameof leaves no trace in IL).
using System.Collections.Immutable;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;
using System.Text.RegularExpressions;

namespace Kernels.Tests.Architecture;

/// <summary>
/// A dependency between two layers (the first segment after <c>Kernels.Runtime.</c>: <c>Backends.Cpu</c> belongs to
/// <c>Backends</c>), with the first piece of evidence found for it.
/// </summary>
public sealed record LayerEdge(string From, string To, string Evidence)
{
    /// <summary>Every reference found for this edge (Evidence is the first, in order of discovery).</summary>
    public SortedSet<string> AllEvidence { get; } = new(StringComparer.Ordinal) { Evidence };
}

/// <summary>
/// The layer graph of the assemblies added (Kernels.Runtime and Kernels.Runtime.Ilgpu, whose namespaces share one
/// root). A type uses another when its base type, interfaces, generic constraints, field, method or local signatures,
/// custom attributes (typeof arguments included) or any token in its method bodies (calls, field accesses, newobj,
/// ldtoken, casts, ...) name it, in its own assembly or another. Compiler-generated nested types (lambdas' closures,
/// iterator and async state machines) count as their outermost declaring type.
/// </summary>
public sealed partial class NamespaceGraph
{
    /// <summary>The namespace whose first-level children are the layers (<c>Kernels.Runtime</c>).</summary>
    public string RootNamespace { get; }

    public NamespaceGraph(string rootNamespace) => RootNamespace = rootNamespace;

    /// <summary>Every edge between two different layers, keyed (from, to), with one example each.</summary>
    public IReadOnlyDictionary<(string From, string To), LayerEdge> Edges => _edges;

    /// <summary>Types of the root namespace that belong to no layer (<c>Kernels.Runtime.Foo</c>, not <c>Kernels.Runtime.X.Foo</c>).</summary>
    public IReadOnlyList<string> TypesOutsideLayers => _outside;

    /// <summary>Every layer that holds at least one type.</summary>
    public IReadOnlyCollection<string> Layers => _layers;

    private readonly Dictionary<(string, string), LayerEdge> _edges = new();
    private readonly List<string> _outside = [];
    private readonly SortedSet<string> _layers = new(StringComparer.Ordinal);

    /// <summary>Adds a dependency unless it stays inside one layer; the first evidence for an edge is kept.</summary>
    public void Add(string fromLayer, string toLayer, string evidence)
    {
        if (fromLayer == toLayer) return;
        if (_edges.TryGetValue((fromLayer, toLayer), out var edge)) edge.AllEvidence.Add(evidence);
        else _edges.Add((fromLayer, toLayer), new LayerEdge(fromLayer, toLayer, evidence));
    }

    /// <summary>The layer of a namespace under <see cref="RootNamespace"/>, or null for any other namespace.</summary>
    public string? LayerOf(string ns)
    {
        if (!ns.StartsWith(RootNamespace + ".", StringComparison.Ordinal))
            return null;
        string rest = ns[(RootNamespace.Length + 1)..];
        int dot = rest.IndexOf('.');
        return dot < 0 ? rest : rest[..dot];
    }

    // ---------------------------------------------------------------- cycles

    /// <summary>
    /// Every strongly connected component of more than one layer, each as one cycle through it, printed with the
    /// evidence for each step (Tarjan's algorithm, then a shortest cycle inside the component).
    /// </summary>
    public IReadOnlyList<IReadOnlyList<LayerEdge>> Cycles()
    {
        var nodes = _edges.Keys.SelectMany(k => new[] { k.Item1, k.Item2 }).Distinct().Order(StringComparer.Ordinal).ToList();
        var successors = nodes.ToDictionary(n => n, n => _edges.Keys.Where(k => k.Item1 == n).Select(k => k.Item2)
                                                               .Order(StringComparer.Ordinal).ToList());
        var cycles = new List<IReadOnlyList<LayerEdge>>();
        foreach (var component in StronglyConnected(nodes, successors).Where(c => c.Count > 1))
        {
            // Shortest cycle through the component's first node, by breadth-first search inside the component.
            string start = component.Min(StringComparer.Ordinal)!;
            var parent = new Dictionary<string, string>();
            var queue = new Queue<string>([start]);
            List<string>? path = null;
            while (queue.Count > 0 && path is null)
            {
                string n = queue.Dequeue();
                foreach (string s in successors[n].Where(component.Contains))
                {
                    if (s == start) { path = Unwind(parent, n, start); break; }
                    if (parent.TryAdd(s, n)) queue.Enqueue(s);
                }
            }
            path!.Add(start);
            cycles.Add(path.Zip(path.Skip(1), (a, b) => _edges[(a, b)]).ToList());
        }
        return cycles;
    }

    private static List<string> Unwind(Dictionary<string, string> parent, string last, string start)
    {
        var path = new List<string> { last };
        while (path[^1] != start) path.Add(parent[path[^1]]);
        path.Reverse();
        return path;
    }

    private static List<HashSet<string>> StronglyConnected(List<string> nodes, Dictionary<string, List<string>> successors)
    {
        var index = new Dictionary<string, int>();
        var low = new Dictionary<string, int>();
        var stack = new Stack<string>();
        var onStack = new HashSet<string>();
        var result = new List<HashSet<string>>();
        void Visit(string v)
        {
            index[v] = low[v] = index.Count;
            stack.Push(v); onStack.Add(v);
            foreach (string w in successors[v])
            {
                if (!index.ContainsKey(w)) { Visit(w); low[v] = Math.Min(low[v], low[w]); }
                else if (onStack.Contains(w)) low[v] = Math.Min(low[v], index[w]);
            }
            if (low[v] != index[v]) return;
            var component = new HashSet<string>();
            string x;
            do { x = stack.Pop(); onStack.Remove(x); component.Add(x); } while (x != v);
            result.Add(component);
        }
        foreach (string n in nodes)
            if (!index.ContainsKey(n)) Visit(n);
        return result;
    }

    /// <summary>One line per edge with its first reference and how many more there are.</summary>
    public static string Describe(IEnumerable<LayerEdge> edges) =>
        string.Join("\n", edges.Select(e => $"  {e.From} -> {e.To}   ({e.Evidence}"
                                             + (e.AllEvidence.Count > 1 ? $"; {e.AllEvidence.Count - 1} more" : "") + ")"));

    // ---------------------------------------------------------------- sources: using directives

    [GeneratedRegex(@"^[ \t]*(?:global\s+)?using\s+(?:static\s+)?(?:\w+\s*=\s*)?([\w.]+)\s*;", RegexOptions.Multiline)]
    private static partial Regex UsingDirective();

    [GeneratedRegex(@"^\s*namespace\s+([\w.]+)", RegexOptions.Multiline)]
    private static partial Regex NamespaceDeclaration();

    /// <summary>Adds an edge for each <c>using Root.X...</c> in a file of another layer X.</summary>
    public void AddUsingDirectives(string sourceRoot)
    {
        foreach (string file in Directory.EnumerateFiles(sourceRoot, "*.cs", SearchOption.AllDirectories)
                                         .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}")
                                                  && !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}")))
        {
            string text = File.ReadAllText(file);
            var ns = NamespaceDeclaration().Match(text);
            string? from = ns.Success ? LayerOf(ns.Groups[1].Value) : null;
            if (from is null) continue;
            foreach (Match u in UsingDirective().Matches(text))
            {
                string target = u.Groups[1].Value;
                if (LayerOf(target) is not { } to) continue;
                int line = text.AsSpan(0, u.Groups[1].Index).Count('\n') + 1;
                Add(from, to, $"{Path.GetRelativePath(sourceRoot, file)}:{line}: using {target}");
            }
        }
    }

    // ---------------------------------------------------------------- assembly: metadata and IL

    /// <summary>Adds the dependencies between the layers of <see cref="RootNamespace"/> in the assembly at <paramref name="path"/>.</summary>
    public void AddAssembly(string path)
    {
        using var stream = File.OpenRead(path);
        using var pe = new PEReader(stream);
        new AssemblyScanner(pe.GetMetadataReader(), pe, this).Run();
    }

    /// <summary>The name and namespace of the outermost type declaring <paramref name="handle"/> (itself when not nested).</summary>
    private static (string Name, string Namespace) OutermostOf(MetadataReader reader, TypeDefinitionHandle handle)
    {
        var def = reader.GetTypeDefinition(handle);
        while (!def.GetDeclaringType().IsNil)
            def = reader.GetTypeDefinition(def.GetDeclaringType());
        return (reader.GetString(def.Name), reader.GetString(def.Namespace));
    }

    /// <summary>The same for a reference to another assembly's type (a nested one is scoped by its declaring type).</summary>
    private static (string Name, string Namespace) OutermostOf(MetadataReader reader, TypeReferenceHandle handle)
    {
        var t = reader.GetTypeReference(handle);
        while (t.ResolutionScope.Kind == HandleKind.TypeReference)
            t = reader.GetTypeReference((TypeReferenceHandle)t.ResolutionScope);
        return (reader.GetString(t.Name), reader.GetString(t.Namespace));
    }

    private sealed class AssemblyScanner(MetadataReader reader, PEReader pe, NamespaceGraph graph)
    {
        private readonly HashSet<(string Name, string Namespace)> _found = [];
        private readonly SignatureCollector _signatures = new(reader);

        public void Run()
        {
            foreach (var handle in reader.TypeDefinitions)
            {
                var (name, ns) = Outermost(handle);
                string? layer = graph.LayerOf(ns);
                if (layer is null)
                {
                    if (ns == graph.RootNamespace) graph._outside.Add($"{ns}.{name}");
                    continue;
                }
                graph._layers.Add(layer);
                _found.Clear();
                CollectType(handle);
                foreach (var (usedName, usedNs) in _found)
                {
                    if (graph.LayerOf(usedNs) is { } usedLayer)
                        graph.Add(layer, usedLayer, $"{ns}.{name}{NestedSuffix(handle)} uses {usedNs}.{usedName}");
                }
            }
        }

        private string NestedSuffix(TypeDefinitionHandle handle)
        {
            var def = reader.GetTypeDefinition(handle);
            return def.GetDeclaringType().IsNil ? "" : "+" + reader.GetString(def.Name);
        }

        private (string Name, string Namespace) Outermost(TypeDefinitionHandle handle) => OutermostOf(reader, handle);

        private void CollectType(TypeDefinitionHandle handle)
        {
            var def = reader.GetTypeDefinition(handle);
            Entity(def.BaseType);
            foreach (var i in def.GetInterfaceImplementations())
                Entity(reader.GetInterfaceImplementation(i).Interface);
            GenericParameters(def.GetGenericParameters());
            Attributes(def.GetCustomAttributes());
            foreach (var f in def.GetFields())
            {
                var field = reader.GetFieldDefinition(f);
                field.DecodeSignature(_signatures, null);
                Attributes(field.GetCustomAttributes());
            }
            foreach (var p in def.GetProperties())
                Attributes(reader.GetPropertyDefinition(p).GetCustomAttributes());
            foreach (var e in def.GetEvents())
                Entity(reader.GetEventDefinition(e).Type);
            foreach (var m in def.GetMethods())
                Method(m);
            _signatures.Drain(_found);
        }

        private void Method(MethodDefinitionHandle handle)
        {
            var method = reader.GetMethodDefinition(handle);
            method.DecodeSignature(_signatures, null);
            GenericParameters(method.GetGenericParameters());
            Attributes(method.GetCustomAttributes());
            foreach (var p in method.GetParameters())
                Attributes(reader.GetParameter(p).GetCustomAttributes());
            if (method.RelativeVirtualAddress == 0)
                return;
            var body = pe.GetMethodBody(method.RelativeVirtualAddress);
            if (!body.LocalSignature.IsNil)
                reader.GetStandaloneSignature(body.LocalSignature).DecodeLocalSignature(_signatures, null);
            foreach (var region in body.ExceptionRegions)
                Entity(region.CatchType);
            var il = body.GetILReader();
            while (il.RemainingBytes > 0)
            {
                var op = ReadOpCode(ref il);
                if (op == ILOpCode.Switch) { il.Offset += 4 * il.ReadInt32(); continue; }
                int size = OperandSize(op);
                if (size == 4 && HasToken(op))
                {
                    int token = il.ReadInt32();
                    if (op != ILOpCode.Ldstr) Entity(MetadataTokens.EntityHandle(token));
                }
                else il.Offset += size;
            }
        }

        private void GenericParameters(GenericParameterHandleCollection parameters)
        {
            foreach (var g in parameters)
                foreach (var c in reader.GetGenericParameter(g).GetConstraints())
                    Entity(reader.GetGenericParameterConstraint(c).Type);
        }

        private void Attributes(CustomAttributeHandleCollection attributes)
        {
            foreach (var a in attributes)
            {
                var attribute = reader.GetCustomAttribute(a);
                Entity(attribute.Constructor);
                try { attribute.DecodeValue(_signatures); }
                catch (BadImageFormatException) { } // an enum of another assembly cannot be sized here; not ours to check
                catch (InvalidOperationException) { }
            }
        }

        private void Entity(EntityHandle handle)
        {
            if (handle.IsNil) return;
            switch (handle.Kind)
            {
                case HandleKind.TypeDefinition:
                    _found.Add(Outermost((TypeDefinitionHandle)handle));
                    break;
                case HandleKind.TypeReference: // a type of another assembly (Kernels.Runtime's, seen from Kernels.Runtime.Ilgpu)
                    _found.Add(OutermostOf(reader, (TypeReferenceHandle)handle));
                    break;
                case HandleKind.TypeSpecification:
                    reader.GetTypeSpecification((TypeSpecificationHandle)handle).DecodeSignature(_signatures, null);
                    break;
                case HandleKind.MethodDefinition:
                    _found.Add(Outermost(reader.GetMethodDefinition((MethodDefinitionHandle)handle).GetDeclaringType()));
                    break;
                case HandleKind.FieldDefinition:
                    _found.Add(Outermost(reader.GetFieldDefinition((FieldDefinitionHandle)handle).GetDeclaringType()));
                    break;
                case HandleKind.MemberReference:
                    var member = reader.GetMemberReference((MemberReferenceHandle)handle);
                    Entity(member.Parent);
                    if (member.GetKind() == MemberReferenceKind.Method) member.DecodeMethodSignature(_signatures, null);
                    else member.DecodeFieldSignature(_signatures, null);
                    break;
                case HandleKind.MethodSpecification:
                    var spec = reader.GetMethodSpecification((MethodSpecificationHandle)handle);
                    Entity(spec.Method);
                    spec.DecodeSignature(_signatures, null);
                    break;
                case HandleKind.StandaloneSignature:
                    var sig = reader.GetStandaloneSignature((StandaloneSignatureHandle)handle);
                    if (sig.GetKind() == StandaloneSignatureKind.Method) sig.DecodeMethodSignature(_signatures, null);
                    else sig.DecodeLocalSignature(_signatures, null);
                    break;
            }
            _signatures.Drain(_found);
        }

        private static ILOpCode ReadOpCode(ref BlobReader il)
        {
            byte b = il.ReadByte();
            return b == 0xFE ? (ILOpCode)(0xFE00 | il.ReadByte()) : (ILOpCode)b;
        }

        // Operand sizes from ECMA-335 Partition III; switch (a count, then the targets) is read by the caller.
        private static int OperandSize(ILOpCode op)
        {
            if (op.IsBranch()) return op.GetBranchOperandSize();
            switch (op)
            {
                case ILOpCode.Ldarg_s: case ILOpCode.Ldarga_s: case ILOpCode.Starg_s:
                case ILOpCode.Ldloc_s: case ILOpCode.Ldloca_s: case ILOpCode.Stloc_s:
                case ILOpCode.Ldc_i4_s: case ILOpCode.Unaligned: case (ILOpCode)0xFE19: // no. (absent from ILOpCode)
                    return 1;
                case ILOpCode.Ldarg: case ILOpCode.Ldarga: case ILOpCode.Starg:
                case ILOpCode.Ldloc: case ILOpCode.Ldloca: case ILOpCode.Stloc:
                    return 2;
                case ILOpCode.Ldc_i4: case ILOpCode.Ldc_r4:
                    return 4;
                case ILOpCode.Ldc_i8: case ILOpCode.Ldc_r8:
                    return 8;
                default:
                    return HasToken(op) ? 4 : 0;
            }
        }

        private static bool HasToken(ILOpCode op) => op switch
        {
            ILOpCode.Jmp or ILOpCode.Call or ILOpCode.Calli or ILOpCode.Callvirt or ILOpCode.Cpobj or ILOpCode.Ldobj
                or ILOpCode.Ldstr or ILOpCode.Newobj or ILOpCode.Castclass or ILOpCode.Isinst or ILOpCode.Unbox
                or ILOpCode.Ldfld or ILOpCode.Ldflda or ILOpCode.Stfld or ILOpCode.Ldsfld or ILOpCode.Ldsflda
                or ILOpCode.Stsfld or ILOpCode.Stobj or ILOpCode.Box or ILOpCode.Newarr or ILOpCode.Ldelema
                or ILOpCode.Ldelem or ILOpCode.Stelem or ILOpCode.Unbox_any or ILOpCode.Refanyval or ILOpCode.Mkrefany
                or ILOpCode.Ldtoken or ILOpCode.Ldftn or ILOpCode.Ldvirtftn or ILOpCode.Initobj or ILOpCode.Constrained
                or ILOpCode.Sizeof => true,
            _ => false,
        };
    }

    /// <summary>
    /// Decodes signatures (and custom attribute values) for their side effect: every type they name (this assembly's or
    /// another's) is recorded as its outermost type. A decoded type is its full name, which custom attribute decoding needs to recognise
    /// System.Type arguments and to size enums.
    /// </summary>
    private sealed class SignatureCollector(MetadataReader reader)
        : ISignatureTypeProvider<string, object?>, ICustomAttributeTypeProvider<string>
    {
        private readonly List<(string Name, string Namespace)> _pending = [];
        private readonly Dictionary<string, TypeDefinitionHandle> _byFullName =
            reader.TypeDefinitions.ToDictionary(h => FullName(reader, h), h => h);

        private static string FullName(MetadataReader r, TypeDefinitionHandle h)
        {
            var d = r.GetTypeDefinition(h);
            if (!d.GetDeclaringType().IsNil) return FullName(r, d.GetDeclaringType()) + "+" + r.GetString(d.Name);
            string ns = r.GetString(d.Namespace);
            return ns.Length == 0 ? r.GetString(d.Name) : ns + "." + r.GetString(d.Name);
        }

        private static string FullName(MetadataReader r, TypeReferenceHandle h)
        {
            var t = r.GetTypeReference(h);
            if (t.ResolutionScope.Kind == HandleKind.TypeReference)
                return FullName(r, (TypeReferenceHandle)t.ResolutionScope) + "+" + r.GetString(t.Name);
            string ns = r.GetString(t.Namespace);
            return ns.Length == 0 ? r.GetString(t.Name) : ns + "." + r.GetString(t.Name);
        }

        public void Drain(HashSet<(string Name, string Namespace)> into)
        {
            into.UnionWith(_pending);
            _pending.Clear();
        }

        public string GetTypeFromDefinition(MetadataReader r, TypeDefinitionHandle handle, byte rawTypeKind)
        {
            _pending.Add(OutermostOf(r, handle));
            return FullName(r, handle);
        }

        public string GetTypeFromReference(MetadataReader r, TypeReferenceHandle handle, byte rawTypeKind)
        {
            _pending.Add(OutermostOf(r, handle));
            return FullName(r, handle);
        }

        public string GetTypeFromSpecification(MetadataReader r, object? context, TypeSpecificationHandle handle, byte rawTypeKind) =>
            r.GetTypeSpecification(handle).DecodeSignature(this, context);

        // typeof(X) in an attribute argument is stored as X's serialized name ("Ns.Outer+Inner, Assembly").
        public string GetTypeFromSerializedName(string name)
        {
            string plain = name.Split(',')[0].Split('[')[0].Trim();
            if (_byFullName.TryGetValue(plain, out var handle)) _pending.Add(OutermostOf(reader, handle));
            else if (plain.Split('+')[0] is var outer && outer.LastIndexOf('.') is var dot and > 0)
                _pending.Add((outer[(dot + 1)..], outer[..dot])); // a type of another assembly
            return plain;
        }

        public bool IsSystemType(string type) => type == "System.Type";
        public string GetSystemType() => "System.Type";

        // An enum argument is read with its underlying type: ours from its value__ field; another assembly's cannot be
        // resolved here and is taken as int (the caller gives up on an attribute it then misreads).
        public PrimitiveTypeCode GetUnderlyingEnumType(string type)
        {
            if (_byFullName.TryGetValue(type, out var handle))
                foreach (var f in reader.GetTypeDefinition(handle).GetFields())
                {
                    var field = reader.GetFieldDefinition(f);
                    if (reader.GetString(field.Name) == "value__"
                        && Enum.TryParse<PrimitiveTypeCode>(field.DecodeSignature(this, null), out var code))
                        return code;
                }
            return PrimitiveTypeCode.Int32;
        }

        public string GetPrimitiveType(PrimitiveTypeCode typeCode) => typeCode.ToString();
        public string GetSZArrayType(string elementType) => elementType + "[]";
        public string GetArrayType(string elementType, ArrayShape shape) => elementType + "[,]";
        public string GetByReferenceType(string elementType) => elementType + "&";
        public string GetPointerType(string elementType) => elementType + "*";
        public string GetPinnedType(string elementType) => elementType;
        public string GetGenericInstantiation(string genericType, ImmutableArray<string> typeArguments) => genericType;
        public string GetGenericMethodParameter(object? context, int index) => "!!" + index;
        public string GetGenericTypeParameter(object? context, int index) => "!" + index;
        public string GetFunctionPointerType(MethodSignature<string> signature) => "method*";
        public string GetModifiedType(string modifier, string unmodifiedType, bool isRequired) => unmodifiedType;
    }
}
