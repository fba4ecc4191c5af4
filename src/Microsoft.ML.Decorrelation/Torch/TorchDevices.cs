using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>Chooses the device a network trains and runs on.</summary>
public static class TorchDevices
{
    /// <summary>
    /// The CUDA device <paramref name="gpuIndex"/> when one is requested and present; the CPU when none is
    /// requested, or when it is absent and <paramref name="fallbackToCpu"/> is set.
    /// </summary>
    /// <param name="gpuIndex">The CUDA device index (as in <c>MLContext.GpuDeviceId</c>), or null for the CPU.</param>
    /// <param name="fallbackToCpu">Use the CPU when the GPU is not available instead of throwing.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="gpuIndex"/> is negative.</exception>
    /// <exception cref="InvalidOperationException">The GPU is not available and <paramref name="fallbackToCpu"/> is false.</exception>
    public static Device Select(int? gpuIndex, bool fallbackToCpu)
    {
        if (gpuIndex is null)
            return CPU;
        if (gpuIndex < 0)
            throw new ArgumentOutOfRangeException(nameof(gpuIndex), gpuIndex, "The GPU device index must not be negative.");
        int available = cuda.is_available() ? cuda.device_count() : 0;
        if (gpuIndex < available)
            return new Device(DeviceType.CUDA, gpuIndex.Value);
        if (fallbackToCpu)
            return CPU;
        throw new InvalidOperationException(available == 0
            ? $"GPU device {gpuIndex} was requested but CUDA is not available (build with -p:TorchBackend=cuda on a machine with a CUDA GPU), and fallback to the CPU is off."
            : $"GPU device {gpuIndex} was requested but only {available} CUDA device(s) exist, and fallback to the CPU is off.");
    }
}
