namespace Microsoft.ML.Decorrelation.Torch; internal static class Placeholder { }
