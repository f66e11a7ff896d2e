"""A real Kubernetes control plane for tests and development, without Docker.

``etcd``, ``kube-apiserver`` and ``kube-controller-manager`` (built from Kubernetes' Go modules by
``make kube-build``) run on loopback; :class:`NodeAgent` stands in for scheduler, kubelet,
container runtime and kube-proxy. See ``tools/kube/README.md`` for what is real and what is not.

>>> with DevCluster() as cluster:          # doctest: +SKIP
...     api = cluster.api_client()          # a kubernetes.client.ApiClient (admin)
...     print(cluster.kubeconfig)           # or use the kubeconfig file
"""

from polyserve.devcluster.cluster import (
    BUILD_HINT,
    KUBE_VERSION,
    BinariesNotFoundError,
    DevCluster,
    DevClusterError,
    KubeBinaries,
    cache_bin_dir,
    dev_cluster,
    find_binaries,
)
from polyserve.devcluster.node_agent import (
    ANNOTATION_LOCAL_HOST,
    ANNOTATION_LOCAL_PID,
    ANNOTATION_LOCAL_PORT,
    Launcher,
    NodeAgent,
    NodeAgentConfig,
    mock_engine_launcher,
    no_process_launcher,
)

__all__ = [
    "ANNOTATION_LOCAL_HOST",
    "ANNOTATION_LOCAL_PID",
    "ANNOTATION_LOCAL_PORT",
    "BUILD_HINT",
    "KUBE_VERSION",
    "BinariesNotFoundError",
    "DevCluster",
    "DevClusterError",
    "KubeBinaries",
    "Launcher",
    "NodeAgent",
    "NodeAgentConfig",
    "cache_bin_dir",
    "dev_cluster",
    "find_binaries",
    "mock_engine_launcher",
    "no_process_launcher",
]
