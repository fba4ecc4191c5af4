using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch.Distributed;

/// <summary>The collective operations data-parallel training needs; <see cref="MpiCommunicator"/> implements them over MPI.</summary>
public interface ICollectiveCommunicator
{
    /// <summary>This process's rank, 0 … <see cref="Size"/> − 1.</summary>
    int Rank { get; }

    /// <summary>The number of processes.</summary>
    int Size { get; }

    /// <summary>Replaces <paramref name="tensor"/> (float32 or float64, any device) by its element-wise sum over all ranks.</summary>
    void AllReduceSum(Tensor tensor);

    /// <summary>Replaces <paramref name="tensor"/> on every rank by rank <paramref name="root"/>'s.</summary>
    void Broadcast(Tensor tensor, int root);
}

/// <summary>
/// Counts the time and bytes of another communicator's collectives: how a training step tells its gradient all-reduce
/// from its decorrelation-statistics all-reduce.
/// </summary>
public sealed class MeteredCommunicator(ICollectiveCommunicator inner) : ICollectiveCommunicator
{
    /// <inheritdoc />
    public int Rank => inner.Rank;

    /// <inheritdoc />
    public int Size => inner.Size;

    /// <summary>Time spent in collectives since the last <see cref="Take"/>.</summary>
    public TimeSpan Elapsed { get; private set; }

    /// <summary>Bytes each rank contributed to collectives since the last <see cref="Take"/>.</summary>
    public long Bytes { get; private set; }

    /// <inheritdoc />
    public void AllReduceSum(Tensor tensor)
    {
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        inner.AllReduceSum(tensor);
        Elapsed += System.Diagnostics.Stopwatch.GetElapsedTime(start);
        Bytes += tensor.NumberOfElements * tensor.ElementSize;
    }

    /// <inheritdoc />
    public void Broadcast(Tensor tensor, int root)
    {
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        inner.Broadcast(tensor, root);
        Elapsed += System.Diagnostics.Stopwatch.GetElapsedTime(start);
        Bytes += tensor.NumberOfElements * tensor.ElementSize;
    }

    /// <summary>The time and bytes since the last call, then starts counting again.</summary>
    public (TimeSpan Elapsed, long Bytes) Take()
    {
        var result = (Elapsed, Bytes);
        Elapsed = TimeSpan.Zero;
        Bytes = 0;
        return result;
    }
}

/// <summary>
/// MPI_COMM_WORLD of the MPI library the process was launched with (<c>mpirun</c>, <c>srun</c>): Open MPI (libmpi.so.40) or
/// MPICH (libmpi.so.12), bound directly — the handful of calls data-parallel training needs (Init_thread, Comm_rank, Comm_size,
/// Allreduce, Bcast, Abort, Finalize). One per process; see docs/design.md, "Data-parallel training".
/// </summary>
public sealed unsafe class MpiCommunicator : ICollectiveCommunicator, IDisposable
{
    private const int MpiThreadSerialized = 2;   // the same value in Open MPI's and MPICH's mpi.h

    /// <summary>
    /// The environment variable that names the MPI library to load (a path or file name), for an MPI installed where the
    /// loader does not look; unset tries Open MPI's libmpi.so.40, then MPICH's libmpi.so.12.
    /// </summary>
    public const string LibraryVariable = "DECORRELATION_MPI_LIBRARY";

    private static MpiCommunicator? _world;
    private static readonly object Gate = new();

    private readonly Implementation _mpi;
    private bool _finalized;

    private MpiCommunicator(Implementation mpi)
    {
        _mpi = mpi;
        int rank, size;
        Check(_mpi.CommRank(_mpi.CommWorld, &rank), "MPI_Comm_rank");
        Check(_mpi.CommSize(_mpi.CommWorld, &size), "MPI_Comm_size");
        Rank = rank;
        Size = size;
    }

    /// <inheritdoc />
    public int Rank { get; }

    /// <inheritdoc />
    public int Size { get; }

    /// <summary>Which MPI library is in use, e.g. "Open MPI (libmpi.so.40)".</summary>
    public string Library => _mpi.Description;

    /// <summary>
    /// Whether this process was started by an MPI launcher (its environment carries Open MPI's, PMIx's, PMI's or Slurm's
    /// rank variables), i.e. whether <see cref="World"/> can join a job.
    /// </summary>
    public static bool LaunchedByMpi
        => new[] { "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK" }.Any(v => Environment.GetEnvironmentVariable(v) is not null);

