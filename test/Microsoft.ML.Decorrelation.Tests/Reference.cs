using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>Independent double-precision computations, written with plain loops, to check the engine against.</summary>
internal static class Reference
{
    public static double[,] ToMatrix(Tensor t)
    {
        var data = t.to(ScalarType.Float64).contiguous().data<double>().ToArray();
        int rows = (int)t.shape[0], cols = (int)t.shape[1];
        var m = new double[rows, cols];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
                m[i, j] = data[i * cols + j];
        return m;
    }

    public static double[,] Multiply(double[,] a, double[,] b)
    {
        int n = a.GetLength(0), k = a.GetLength(1), m = b.GetLength(1);
        var c = new double[n, m];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < m; j++)
            {
                double s = 0;
                for (int l = 0; l < k; l++)
                    s += a[i, l] * b[l, j];
                c[i, j] = s;
            }
        return c;
    }

    public static double[,] Transpose(double[,] a)
    {
        var t = new double[a.GetLength(1), a.GetLength(0)];
        for (int i = 0; i < a.GetLength(0); i++)
            for (int j = 0; j < a.GetLength(1); j++)
                t[j, i] = a[i, j];
        return t;
    }

    /// <summary>The DBP update rule of docs/design.md, "The algorithm", from decorrelated samples Z (N×D) and R (D×D).</summary>
    public static (double[,] NewR, double Loss) UpdateRule(double[,] z, double[,] r, double kappa, double eta)
    {
        int n = z.GetLength(0), d = z.GetLength(1);
        var x = Multiply(Transpose(z), z);
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++)
                x[i, j] /= n;
        var mixed = new double[d, d];   // (1−κ)·C + κ·diag(v)
        double offDiagonal = 0, variance = 0;
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++)
            {
                if (i == j)
                {
                    double v = x[i, i] - 1;
                    mixed[i, j] = kappa * v;
                    variance += v * v;
                }
                else
                {
                    mixed[i, j] = (1 - kappa) * x[i, j];
                    offDiagonal += x[i, j] * x[i, j];
                }
            }
        var step = Multiply(mixed, r);
        var next = new double[d, d];
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++)
                next[i, j] = r[i, j] - eta * step[i, j];
        return (next, ((1 - kappa) * offDiagonal + kappa * variance) / ((double)d * d));
    }

    public static double MaxAbsDifference(double[,] a, double[,] b)
    {
        double max = 0;
        for (int i = 0; i < a.GetLength(0); i++)
            for (int j = 0; j < a.GetLength(1); j++)
                max = Math.Max(max, Math.Abs(a[i, j] - b[i, j]));
        return max;
    }

    public static double MaxAbsDifference(Tensor a, Tensor b)
        => (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).abs().max().item<double>();
}
