namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>What the benchmarks report about the machine they ran on.</summary>
internal static class MachineInfo
{
    /// <summary>The CPU's model name (what <c>lscpu</c> shows), or "unknown" where /proc/cpuinfo does not say.</summary>
    public static string CpuModel()
        => File.Exists("/proc/cpuinfo")
            ? File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "unknown"
            : "unknown";
}
