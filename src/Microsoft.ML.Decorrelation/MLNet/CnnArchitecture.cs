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

/// <summary>How <see cref="DecorrelatedImageClassificationTrainer"/> standardises pixels per channel (stored in the model, applied when scoring).</summary>
public enum PixelStandardization
{
    /// <summary>With the mean and standard deviation of the training images.</summary>
    TrainingSet,

    /// <summary>
    /// With ImageNet's, on the 0–255 scale (mean 123.675, 116.28, 103.53; standard deviation 58.395, 57.12, 57.375); for
    /// grayscale images their averages. What torchvision's pretrained weights expect.
    /// </summary>
    ImageNet,
}

/// <summary>Whether <see cref="DecorrelatedImageClassificationTrainer"/> trains data-parallel over MPI.</summary>
public enum DataParallelMode
{
    /// <summary>Data-parallel when the process was started by an MPI launcher (mpirun, srun); alone otherwise.</summary>
    Auto,

    /// <summary>Always alone, even under an MPI launcher (each rank then trains its own model).</summary>
    Disabled,

    /// <summary>Always data-parallel: fails with what to install when no MPI library can be loaded.</summary>
    Enabled,
}
