"""``python -m polyserve.devcluster up``: a local control plane in the foreground.

Prints the kubeconfig path (``export KUBECONFIG=...``) and runs until Ctrl-C or SIGTERM, then
tears everything down.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from polyserve.devcluster.cluster import BinariesNotFoundError, DevCluster, DevClusterError
from polyserve.devcluster.node_agent import NodeAgentConfig, mock_engine_launcher


def _up(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workdir = Path(args.workdir) if args.workdir else None
    agent = NodeAgentConfig(gpus=args.gpus, launcher=mock_engine_launcher)
    try:
        cluster = DevCluster(
            workdir=workdir,
            node_agent=agent,
            start_node_agent=not args.no_node_agent,
            keep_workdir=args.keep,
            verbosity=args.v,
        )
    except BinariesNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("starting etcd, kube-apiserver, kube-controller-manager ...", file=sys.stderr)
    try:
        with cluster:
            print(f"API server: {cluster.server}", file=sys.stderr)
            print(f"logs:       {cluster.logs}", file=sys.stderr)
            print(f"export KUBECONFIG={cluster.kubeconfig}", file=sys.stderr)
            print(cluster.kubeconfig, flush=True)
            print("running; Ctrl-C stops and removes the cluster", file=sys.stderr)
            while not stop.wait(1.0):
                for name, proc in cluster.processes.items():
                    if not proc.alive():
                        print(f"error: {name} exited ({proc.returncode}):", file=sys.stderr)
                        print(proc.log_tail(), file=sys.stderr)
                        return 1
            print("stopping ...", file=sys.stderr)
    except DevClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m polyserve.devcluster",
        description="A real Kubernetes control plane on loopback (no Docker, no kubelet).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster in the foreground; print its kubeconfig")
    up.add_argument("--workdir", help="directory for certificates, etcd data, logs")
    up.add_argument("--keep", action="store_true", help="keep the workdir after stopping")
    up.add_argument("--gpus", type=int, default=8, help="nvidia.com/gpu on the node")
    up.add_argument("--no-node-agent", action="store_true", help="no node, pods stay Pending")
    up.add_argument("-v", type=int, default=1, help="control-plane log verbosity")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "up":
        return _up(args)
    return 2  # pragma: no cover - argparse rejects other commands


if __name__ == "__main__":
    sys.exit(main())
