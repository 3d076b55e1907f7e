"""The cluster's certificates: one generated CA, a serving certificate for the API server
and each kubelet, client certificates for every component, the ServiceAccount signing
key. Made with the openssl command line (EC P-256, fast); nothing skips verification."""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    proc = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args[:2]))}: {proc.stderr.strip()}")


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    path.chmod(0o600)


class PKI:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = Cert(self.dir / "ca.crt", self.dir / "ca.key")
        if not self.ca.cert.exists():
            _key(self.ca.key)
            _openssl("req", "-x509", "-new", "-key", self.ca.key, "-subj", "/CN=policyd-cluster-ca", "-days", "30",
                     "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                     "-out", self.ca.cert)
        self.sa_key = self.dir / "sa.key"
        self.sa_pub = self.dir / "sa.pub"
        if not self.sa_key.exists():
            _key(self.sa_key)
            _openssl("pkey", "-in", self.sa_key, "-pubout", "-out", self.sa_pub)

    def issue(self, name: str, cn: str, orgs: tuple[str, ...] = (), server_names: tuple[str, ...] = (),
              client: bool = True) -> Cert:
        """A leaf certificate signed by the CA; `server_names` (DNS names or IPs) make it a
        serving certificate too."""
        out = Cert(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        if out.cert.exists():
            return out
        _key(out.key)
        subject = "".join(f"/O={o}" for o in orgs) + f"/CN={cn}"
        usages = (["clientAuth"] if client else []) + (["serverAuth"] if server_names else [])
        ext = self.dir / f"{name}.ext"
        lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
                 f"extendedKeyUsage={','.join(usages)}"]
        if server_names:
            sans = [("IP:" if _is_ip(n) else "DNS:") + n for n in server_names]
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        csr = self.dir / f"{name}.csr"
        _openssl("req", "-new", "-key", out.key, "-subj", subject, "-out", csr)
        _openssl("x509", "-req", "-in", csr, "-CA", self.ca.cert, "-CAkey", self.ca.key, "-CAcreateserial",
                 "-days", "30", "-extfile", ext, "-out", out.cert)
        csr.unlink()
        ext.unlink()
        return out

    def kubeconfig(self, path: Path, server: str, user: str, cert: Cert) -> Path:
        """A kubeconfig with everything embedded (so it can be copied anywhere)."""
        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "policyd",
            "clusters": [{"name": "policyd", "cluster": {"server": server, "certificate-authority-data": b64(self.ca.cert)}}],
            "users": [{"name": user, "user": {"client-certificate-data": b64(cert.cert), "client-key-data": b64(cert.key)}}],
            "contexts": [{"name": "policyd", "context": {"cluster": "policyd", "user": user}}],
        }))
        path.chmod(0o600)
        return path


def _is_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False
