using Microsoft.ML.Decorrelation.Torch.Data;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>Where the Fashion-MNIST files were found, and how to describe that to the user.</summary>
/// <param name="Folder">The folder holding the four IDX files.</param>
/// <param name="Description">A sentence for the output.</param>
/// <param name="IsSubset">Whether it is the subset shipped in the repository (10,000 + 2,000 images).</param>
internal sealed record DataSource(string Folder, string Description, bool IsSubset);

/// <summary>
/// Finds Fashion-MNIST, in this order: the folder the user gave; the Debian package's folder; the user's
/// cache folder (filled by an earlier download); a download from the dataset's public source into that
/// cache; the subset shipped in the repository. Each step that fails says why in <see cref="Notes"/>.
/// </summary>
internal sealed class FashionMnistSource
{
    /// <summary>Where the Debian package dataset-fashion-mnist installs the files.</summary>
    public const string DebianFolder = "/usr/share/datasets/fashion-mnist";

    /// <summary>The dataset's public download location.</summary>
    public static readonly Uri PublicSource = new("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/");

    /// <summary>The four files, in the names of the original distribution.</summary>
    public static readonly string[] FileNames =
        ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"];

    /// <summary>The Debian folder to look in.</summary>
    public string Debian { get; init; } = DebianFolder;

    /// <summary>The cache folder downloads go to.</summary>
    public string Cache { get; init; } = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create),
        "Microsoft.ML.Decorrelation", "fashion-mnist");

    /// <summary>Where to download from; null skips the download.</summary>
    public Uri? Download { get; init; } = PublicSource;

    /// <summary>How long the download may take in all.</summary>
    public TimeSpan DownloadTimeout { get; init; } = TimeSpan.FromMinutes(3);

    /// <summary>The subset copied next to the program.</summary>
    public string Subset { get; init; } = Path.Combine(AppContext.BaseDirectory, "Data", "fashion-mnist-subset");

    /// <summary>Why each skipped source was skipped, in order.</summary>
    public List<string> Notes { get; } = [];

    /// <summary>Finds the data.</summary>
    /// <param name="requested">A folder the user asked for, or null.</param>
    /// <exception cref="DirectoryNotFoundException">The requested folder lacks the files, or no source at all has them.</exception>
    public DataSource Locate(string? requested)
    {
        if (requested is not null)
        {
            return HasFiles(requested)
                ? new DataSource(requested, $"Fashion-MNIST from {requested} (--data)", false)
                : throw new DirectoryNotFoundException($"'{requested}' does not hold the Fashion-MNIST files {string.Join(", ", FileNames)}.");
        }
        if (HasFiles(Debian))
            return new DataSource(Debian, $"the full Fashion-MNIST from the Debian package dataset-fashion-mnist ({Debian})", false);
        Notes.Add($"{Debian}: not installed (sudo apt-get install dataset-fashion-mnist).");
        if (HasFiles(Cache))
            return new DataSource(Cache, $"the full Fashion-MNIST downloaded earlier to {Cache}", false);
        if (Download is not null)
        {
            try
            {
                DownloadTo(Cache);
                return new DataSource(Cache, $"the full Fashion-MNIST, just downloaded from {Download} to {Cache}", false);
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or IOException or InvalidDataException)
            {
                Notes.Add($"Download from {Download} failed: {e.Message}");
            }
        }
        if (HasFiles(Subset))
            return ShippedSubset();
        throw new DirectoryNotFoundException("Fashion-MNIST was found nowhere: " + string.Join(" ", Notes));
    }

    /// <summary>The subset shipped with the samples, whatever else is available.</summary>
    /// <exception cref="DirectoryNotFoundException">The subset is not next to the program.</exception>
    public DataSource ShippedSubset()
        => HasFiles(Subset)
            ? new DataSource(Subset, $"the Fashion-MNIST subset shipped with the samples (10,000 training, 2,000 test images; {Subset})", true)
            : throw new DirectoryNotFoundException($"The Fashion-MNIST subset is missing from {Subset}.");

    /// <summary>Loads the training or test split from a located source.</summary>
    public static ImageDataset Load(DataSource source, bool train, int? limit = null)
    {
        string prefix = train ? "train" : "t10k";
        return ImageDataset.FromIdx(Path.Combine(source.Folder, $"{prefix}-images-idx3-ubyte.gz"),
            Path.Combine(source.Folder, $"{prefix}-labels-idx1-ubyte.gz"), limit: limit);
    }

    private static bool HasFiles(string folder) => FileNames.All(name => File.Exists(Path.Combine(folder, name)));

    /// <summary>Downloads the four files into <paramref name="folder"/>; each is checked and renamed into place only when complete.</summary>
    private void DownloadTo(string folder)
    {
        Directory.CreateDirectory(folder);
        // A network that drops packets silently fails within the connect timeout, not the whole download timeout.
        using var http = new HttpClient(new SocketsHttpHandler { ConnectTimeout = TimeSpan.FromSeconds(15) }) { Timeout = DownloadTimeout };
        foreach (var name in FileNames)
        {
            string target = Path.Combine(folder, name), partial = target + ".partial";
            using (var response = http.GetAsync(new Uri(Download!, name), HttpCompletionOption.ResponseHeadersRead).GetAwaiter().GetResult())
            {
                response.EnsureSuccessStatusCode();
                using var file = File.Create(partial);
                response.Content.CopyToAsync(file).GetAwaiter().GetResult();
            }
            IdxReader.Read(partial);   // throws InvalidDataException for a truncated or wrong file
            File.Move(partial, target, overwrite: true);
        }
    }
}
