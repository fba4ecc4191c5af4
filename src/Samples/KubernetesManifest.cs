using k8s;
using k8s.Models;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// The cloud case of model selection on many machines: a Kubernetes Indexed Job whose pods are <c>select --worker</c>
/// processes sharing one study in PostgreSQL. Built from KubernetesClient's models (generated from the Kubernetes API's
/// OpenAPI schema) and written as YAML for <c>kubectl apply -f</c>. The storage string (it may hold a password) comes
/// from a Secret; checkpoints and trial models go to a shared volume (a ReadWriteMany PersistentVolumeClaim).
/// </summary>
internal static class KubernetesManifest
{
    /// <summary>What the job runs.</summary>
    /// <param name="Study">The study's name (also names the job).</param>
    /// <param name="Image">A container image holding the samples (<c>dotnet Samples.dll</c> at <paramref name="SamplesPath"/>).</param>
    /// <param name="Workers">Pods, all running at once (completions = parallelism).</param>
    /// <param name="StorageSecret">The Secret whose key <c>storage</c> is the postgresql:// storage string.</param>
    /// <param name="SharedClaim">The PersistentVolumeClaim mounted at /shared: the work folder and the report.</param>
    /// <param name="WorkerArguments">The study's <c>select</c> arguments (trials, epochs, seed, data), the same for every pod.</param>
    /// <param name="SamplesPath">Samples.dll inside the image.</param>
    internal sealed record Job(string Study, string Image, int Workers, string StorageSecret, string SharedClaim, IReadOnlyList<string> WorkerArguments,
        string SamplesPath = "/app/Samples.dll");

    /// <summary>The Indexed Job as a model.</summary>
    /// <exception cref="ArgumentException">A setting is unusable (no image, fewer than one worker, a name Kubernetes refuses).</exception>
    public static V1Job Build(Job job)
    {
        if (string.IsNullOrWhiteSpace(job.Image))
            throw new ArgumentException("--image: the Kubernetes job needs a container image holding the samples.");
        if (job.Workers < 1)
            throw new ArgumentException($"--workers {job.Workers}: the Kubernetes job needs at least one worker.");
        // Kubernetes names are DNS labels: lower case, digits and '-'.
        string name = "dbp-select-" + job.Study.ToLowerInvariant().Replace('_', '-');
        if (name.Length > 63 || name.EndsWith('-'))
            throw new ArgumentException($"--study '{job.Study}' makes the job name '{name}', which is not a valid Kubernetes name (at most 63 characters, not ending in '-').");
        var labels = new Dictionary<string, string> { ["app.kubernetes.io/name"] = "dbp-select", ["dbp/study"] = name["dbp-select-".Length..] };
        return new V1Job
        {
            ApiVersion = "batch/v1",
            Kind = "Job",
            Metadata = new V1ObjectMeta { Name = name, Labels = labels },
            Spec = new V1JobSpec
            {
                CompletionMode = "Indexed",
                Completions = job.Workers,
                Parallelism = job.Workers,
                // A pod that dies is not restarted in place: its trial goes to another worker after the lease; a replacement pod joins the study.
                BackoffLimit = job.Workers * 2,
                Template = new V1PodTemplateSpec
                {
                    Metadata = new V1ObjectMeta { Labels = labels },
                    Spec = new V1PodSpec
                    {
                        RestartPolicy = "Never",
                        Containers =
                        [
                            new V1Container
                            {
                                Name = "worker",
                                Image = job.Image,
                                Command = ["dotnet", job.SamplesPath],
                                Args = [.. job.WorkerArguments, "--worker", "--storage", "$(DBP_STORAGE)", "--study", job.Study, "--work", "/shared/work", "--report", "/shared/report"],
                                Env =
                                [
                                    new V1EnvVar { Name = "DBP_STORAGE", ValueFrom = new V1EnvVarSource { SecretKeyRef = new V1SecretKeySelector { Name = job.StorageSecret, Key = "storage" } } },
                                ],
                                VolumeMounts = [new V1VolumeMount { Name = "shared", MountPath = "/shared" }],
                            },
                        ],
                        Volumes = [new V1Volume { Name = "shared", PersistentVolumeClaim = new V1PersistentVolumeClaimVolumeSource { ClaimName = job.SharedClaim } }],
                    },
                },
            },
        };
    }

    /// <summary>The job as YAML for <c>kubectl apply -f</c>.</summary>
    public static string Yaml(Job job) => KubernetesYaml.Serialize(Build(job));
}
