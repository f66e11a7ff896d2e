"""Throwaway PKI for a loopback control plane, made with the ``openssl`` command.

Everything the control plane needs to run with TLS and real authentication, as kubeadm lays it
out: a cluster CA, the API server's serving certificate, client certificates for the admin (in
``system:masters``) and for kube-controller-manager (``system:kube-controller-manager``, which the
API server's bootstrap RBAC policy knows), and the key pair that signs service-account tokens.
The keys live only in the cluster's temporary directory and die with it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ClientCert", "Pki", "PkiError", "make_pki"]

_DAYS = "30"


class PkiError(RuntimeError):
    """openssl failed or is missing."""


@dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca_cert: Path
    ca_key: Path
    serving: ClientCert
    admin: ClientCert
    controller_manager: ClientCert
    front_proxy_ca_cert: Path
    front_proxy_client: ClientCert
    service_account_key: Path
    service_account_pub: Path


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise PkiError("the openssl command is needed to make the devcluster's certificates")
    proc = subprocess.run(
        [exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise PkiError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def _key(path: Path, cwd: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
             str(path), cwd=cwd)  # fmt: skip
    path.chmod(0o600)


def _self_signed_ca(key: Path, cert: Path, subject: str, cwd: Path) -> None:
    _key(key, cwd)
    _openssl("req", "-x509", "-new", "-key", str(key), "-subj", subject, "-days", _DAYS,
             "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
             "-out", str(cert), cwd=cwd)  # fmt: skip


def _signed(
    name: str, subject: str, ext: str, ca_cert: Path, ca_key: Path, cwd: Path
) -> ClientCert:
    key = cwd / f"{name}.key"
    csr = cwd / f"{name}.csr"
    cert = cwd / f"{name}.crt"
    extfile = cwd / f"{name}.ext"
    _key(key, cwd)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr), cwd=cwd)
    extfile.write_text(ext)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", _DAYS, "-sha256", "-extfile", str(extfile),
             "-out", str(cert), cwd=cwd)  # fmt: skip
    csr.unlink()
    extfile.unlink()
    return ClientCert(cert=cert, key=key)


def make_pki(directory: Path, service_ip: str = "10.0.0.1") -> Pki:
    """Create the CA, serving, client and service-account keys under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = directory / "ca.key"
    ca_cert = directory / "ca.crt"
    _self_signed_ca(ca_key, ca_cert, "/CN=polyserve-devcluster-ca", directory)

    client_ext = (
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n"
    )
    sans = ",".join(
        [
            "IP:127.0.0.1",
            f"IP:{service_ip}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    serving = _signed(
        "apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={sans}\n",
        ca_cert,
        ca_key,
        directory,
    )
    admin = _signed("admin", "/O=system:masters/CN=polyserve-admin", client_ext, ca_cert, ca_key,
                    directory)  # fmt: skip
    controller_manager = _signed(
        "controller-manager", "/CN=system:kube-controller-manager", client_ext, ca_cert, ca_key,
        directory,
    )  # fmt: skip

    # The aggregation layer's request-header authentication (kubeadm's front-proxy): its own
    # CA, so that no other client certificate can claim to be the front proxy.
    fp_key = directory / "front-proxy-ca.key"
    fp_cert = directory / "front-proxy-ca.crt"
    _self_signed_ca(fp_key, fp_cert, "/CN=polyserve-devcluster-front-proxy-ca", directory)
    front_proxy_client = _signed(
        "front-proxy-client", "/CN=front-proxy-client", client_ext, fp_cert, fp_key, directory
    )

    sa_key = directory / "sa.key"
    sa_pub = directory / "sa.pub"
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out",
             str(sa_key), cwd=directory)  # fmt: skip
    sa_key.chmod(0o600)
    _openssl("pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub), cwd=directory)
    return Pki(
        directory=directory,
        ca_cert=ca_cert,
        ca_key=ca_key,
        serving=serving,
        admin=admin,
        controller_manager=controller_manager,
        front_proxy_ca_cert=fp_cert,
        front_proxy_client=front_proxy_client,
        service_account_key=sa_key,
        service_account_pub=sa_pub,
    )