    /// <summary>
    /// The process's MPI world, initialised on first use (and finalised at process exit).
    /// </summary>
    /// <exception cref="PlatformNotSupportedException">No MPI library can be loaded; the message says what to install.</exception>
    public static MpiCommunicator World
    {
        get
        {
            lock (Gate)
            {
                if (_world is null)
                {
                    var mpi = Implementation.Load();
                    int initialized;
                    Check(mpi.Initialized(&initialized), "MPI_Initialized");
                    if (initialized == 0)
                    {
                        // Training may run on a thread of its own (denormal flushing): calls come from one thread at a time.
                        int provided;
                        Check(mpi.InitThread(null, null, MpiThreadSerialized, &provided), "MPI_Init_thread");
                        if (provided < MpiThreadSerialized)
                            throw new PlatformNotSupportedException($"The MPI library provides thread level {provided}; training needs MPI_THREAD_SERIALIZED ({MpiThreadSerialized}).");
                    }
                    _world = new MpiCommunicator(mpi);
                    AppDomain.CurrentDomain.ProcessExit += (_, _) => _world.Dispose();
                }
                return _world;
            }
        }
    }

    /// <inheritdoc />
    public void AllReduceSum(Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        ObjectDisposedException.ThrowIf(_finalized, this);
        if (Size == 1)
            return;
        nint type = tensor.dtype switch
        {
            ScalarType.Float32 => _mpi.Float,
            ScalarType.Float64 => _mpi.Double,
            _ => throw new ArgumentException($"All-reduce takes float32 or float64 tensors, not {tensor.dtype}.", nameof(tensor)),
        };
        InHostMemory(tensor, buffer => Check(_mpi.Allreduce(_mpi.InPlace, Address(buffer), checked((int)buffer.NumberOfElements), type, _mpi.Sum, _mpi.CommWorld), "MPI_Allreduce"));
    }

