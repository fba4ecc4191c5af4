using Microsoft.VisualStudio.TestTools.UnitTesting;

// Torch tests share global state (seeds, thread count) and the machine has 2 cores: run them one at a time.
[assembly: DoNotParallelize]
