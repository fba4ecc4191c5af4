using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>Builds modules so that no tensor of their construction is left to the finalizer.</summary>
internal static class ModuleOwnership
{
    /// <summary>
    /// Runs <paramref name="build"/> inside a dispose scope and keeps only the module's parameters and buffers:
    /// temporaries of the construction (TorchSharp's <c>Conv2d</c> drops one while initialising its bias) are
    /// disposed here instead of holding native memory until a garbage collection.
    /// </summary>
    public static T Build<T>(Func<T> build) where T : nn.Module
    {
        using var scope = NewDisposeScope();
        var module = build();
        foreach (var parameter in module.parameters())
            parameter.DetachFromDisposeScope();
        foreach (var buffer in module.buffers())
            buffer.DetachFromDisposeScope();
        return module;
    }
}