    /// <inheritdoc />
    public void Broadcast(Tensor tensor, int root)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        ObjectDisposedException.ThrowIf(_finalized, this);
        ArgumentOutOfRangeException.ThrowIfNegative(root);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(root, Size);
        if (Size == 1)
            return;
        InHostMemory(tensor, buffer => Check(_mpi.Bcast(Address(buffer), checked((int)(buffer.NumberOfElements * buffer.ElementSize)), _mpi.Byte, root, _mpi.CommWorld), "MPI_Bcast"));
    }

    /// <summary>
    /// Runs <paramref name="collective"/> on <paramref name="tensor"/>'s values in contiguous CPU memory (the tensor itself when it
    /// already is, else a copy written back afterwards).
    /// </summary>
    private static void InHostMemory(Tensor tensor, Action<Tensor> collective)
    {
        using var scope = NewDisposeScope();
        var buffer = tensor.device.type == DeviceType.CPU && tensor.is_contiguous() ? tensor : tensor.cpu().contiguous();
        collective(buffer);
        if (!ReferenceEquals(buffer, tensor))
            tensor.copy_(buffer);
    }

    /// <summary>Ends the whole job (every rank) with <paramref name="code"/>: what a rank does when it cannot go on alone.</summary>
    public void Abort(int code) => _mpi.Abort(_mpi.CommWorld, code);

    /// <summary>Finalises MPI (once per process; after it no call may be made).</summary>
    public void Dispose()
    {
        if (_finalized)
            return;
        _finalized = true;
        _mpi.End();
    }

    private static void Check(int code, string call)
    {
        if (code != 0)
            throw new InvalidOperationException($"{call} failed with MPI error code {code}.");
    }

    /// <summary>The address of a contiguous CPU tensor's data (native memory: it does not move).</summary>
    private static nint Address(Tensor tensor)
        => tensor.NumberOfElements == 0 ? 0 : (nint)System.Runtime.CompilerServices.Unsafe.AsPointer(ref MemoryMarshal.GetReference(tensor.bytes));

    /// <summary>The functions and predefined handles of one MPI library. Handles are pointers in Open MPI and ints in MPICH; both fit a nint.</summary>
    private sealed class Implementation
    {
        public required string Description { get; init; }
        public required delegate* unmanaged<int*, byte***, int, int*, int> InitThread { get; init; }
        public required delegate* unmanaged<int*, int> Initialized { get; init; }
        public required delegate* unmanaged<nint, int*, int> CommRank { get; init; }
        public required delegate* unmanaged<nint, int*, int> CommSize { get; init; }
        public required delegate* unmanaged<nint, nint, int, nint, nint, nint, int> Allreduce { get; init; }
        public required delegate* unmanaged<nint, int, nint, int, nint, int> Bcast { get; init; }
        public required delegate* unmanaged<nint, int, int> AbortCall { get; init; }
        public required delegate* unmanaged<int> FinalizeCall { get; init; }
        public required nint CommWorld { get; init; }
        public required nint Float { get; init; }
        public required nint Double { get; init; }
        public required nint Byte { get; init; }
        public required nint Sum { get; init; }
        public required nint InPlace { get; init; }

        public void Abort(nint comm, int code) => AbortCall(comm, code);

        public void End() => FinalizeCall();

        public static Implementation Load()
        {
            if (Environment.GetEnvironmentVariable(LibraryVariable) is { Length: > 0 } path)
            {
                if (!NativeLibrary.TryLoad(path, out var chosen))
                    throw new PlatformNotSupportedException($"The MPI library '{path}' named by {LibraryVariable} could not be loaded. {InstallAdvice}");
                return NativeLibrary.TryGetExport(chosen, "ompi_mpi_comm_world", out _) ? BindOpenMpi(chosen) : BindMpich(chosen);
            }
            if (TryLoad("libmpi.so.40", out var openMpi) || TryLoad("libmpi.so", out openMpi) && NativeLibrary.TryGetExport(openMpi, "ompi_mpi_comm_world", out _))
                return BindOpenMpi(openMpi);
            if (TryLoad("libmpi.so.12", out var mpich) || TryLoad("libmpich.so.12", out mpich))
                return BindMpich(mpich);
            throw new PlatformNotSupportedException(
                $"Distributed training needs an MPI library, and none could be loaded (looked for Open MPI's libmpi.so.40 and MPICH's libmpi.so.12). {InstallAdvice}");
        }

        private const string InstallAdvice = "Install one and start the program with its launcher: on Debian or Ubuntu `apt-get install openmpi-bin`, then " +
            "`mpirun -np 2 dotnet app.dll`; under Slurm, `srun` with the cluster's MPI; or name the library in " + LibraryVariable + ".";

        // MPICH's handles are compile-time integer constants (mpi.h).
        private static readonly Dictionary<string, nint> MpichConstants = new()
        {
            ["comm_world"] = 0x44000000, ["float"] = 0x4c00040a, ["double"] = 0x4c00080b, ["byte"] = 0x4c00010d, ["op_sum"] = 0x58000003,
        };

        private static bool TryLoad(string name, out nint handle) => NativeLibrary.TryLoad(name, out handle);

        // Open MPI's predefined handles are the addresses of exported objects; its MPI_IN_PLACE is (void*)1, MPICH's (void*)−1.
        private static Implementation BindOpenMpi(nint library) => Bind(library, "Open MPI", name => NativeLibrary.GetExport(library, "ompi_mpi_" + name), inPlace: 1);

        private static Implementation BindMpich(nint library) => Bind(library, "MPICH", name => MpichConstants[name], inPlace: -1);

        private static Implementation Bind(nint library, string family, Func<string, nint> handle, nint inPlace)
        {
            nint Function(string name) => NativeLibrary.GetExport(library, name);
            return new Implementation
            {
                Description = family,
                InitThread = (delegate* unmanaged<int*, byte***, int, int*, int>)Function("MPI_Init_thread"),
                Initialized = (delegate* unmanaged<int*, int>)Function("MPI_Initialized"),
                CommRank = (delegate* unmanaged<nint, int*, int>)Function("MPI_Comm_rank"),
                CommSize = (delegate* unmanaged<nint, int*, int>)Function("MPI_Comm_size"),
                Allreduce = (delegate* unmanaged<nint, nint, int, nint, nint, nint, int>)Function("MPI_Allreduce"),
                Bcast = (delegate* unmanaged<nint, int, nint, int, nint, int>)Function("MPI_Bcast"),
                AbortCall = (delegate* unmanaged<nint, int, int>)Function("MPI_Abort"),
                FinalizeCall = (delegate* unmanaged<int>)Function("MPI_Finalize"),
                CommWorld = handle("comm_world"),
                Float = handle("float"),
                Double = handle("double"),
                Byte = handle("byte"),
                Sum = handle("op_sum"),
                InPlace = inPlace,
            };
        }
    }
}
