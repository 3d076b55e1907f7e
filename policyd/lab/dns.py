"""The lab's DNS server: CoreDNS (built from its Go module by scripts/coredns-build.sh), in a
pod of its own (`kube-system/lab-dns`, labelled `k8s-app: kube-dns`, as a cluster's DNS
pods are), serving the records of `lab up --dns-zone FILE`.

FILE is in the standard master-file format (RFC 1035 lines such as
`api.example.test. 30 IN A 10.244.1.20`; `$TTL` and `$ORIGIN` accepted; several zones in one
file allowed). It is read with dnspython and served as one zone of the root, so names of any
zone in it resolve, CNAME chains across them included. Addresses outside the lab's pod
ranges are the lab's external hosts (lab.external).
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zone

ROOT = Path(__file__).resolve().parents[2]
COREDNS_MOD = ROOT / "realcluster" / "coredns" / "go.mod"
NAMESPACE, NAME = "kube-system", "lab-dns"
LABELS = {"k8s-app": "kube-dns"}
SOA = ". 30 IN SOA lab-dns.kube-system. hostmaster.lab. 1 7200 3600 1209600 30\n. 30 IN NS lab-dns.kube-system.\n"
# The DNS server's pod, as a cluster's CoreDNS pods are labelled (a policy's DNS rule selects
# them by `k8s-app: kube-dns` in kube-system); scheduled like any pod without a node.
POD_MANIFEST = f"""apiVersion: v1
kind: Pod
metadata: {{name: {NAME}, namespace: {NAMESPACE}, labels: {{k8s-app: kube-dns}}}}
spec:
  containers:
  - name: coredns
    ports:
    - {{name: dns, containerPort: 53, protocol: UDP}}
    - {{name: dns-tcp, containerPort: 53, protocol: TCP}}
"""
EXTERNAL_TCP = (80, 443)  # what the external hosts serve
EXTERNAL_UDP = (80,)


class ZoneError(ValueError):
    pass


@dataclass(frozen=True)
class Zone:
    text: str  # the root zone CoreDNS serves
    addresses: tuple[str, ...]  # every A and AAAA address in it
    names: tuple[str, ...]


def read_zone(path: str) -> Zone:
    """FILE → the root zone to serve; ZoneError with the file and line on bad input."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ZoneError(f"{path}: {e.strerror or e}") from None
    try:
        zone = dns.zone.from_text(text, origin=dns.name.root, relativize=False, check_origin=False, filename=path)
    except dns.exception.DNSException as e:
        raise ZoneError(f"{path}: {e}") from None
    addresses, names = [], []
    for name, node in zone.nodes.items():
        for rds in node.rdatasets:
            if rds.rdclass != dns.rdataclass.IN:
                raise ZoneError(f"{path}: {name}: class {dns.rdataclass.to_text(rds.rdclass)}; the lab serves IN only")
            if rds.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                addresses += [r.address for r in rds]
            if rds.rdtype in (dns.rdatatype.SOA, dns.rdatatype.NS) and name == dns.name.root:
                raise ZoneError(f"{path}: the root's SOA and NS are the lab's own")
        names.append(name.to_text(omit_final_dot=True))
    if not names:
        raise ZoneError(f"{path}: no records")
    return Zone(SOA + zone.to_text(relativize=False), tuple(dict.fromkeys(addresses)), tuple(sorted(names)))


def coredns_version() -> str:
    """The CoreDNS release pinned in realcluster/coredns/go.mod."""
    return next(line.split()[2] for line in COREDNS_MOD.read_text().splitlines() if line.startswith("require github.com/coredns/coredns"))


def coredns_binary() -> Path:
    """CoreDNS of the pinned version, built now if missing (scripts/coredns-build.sh)."""
    binary = ROOT / ".tools" / "coredns" / coredns_version() / "coredns"
    if not binary.exists():
        subprocess.run([str(ROOT / "scripts" / "coredns-build.sh")], check=True)
    return binary


def start(netns: str, state: Path, zone: Zone) -> subprocess.Popen[bytes]:
    """CoreDNS in `netns`, answering on port 53 (UDP and TCP) of every address there."""
    state.mkdir(parents=True, exist_ok=True)
    (state / "db.root").write_text(zone.text)
    (state / "Corefile").write_text(f". {{\n    file {state / 'db.root'} .\n    errors\n}}\n")
    log = open(state / "coredns.log", "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(["ip", "netns", "exec", netns, str(coredns_binary()), "-conf", str(state / "Corefile")],
                            stdout=log, stderr=log, start_new_session=True, cwd=state)


def wait_serving(netns: str, addresses: list[str], proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Until CoreDNS listens on port 53 in its namespace (it reads its zone first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"CoreDNS exited ({proc.returncode}); see its log in the lab's dns/ directory")
        got = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Hlnu", "sport", "=", ":53"], capture_output=True, text=True)
        if got.stdout.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"CoreDNS did not listen on port 53 of {', '.join(addresses)} within {timeout:.0f} s")


def external(addresses: tuple[str, ...], pod_ranges: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> list[str]:
    """The zone's addresses outside the lab's pod ranges: the hosts the lab serves outside."""
    return [a for a in addresses if not any(ipaddress.ip_address(a) in r for r in pod_ranges if r.version == ipaddress.ip_address(a).version)]

