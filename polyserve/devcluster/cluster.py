"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

The binaries come from ``tools/kube/build.sh`` (``make kube-build``), which compiles them from
Kubernetes' own Go modules into a cache outside the repository. :class:`DevCluster` starts them
on free 127.0.0.1 ports with TLS, client-certificate authentication and RBAC, waits until the API
server's ``/readyz`` answers and the controller-manager has done real work, writes an admin
kubeconfig, optionally starts the :class:`~polyserve.devcluster.node_agent.NodeAgent` (the
stand-in for kubelet and scheduler), and tears everything down on exit, also when the code inside
the ``with`` block raises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from polyserve.devcluster.certs import Pki, make_pki
from polyserve.devcluster.node_agent import NodeAgent, NodeAgentConfig
from polyserve.devcluster.procs import ManagedProcess, free_port

__all__ = [
    "BUILD_HINT",
    "KUBE_VERSION",
    "BinariesNotFoundError",
    "DevCluster",
    "DevClusterError",
    "KubeBinaries",
    "cache_bin_dir",
    "dev_cluster",
    "find_binaries",
]

# Keep equal to the k8s.io/kubernetes version pinned in tools/kube/go.mod (a test checks).
KUBE_VERSION = "v1.33.13"

SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"
BUILD_HINT = (
    "Kubernetes binaries not built: run `make kube-build` (tools/kube/build.sh; "
    "needs Go >= 1.24 and the Go module proxy; ~6 min cold on 2 cores) "
    "or point POLYSERVE_KUBE_BIN at a directory holding etcd, kube-apiserver and "
    "kube-controller-manager"
)


class DevClusterError(RuntimeError):
    """The control plane did not come up (the message carries the relevant log tail)."""


class BinariesNotFoundError(DevClusterError):
    """etcd / kube-apiserver / kube-controller-manager are not built."""


@dataclass(frozen=True)
class KubeBinaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path


def cache_bin_dir(version: str = KUBE_VERSION) -> Path:
    """Where tools/kube/build.sh puts the binaries for ``version``."""
    root = os.environ.get("POLYSERVE_KUBE_CACHE") or str(Path.home() / ".cache" / "polyserve-kube")
    return Path(root) / version / "bin"


def find_binaries() -> KubeBinaries:
    """Locate the binaries: ``$POLYSERVE_KUBE_BIN``, else the build cache.

    Raises :class:`BinariesNotFoundError` (with the command that builds them) when absent.
    """
    explicit = os.environ.get("POLYSERVE_KUBE_BIN")
    directory = Path(explicit) if explicit else cache_bin_dir()
    paths = KubeBinaries(
        etcd=directory / "etcd",
        kube_apiserver=directory / "kube-apiserver",
        kube_controller_manager=directory / "kube-controller-manager",
    )
    missing = [
        p.name
        for p in (paths.etcd, paths.kube_apiserver, paths.kube_controller_manager)
        if not (p.is_file() and os.access(p, os.X_OK))
    ]
    if missing:
        raise BinariesNotFoundError(f"{BUILD_HINT} (missing in {directory}: {', '.join(missing)})")
    return paths


def _kubeconfig(server: str, ca: Path, cert: Path, key: Path, user: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "polyserve-dev",
                "cluster": {"server": server, "certificate-authority": str(ca)},
            }
        ],
        "users": [
            {"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}
        ],
        "contexts": [
            {"name": "polyserve-dev", "context": {"cluster": "polyserve-dev", "user": user}}
        ],
        "current-context": "polyserve-dev",
    }


