using System.CommandLine;
using Microsoft.ML.Decorrelation.Samples;

var root = new RootCommand("Decorrelated backpropagation (DBP) against plain backpropagation on Fashion-MNIST.");
CompareCommand.Configure(root);
root.Subcommands.Add(BenchCommand.Create());
return root.Parse(args).Invoke();
