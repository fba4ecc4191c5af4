#!/usr/bin/env bash
# Builds and runs a consumer application OUTSIDE the repository tree (so none of the repository's Directory.Build.*
# files apply), as a .NET team would after the README's Install section:
#   1. against the NuGet package, packed here into a temporary local feed with a unique prerelease version (so the
#      NuGet cache never serves a stale copy), plus this OS's CPU backend;
#   2. against the library project by ProjectReference from that other folder, plus the CPU backend;
#   3. against the package WITHOUT a backend: the build must warn with DBP0001.
# Apps 1 and 2 write 500 PNG files from the shipped Fashion-MNIST subset, train 1 epoch through LoadImages,
# ResizeImages and ExtractPixels, evaluate, save, and load the model in a second process whose predictions must be
# identical (build/consumer/Program.cs). Usage: build/consumer-check.sh [IMAGE_COUNT]; KEEP_CONSUMER_WORK=1 keeps the
# temporary folder for inspection.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
count="${1:-500}"
work="$(mktemp -d /tmp/dbp-consumer.XXXXXX)"
trap '[ -n "${KEEP_CONSUMER_WORK:-}" ] || rm -rf "$work"' EXIT
version_suffix="ci.$(date -u +%Y%m%d%H%M%S).$$"
version="1.0.0-$version_suffix"

case "$(uname -s)" in
  Linux) backend=libtorch-cpu-linux-x64 ;;
  Darwin) backend=libtorch-cpu-osx-arm64 ;;
  *) backend=libtorch-cpu-win-x64 ;;
esac

echo "== packing Microsoft.ML.Decorrelation $version into $work/feed"
dotnet pack "$repo/src/Microsoft.ML.Decorrelation/Microsoft.ML.Decorrelation.csproj" -c Release -o "$work/feed" \
  -p:VersionSuffix="$version_suffix" -v quiet -nologo
# The package's dependencies, for the log (the tests check them: BuildTests).
if command -v unzip >/dev/null; then
  unzip -p "$work/feed/Microsoft.ML.Decorrelation.$version.nupkg" Microsoft.ML.Decorrelation.nuspec \
    | grep -o '<dependency [^>]*>' | sed 's/^/   nuspec: /'
fi

# A NuGet.config for the apps: the local feed and the registry this machine uses.
cat > "$work/NuGet.config" <<EOF
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <clear />
    <add key="local" value="$work/feed" />
    <add key="nuget.org" value="https://api.nuget.org/v3/index.json" />
  </packageSources>
</configuration>
EOF

new_app() {   # new_app NAME: a console app with the consumer's Program.cs
  mkdir -p "$work/$1"
  cat > "$work/$1/$1.csproj" <<'EOF'
<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Exe</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <ImplicitUsings>enable</ImplicitUsings>
    <Nullable>enable</Nullable>
  </PropertyGroup>
</Project>
EOF
  cp "$repo/build/consumer/Program.cs" "$work/$1/Program.cs"
}

run_app() {   # run_app NAME: build (no DBP0001 warning), then train, save, load in a second process and compare
  local log="$work/$1/build.log"
  (cd "$work/$1" && dotnet build -c Release -nologo > "$log" 2>&1) || { cat "$log"; exit 1; }
  if grep -q "warning DBP0001" "$log"; then
    echo "   DBP0001 warned although the app references $backend" >&2
    exit 1
  fi
  local out="$work/$1/run"
  mkdir -p "$out"
  "$work/$1/bin/Release/net10.0/$1" train "$repo/src/Samples/Data/fashion-mnist-subset" "$out" "$count"
}

echo "== consumer app with the package and $backend"
new_app PackageConsumer
(cd "$work/PackageConsumer" && dotnet add package Microsoft.ML.Decorrelation --version "$version" >/dev/null \
  && dotnet add package "$backend" --version 2.10.0 >/dev/null)
run_app PackageConsumer

echo "== consumer app with a ProjectReference from another folder and $backend"
new_app ProjectConsumer
(cd "$work/ProjectConsumer" && dotnet add reference "$repo/src/Microsoft.ML.Decorrelation/Microsoft.ML.Decorrelation.csproj" >/dev/null \
  && dotnet add package "$backend" --version 2.10.0 >/dev/null)
run_app ProjectConsumer

echo "== consumer app with the package and no backend: the build must warn"
new_app NoBackendConsumer
(cd "$work/NoBackendConsumer" && dotnet add package Microsoft.ML.Decorrelation --version "$version" >/dev/null)
if (cd "$work/NoBackendConsumer" && dotnet build -c Release -nologo 2>&1) | grep -q "warning DBP0001"; then
  echo "   warning DBP0001 given: OK"
else
  echo "   no DBP0001 warning for an app without a LibTorch backend" >&2
  exit 1
fi
# Run anyway: training must fail with the library's error naming the packages, not crash natively.
mkdir -p "$work/NoBackendConsumer/run"
if "$work/NoBackendConsumer/bin/Release/net10.0/NoBackendConsumer" train "$repo/src/Samples/Data/fashion-mnist-subset" \
     "$work/NoBackendConsumer/run" 100 > "$work/NoBackendConsumer/run.log" 2>&1; then
  echo "   an app without a backend trained?" >&2
  exit 1
elif grep -q "Reference exactly one LibTorch backend package" "$work/NoBackendConsumer/run.log"; then
  echo "   run without a backend fails with: $(grep -o 'Training is not possible here: .*' "$work/NoBackendConsumer/run.log" | cut -c1-200 | head -1)…"
else
  cat "$work/NoBackendConsumer/run.log" >&2
  echo "   an app without a backend did not fail with the library's error" >&2
  exit 1
fi
echo "consumer apps: OK"
