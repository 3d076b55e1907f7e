"""What a lab is, as `lab.json` records it (nodes, pods, their processes), and whether a
recorded process still runs."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class LabError(Exception):
    """A lab request that cannot be done as asked; nothing (more) was changed."""


@dataclass
class PodRecord:
    key: str
    node: str
    netns: str
    host_if: str
    ips: list[str]
    control: str
    tcp: list[int]
    udp: list[int]
    sctp: list[int]
    pid: int | None = None


@dataclass
class NodeRecord:
    name: str
    index: int
    cidr: str
    netns: str
    agent_pid: int | None = None


@dataclass
class LabRecord:
    name: str
    topology: str
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    pods: dict[str, PodRecord] = field(default_factory=dict)
    created: float = 0.0
    backend: str = "nftables"
    ip_family: str = "ipv4"  # ipv4, ipv6 or dual (policyd.lab.families); labs made before it are ipv4
    # `lab up --dns-zone`: the DNS pod (its key, addresses, CoreDNS's pid), the external hosts'
    # addresses and their process; None: no DNS server (and the agents learn no names).
    dns: dict[str, Any] | None = None

    @property
    def mode(self) -> str:
        return "interface" if self.topology == "routed" else "address"

    @staticmethod
    def from_json(doc: dict[str, Any]) -> LabRecord:
        return LabRecord(
            doc["name"], doc["topology"],
            {k: NodeRecord(**v) for k, v in doc["nodes"].items()},
            {k: PodRecord(**v) for k, v in doc["pods"].items()},
            doc.get("created", 0.0),
            doc.get("backend", "nftables"),
            doc.get("ip_family", "ipv4"),
            doc.get("dns"),
        )

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "topology": self.topology, "created": self.created, "backend": self.backend,
                "ip_family": self.ip_family, "nodes": {k: asdict(v) for k, v in self.nodes.items()}, "pods": {k: asdict(v) for k, v in self.pods.items()},
                **({"dns": self.dns} if self.dns is not None else {})}


def alive(pid: int | None) -> bool:
    """Running, and not a zombie: an agent that crashed stays a zombie until its parent (the
    process that ran `lab up`) reaps it, and signal 0 still reaches a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def is_ours(pid: int) -> bool:
    """A recorded pid may have been reused by another program: signal only ours."""
    try:
        return b"policyd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
