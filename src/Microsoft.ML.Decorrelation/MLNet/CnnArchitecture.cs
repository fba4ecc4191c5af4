namespace Microsoft.ML.Decorrelation;

/// <summary>The convolutional networks <see cref="DecorrelatedImageClassificationTrainer"/> can train.</summary>
public enum CnnArchitecture
{
    /// <summary>Three 3×3 convolutions (32, 64, 128 filters) with ReLU and max-pooling, and a linear classifier. Images of at least 8×8.</summary>
    SmallCnn,

    /// <summary>ResNet-18 (basic blocks, BatchNorm). Images up to 64×64 use a 3×3 stride-1 stem; larger ones the ImageNet stem.</summary>
    ResNet18,

    /// <summary>ResNet-34 (basic blocks, BatchNorm); stem chosen as for <see cref="ResNet18"/>.</summary>
    ResNet34,

    /// <summary>ResNet-50 (bottleneck blocks, BatchNorm); stem chosen as for <see cref="ResNet18"/>.</summary>
    ResNet50,
}
