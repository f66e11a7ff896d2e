#!/usr/bin/env bash
# Builds the real Kubernetes control plane that polyserve's tests run against:
#   etcd, kube-apiserver, kube-controller-manager
# from the Go module proxy (pinned in tools/kube/go.mod and go.sum), into a cache directory
# outside the git tree:
#   ${POLYSERVE_KUBE_CACHE:-$HOME/.cache/polyserve-kube}/<kubernetes version>/bin
# Binaries already there (built from the same go.mod/go.sum) are reused.
#
# Environment:
#   POLYSERVE_KUBE_CACHE    cache root (default $HOME/.cache/polyserve-kube)
#   POLYSERVE_KUBE_BUILD_P  go build -p (parallel compile jobs; default: Go's default, the CPUs)
#   POLYSERVE_KUBE_FORCE=1  rebuild even if the binaries are present
# Prints the binary directory on the last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

log() { printf '[kube-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

k8s_version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ {print $2; exit}' go.mod)"
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v3\./ {print $2; exit}' go.mod)"
if [[ -z "$k8s_version" || -z "$etcd_version" ]]; then
    log "cannot read the pinned k8s.io/kubernetes / etcd versions from $here/go.mod"
    exit 2
fi

cache_root="${POLYSERVE_KUBE_CACHE:-$HOME/.cache/polyserve-kube}"
bin="$cache_root/$k8s_version/bin"
stamp="$bin/.build-stamp"
binaries=(etcd kube-apiserver kube-controller-manager)

# The stamp records what the binaries were built from, so an edited go.mod rebuilds.
want_stamp="$(cat go.mod go.sum | sha256sum | cut -d' ' -f1)"

have_all=1
for b in "${binaries[@]}"; do
    [[ -x "$bin/$b" ]] || have_all=0
done
if [[ "${POLYSERVE_KUBE_FORCE:-0}" != 1 && $have_all == 1 && -f "$stamp" \
    && "$(cat "$stamp")" == "$want_stamp" ]]; then
    log "up to date: kubernetes $k8s_version, etcd $etcd_version in $bin"
    echo "$bin"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    log "ERROR: the Go toolchain (>= 1.24) is needed to build Kubernetes; 'go' is not on PATH"
    exit 3
fi
go_version="$(go env GOVERSION)"
go_minor="$(sed -E 's/^go1\.([0-9]+).*/\1/' <<<"$go_version")"
if [[ ! "$go_minor" =~ ^[0-9]+$ ]] || ((go_minor < 24)); then
    log "ERROR: Go >= 1.24 is needed to build Kubernetes $k8s_version; found $go_version"
    exit 3
fi

start=$(date +%s)
mkdir -p "$bin"
log "building kubernetes $k8s_version (kube-apiserver, kube-controller-manager) and etcd $etcd_version"
log "with $go_version into $bin (GOMODCACHE=$(go env GOMODCACHE), GOCACHE=$(go env GOCACHE))"
log "a cold build takes about 6-10 minutes on 2 cores; a warm one seconds"

export CGO_ENABLED=0          # static binaries, no C toolchain needed (as upstream builds them)
export GOTOOLCHAIN=local      # never download a Go toolchain
export GOFLAGS="-mod=readonly ${GOFLAGS:-}"
par=()
if [[ -n "${POLYSERVE_KUBE_BUILD_P:-}" ]]; then
    par=(-p "$POLYSERVE_KUBE_BUILD_P")
fi

log "downloading modules (go mod download)"
go mod download

# The version that kube-apiserver reports at /version (upstream sets these from git).
minor="$(cut -d. -f2 <<<"$k8s_version")"
ver_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ver_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ver_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

tmp="$bin/.partial"
rm -rf "$tmp"
mkdir -p "$tmp"

t0=$(date +%s)
log "compiling etcd $etcd_version"
go build "${par[@]}" -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
log "etcd done in $(($(date +%s) - t0))s"

t0=$(date +%s)
log "compiling kube-apiserver and kube-controller-manager (the long part)"
go build "${par[@]}" -trimpath -ldflags "-s -w $ver_ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
log "kubernetes done in $(($(date +%s) - t0))s"

for b in "${binaries[@]}"; do
    mv -f "$tmp/$b" "$bin/$b"
done
rmdir "$tmp"
echo "$want_stamp" >"$stamp"

"$bin/kube-apiserver" --version >&2 || true
"$bin/etcd" --version 2>&1 | head -1 >&2 || true
log "built in $(($(date +%s) - start))s: $bin"
echo "$bin"
