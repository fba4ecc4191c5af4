#!/usr/bin/env bash
# Plain-backprop step time of the small CNN: TorchSharp (bench --backprop-only) against PyTorch
# (build/bench_pytorch.py), in alternating runs whose order flips every pair; prints each pair's ratio
# and the median. Not part of CI; needs Debian's python3-torch.
#   build/compare_pytorch.sh [pairs=5]        (STEPS=60 THREADS=2 by default)
set -euo pipefail
pairs=${1:-5}
steps=${STEPS:-60}
threads=${THREADS:-2}
python=${PYTHON:-/usr/bin/python3}
root=$(cd "$(dirname "$0")/.." && pwd)
dotnet build "$root/src/Samples" -c Release -v quiet -nologo >/dev/null
samples="$root/src/Samples/bin/Release/net10.0/linux-x64/Samples"
json=$(mktemp)
trap 'rm -f "$json"' EXIT

torchsharp() {
  "$samples" bench --steps "$steps" --lr-grid 0.001 --backprop-only --threads "$threads" --seeds 1 --json "$json" >/dev/null
  "$python" -c 'import json, sys; print(format(json.load(open(sys.argv[1]))["bpMedianStepMs"], ".1f"))' "$json"
}
pytorch() {
  "$python" "$root/build/bench_pytorch.py" --steps "$steps" --threads "$threads" | sed -E 's/.*median plain step ([0-9.]+) ms.*/\1/'
}

ratios=()
for pair in $(seq 1 "$pairs"); do
  if (( pair % 2 )); then ts=$(torchsharp); py=$(pytorch); else py=$(pytorch); ts=$(torchsharp); fi
  ratio=$("$python" -c "print(f'{$ts / $py:.3f}')")
  ratios+=("$ratio")
  echo "pair $pair: TorchSharp ${ts} ms, PyTorch ${py} ms, ratio ${ratio}"
done
"$python" -c "import statistics, sys; print(f'median TorchSharp/PyTorch step ratio over {len(sys.argv) - 1} pairs: {statistics.median(map(float, sys.argv[1:])):.3f}')" "${ratios[@]}"
