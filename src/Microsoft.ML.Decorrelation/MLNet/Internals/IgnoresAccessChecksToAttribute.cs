// The runtime honours this attribute (it is not in the public framework, so each assembly declares it):
// it lets this assembly call the internals of the named assemblies, which it compiles against through the
// publicized copies made by build/MLNetInternals.targets.
[assembly: System.Runtime.CompilerServices.IgnoresAccessChecksTo("Microsoft.ML.Core")]
[assembly: System.Runtime.CompilerServices.IgnoresAccessChecksTo("Microsoft.ML.Data")]

namespace System.Runtime.CompilerServices;

/// <summary>Lets this assembly access the non-public members of the named assembly at run time.</summary>
[AttributeUsage(AttributeTargets.Assembly, AllowMultiple = true)]
internal sealed class IgnoresAccessChecksToAttribute(string assemblyName) : Attribute
{
    /// <summary>The simple name of the assembly whose internals are accessed.</summary>
    public string AssemblyName { get; } = assemblyName;
}
