"""The reachability matrix of a set of pods, from the engine (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from ..model.objects import Pod
from .engine import Compiler
from .evaluate import Endpoint, Evaluator


@dataclass(frozen=True)
class Matrix:
    protocol: str
    port: int | None
    pods: list[str]
    allowed: dict[str, list[str]]  # from → every pod it may open a connection to
    targets: list[str] | None = None  # destinations considered (None: all of `pods`)

    def to_json(self) -> dict:
        return {"protocol": self.protocol, "port": self.port, "pods": self.pods, "allowed": self.allowed}

    def is_allowed(self, src: str, dst: str) -> bool:
        return dst in self.allowed.get(src, ())


def endpoint(pod: Pod) -> Endpoint:
    """A pod is probed at its first address (IPv4 first when dual-stack)."""
    ip = sorted(pod.ips, key=lambda a: a.version)[0]
    return Endpoint(ip, pod)


def compute(compiler: Compiler, pods: list[Pod], protocol: str = "TCP", port: int | None = 80) -> Matrix:
    """A pod always reaches itself: that traffic stays on its own loopback."""
    ev = Evaluator(compiler)
    reachable = sorted((p for p in pods if p.addressable), key=lambda p: p.key)
    eps = {p.key: endpoint(p) for p in reachable}
    allowed: dict[str, list[str]] = {}
    for src in reachable:
        allowed[src.key] = [
            dst.key
            for dst in reachable
            if dst.key == src.key or ev.verdict(eps[src.key], eps[dst.key], protocol, port).allowed
        ]
    return Matrix(protocol, port if protocol != "ICMP" else None, [p.key for p in reachable], allowed)
