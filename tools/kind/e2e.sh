#!/usr/bin/env bash
# make e2e-kind: the three-tier end-to-end test on a kind cluster.
#
# Creates a kind cluster, builds the operator and router images (operator/Dockerfile,
# router/Dockerfile; the router image also runs the mock engine, so it is tagged once more as the
# engine pods' image), loads them into the cluster, installs the chart with helm and the test's
# values (tests/k8s/operator/e2e-values.yaml), port-forwards the router, and runs the same test
# module as the devcluster does (tests/k8s/operator/test_three_tiers.py), pointed at the cluster
# through POLYSERVE_E2E_* variables.
#
# Needs: docker (a daemon you may use), kind, helm (`make helm` installs the pinned one), kubectl
# (the same place, or PATH), and the project's venv (`make install`).
#
# Environment:
#   KIND_CLUSTER             cluster name (default polyserve-e2e); an existing one is reused
#   KEEP_CLUSTER=1           leave the cluster (and the release) in place afterwards
#   POLYSERVE_E2E_NAMESPACE  the release's namespace (default polyserve)
#   POLYSERVE_E2E_RELEASE    the helm release (default ps)
#   POLYSERVE_E2E_TAG        the images' tag (default e2e)
#   PYTHON                   the interpreter with the project installed (default .venv/bin/python)
#   PYTEST_ARGS              extra pytest arguments
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cluster=${KIND_CLUSTER:-polyserve-e2e}
namespace=${POLYSERVE_E2E_NAMESPACE:-polyserve}
release=${POLYSERVE_E2E_RELEASE:-ps}
tag=${POLYSERVE_E2E_TAG:-e2e}
python=${PYTHON:-$root/.venv/bin/python}
helm_cache=${POLYSERVE_HELM_CACHE:-$HOME/.cache/polyserve-helm}/2.2.2/bin

operator_image=polyserve/polyserve-operator:$tag
router_image=polyserve/polyserve-router:$tag
engine_image=polyserve/polyserve-engine:$tag

log() { printf '[e2e-kind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'e2e-kind: %s\n' "$*" >&2; exit 2; }

# A tool from the helm cache (make helm), else from PATH.
tool() {
    local name=$1 explicit=${2:-}
    if [[ -n $explicit ]]; then
        printf '%s\n' "$explicit"
    elif [[ -x $helm_cache/$name ]]; then
        printf '%s\n' "$helm_cache/$name"
    elif command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
    fi
}

command -v docker >/dev/null 2>&1 \
    || die "docker is not installed: kind runs Kubernetes in Docker containers (https://docs.docker.com/get-docker/). Without Docker, 'make e2e' runs the same test on a local control plane."
docker info >/dev/null 2>&1 \
    || die "docker is installed but its daemon does not answer: start it, or add yourself to the docker group."
command -v kind >/dev/null 2>&1 \
    || die "kind is not installed (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)."
helm=$(tool helm "${POLYSERVE_HELM:-}")
[[ -n $helm ]] || die "helm not found: run 'make helm' (the pinned helm and kubectl), or put helm on PATH."
kubectl=$(tool kubectl "${KUBECTL:-}")
[[ -n $kubectl ]] || die "kubectl not found: run 'make helm' (it unpacks kubectl too), or put kubectl on PATH."
[[ -x $python ]] || die "$python not found: run 'make install' first."

workdir=$(mktemp -d "${TMPDIR:-/tmp}/polyserve-e2e-kind.XXXXXX")
kubeconfig=$workdir/kubeconfig
port_forward_pid=""
created_cluster=0

cleanup() {
    local status=$?
    if [[ -n $port_forward_pid ]]; then
        kill "$port_forward_pid" 2>/dev/null || true
        wait "$port_forward_pid" 2>/dev/null || true
    fi
    if [[ $status -ne 0 && -s $kubeconfig ]]; then
        log "failed: the release's pods and recent events"
        "$kubectl" --kubeconfig "$kubeconfig" -n "$namespace" get pods -o wide >&2 || true
        "$kubectl" --kubeconfig "$kubeconfig" -n "$namespace" get events \
            --sort-by=.lastTimestamp 2>/dev/null | tail -n 30 >&2 || true
        "$kubectl" --kubeconfig "$kubeconfig" -n "$namespace" logs \
            "deploy/$release-polyserve-operator" --tail 50 >&2 || true
    fi
    if [[ ${KEEP_CLUSTER:-0} == 1 ]]; then
        log "keeping cluster $cluster (kind delete cluster --name $cluster)"
    elif [[ $created_cluster == 1 ]]; then
        log "deleting cluster $cluster"
        kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
    fi
    rm -rf "$workdir"
    exit "$status"
}
trap cleanup EXIT

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    log "reusing kind cluster $cluster"
else
    log "creating kind cluster $cluster"
    kind create cluster --name "$cluster" --wait 180s
    created_cluster=1
fi
kind get kubeconfig --name "$cluster" >"$kubeconfig"

log "building $operator_image and $router_image"
docker build -f "$root/operator/Dockerfile" -t "$operator_image" "$root"
docker build -f "$root/router/Dockerfile" -t "$router_image" "$root"
# The router image runs `polyserve mock-engine` too: the engine pods' image under its own name.
docker tag "$router_image" "$engine_image"

log "loading the images into $cluster"
kind load docker-image --name "$cluster" "$operator_image" "$router_image" "$engine_image"

log "installing the chart as $release in $namespace"
"$helm" upgrade --install "$release" "$root/charts/polyserve" \
    --kubeconfig "$kubeconfig" \
    --namespace "$namespace" --create-namespace \
    -f "$root/tests/k8s/operator/e2e-values.yaml" \
    --set "operator.image.repository=${operator_image%:*}" --set "operator.image.tag=$tag" \
    --set "router.image.repository=${router_image%:*}" --set "router.image.tag=$tag" \
    --set image.pullPolicy=IfNotPresent \
    --wait --timeout 5m

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log "port-forwarding the router to 127.0.0.1:$port"
"$kubectl" --kubeconfig "$kubeconfig" -n "$namespace" port-forward \
    "svc/$release-polyserve-router" "$port:80" >"$workdir/port-forward.log" 2>&1 &
port_forward_pid=$!
forwarded=0
for _ in $(seq 1 60); do
    if "$python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "http://127.0.0.1:$port/health" 2>/dev/null; then
        forwarded=1
        break
    fi
    kill -0 "$port_forward_pid" 2>/dev/null \
        || die "kubectl port-forward exited: $(cat "$workdir/port-forward.log")"
    sleep 1
done
[[ $forwarded == 1 ]] || die "the router did not answer on 127.0.0.1:$port within 60 s"

log "running tests/k8s/operator/test_three_tiers.py against $cluster"
cd "$root"
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of words
POLYSERVE_E2E_KUBECONFIG=$kubeconfig \
POLYSERVE_E2E_NAMESPACE=$namespace \
POLYSERVE_E2E_RELEASE=$release \
POLYSERVE_E2E_ROUTER_URL=http://127.0.0.1:$port \
POLYSERVE_E2E_ENGINE_IMAGE=$engine_image \
    "$python" -m pytest -q tests/k8s/operator/test_three_tiers.py ${PYTEST_ARGS:-}