class DevCluster:
    """etcd + kube-apiserver + kube-controller-manager (+ the node agent) on loopback.

    Use as a context manager (``with DevCluster() as cluster: ...``) or call :meth:`start` and
    :meth:`stop`. ``cluster.kubeconfig`` is an admin kubeconfig (``system:masters``).
    """

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        binaries: KubeBinaries | None = None,
        node_agent: NodeAgentConfig | None = None,
        start_node_agent: bool = True,
        startup_timeout_s: float = 180.0,
        keep_workdir: bool = False,
        verbosity: int = 1,
    ) -> None:
        self.binaries = binaries or find_binaries()
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="polyserve-devcluster-"))
        self.keep_workdir = keep_workdir
        self.startup_timeout_s = startup_timeout_s
        self.verbosity = verbosity
        self.node_agent_config = node_agent or NodeAgentConfig()
        self.start_node_agent = start_node_agent
        self.logs = self.workdir / "logs"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.processes: dict[str, ManagedProcess] = {}
        self.node_agent: NodeAgent | None = None
        self.pki: Pki | None = None
        self.etcd_port = 0
        self.apiserver_port = 0
        self.controller_manager_port = 0
        self._started = False

    # ----------------------------------------------------------------------------------------
    # public surface

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def api_client(self) -> Any:
        """A fresh ``kubernetes.client.ApiClient`` logged in as the admin."""
        from kubernetes import config

        factory: Any = config.new_client_from_config
        return factory(config_file=str(self.kubeconfig))

    def start(self) -> DevCluster:
        if self._started:
            return self
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the node agent (and its engines), then the control plane; idempotent."""
        if self.node_agent is not None:
            self.node_agent.stop()
            self.node_agent = None
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self.processes.pop(name, None)
            if proc is not None:
                proc.stop(grace_s=10.0)
        if self._own_workdir and not self.keep_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> DevCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, name: str, max_bytes: int = 4000) -> str:
        path = self.logs / f"{name}.log"
        try:
            return path.read_bytes()[-max_bytes:].decode("utf-8", errors="replace")
        except OSError:
            return ""

    # ----------------------------------------------------------------------------------------
    # startup

    def _start(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = make_pki(self.workdir / "pki", service_ip=SERVICE_IP)
        self._start_etcd()
        self._wait("etcd", self._etcd_healthy, deadline)
        self._start_apiserver()
        self._wait("kube-apiserver", self._apiserver_ready, deadline)
        self._write_kubeconfigs()
        self._start_controller_manager()
        self._wait("kube-controller-manager", self._controller_manager_healthy, deadline)
        # Proof that the controllers run (and that pods can be admitted in "default"):
        # the serviceaccount controller creates the namespace's default ServiceAccount.
        self._wait("kube-controller-manager", self._default_service_account_exists, deadline)
        if self.start_node_agent:
            config = self.node_agent_config
            if config.log_dir is None:  # the pods' process logs next to the control plane's
                config = dataclasses.replace(config, log_dir=self.logs / "pods")
            self.node_agent = NodeAgent(self.api_client(), config)
            self.node_agent.start()
            self._wait("node agent", self.node_agent.node_ready, deadline)

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.processes[name] = ManagedProcess(name, argv, self.logs / f"{name}.log")

    def _start_etcd(self) -> None:
        self.etcd_port = free_port()
        peer_port = free_port()
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=devcluster",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=devcluster={peer}",
                "--initial-cluster-state=new",
                # A throwaway test store: skip fsync (much faster on CI disks).
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> None:
        assert self.pki is not None
        pki = self.pki
        self.apiserver_port = free_port()
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving.cert}",
                f"--tls-private-key-file={pki.serving.key}",
                f"--client-ca-file={pki.ca_cert}",
                "--authorization-mode=RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--service-account-key-file={pki.service_account_pub}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                # The "kubernetes" Service would get the advertise address (127.0.0.1) as its
                # endpoint, which Endpoints validation rejects (loopback); nothing needs it here.
                "--endpoint-reconciler-type=none",
                # Request-header (front-proxy) authentication, as kubeadm sets it up; the
                # controller-manager's delegated authentication reads this CA.
                f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
                f"--proxy-client-key-file={pki.front_proxy_client.key}",
                "--allow-privileged=true",
                "--profiling=false",
                f"--v={self.verbosity}",
            ],
        )

    def _write_kubeconfigs(self) -> None:
        assert self.pki is not None
        pki = self.pki
        # JSON is YAML: kubectl, client-go and the Python client all read this.
        admin = _kubeconfig(
            self.server, pki.ca_cert, pki.admin.cert, pki.admin.key, "polyserve-admin"
        )
        self.kubeconfig.write_text(json.dumps(admin, indent=2) + "\n")
        cm = _kubeconfig(
            self.server,
            pki.ca_cert,
            pki.controller_manager.cert,
            pki.controller_manager.key,
            "system:kube-controller-manager",
        )
        (self.workdir / "controller-manager.kubeconfig").write_text(json.dumps(cm, indent=2))

    def _start_controller_manager(self) -> None:
        assert self.pki is not None
        pki = self.pki
        cm_kubeconfig = self.workdir / "controller-manager.kubeconfig"
        self.controller_manager_port = free_port()
        self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={cm_kubeconfig}",
                f"--authentication-kubeconfig={cm_kubeconfig}",
                f"--authorization-kubeconfig={cm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.controller_manager_port}",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                "--leader-elect=false",
                # As kubeadm: each controller talks to the API with its own service account.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*",
                "--profiling=false",
                f"--v={self.verbosity}",
            ],
        )

    # ----------------------------------------------------------------------------------------
    # readiness probes (each returns True when ready; False or an exception when not yet)

    def _wait(self, what: str, probe: Callable[[], bool], deadline: float) -> None:
        last_error = ""
        while True:
            for name, proc in self.processes.items():
                if not proc.alive():
                    raise DevClusterError(
                        f"{name} exited with status {proc.returncode} while waiting for "
                        f"{what}; log {proc.log_path}:\n{proc.log_tail()}"
                    )
            try:
                if probe():
                    return
            except Exception as exc:  # not ready yet; keep the reason for the timeout message
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- {name} ({proc.log_path}):\n{proc.log_tail(2000)}"
                    for name, proc in self.processes.items()
                )
                raise DevClusterError(
                    f"timed out after {self.startup_timeout_s:.0f}s waiting for {what} "
                    f"(last error: {last_error or 'none'})\n{tails}"
                )
            time.sleep(0.2)

    def _etcd_healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.etcd_port}/health"
        with urllib.request.urlopen(url, timeout=2) as resp:
            body = json.loads(resp.read())
        return bool(body.get("health") == "true")

    def _admin_tls(self) -> ssl.SSLContext:
        assert self.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.admin.cert), str(self.pki.admin.key))
        return ctx

    def _apiserver_ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"{self.server}/readyz", timeout=5, context=self._admin_tls()
            ) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError as exc:  # 500 lists the checks still failing
            detail = exc.read().decode("utf-8", errors="replace")
            failing = [line for line in detail.splitlines() if "failed" in line]
            raise DevClusterError("not ready: " + "; ".join(failing)) from None

    def _controller_manager_healthy(self) -> bool:
        # kube-controller-manager serves with a self-signed certificate it made itself;
        # /healthz is on its always-allowed paths.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        url = f"https://127.0.0.1:{self.controller_manager_port}/healthz"
        with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
            return bool(resp.status == 200)

    def _default_service_account_exists(self) -> bool:
        req = urllib.request.Request(
            f"{self.server}/api/v1/namespaces/default/serviceaccounts/default"
        )
        try:
            with urllib.request.urlopen(req, timeout=5, context=self._admin_tls()) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise


@contextlib.contextmanager
def dev_cluster(**kwargs: Any) -> Iterator[DevCluster]:
    """``with dev_cluster() as cluster:`` — :class:`DevCluster` as a context manager."""
    cluster = DevCluster(**kwargs)
    with cluster:
        yield cluster
