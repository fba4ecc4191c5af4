using Microsoft.ML.Decorrelation.Samples;

// Some commands call TorchSharp before the library: let it make TorchSharp's native library loadable first.
Microsoft.ML.Decorrelation.Torch.TorchSharpNativeLoader.EnsureLoaded();
return SamplesCli.Create().Parse(args).Invoke();
