"""Small helpers several test modules share."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from policyd.dataplane.ops import STALE_DELAY
from policyd.lab.netns import entered

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_POLICY = ROOT / "examples" / "policies" / "allow-frontend-to-backend.yaml"  # the README's allow-frontend-to-backend


def settle(syncer: Any) -> Any:
    """One more sync, as if the chains flushed by earlier syncs had waited for their deletion
    (dataplane.ops.STALE_DELAY): afterwards the kernel holds exactly desired, no flushed
    chain left over. Returns the sync's result."""
    real = syncer.clock
    syncer.clock = lambda: real() + STALE_DELAY + 1
    try:
        return syncer.sync()
    finally:
        syncer.clock = real


ECHO_PORT = 9100


@contextmanager
def echo_servers(netns: str, family: int) -> Iterator[None]:
    """A TCP and a UDP echo server on ECHO_PORT in `netns` (threads; sockets made in the namespace)."""
    af, anyaddr = (socket.AF_INET, "0.0.0.0") if family == 4 else (socket.AF_INET6, "::")
    with entered(netns):
        tcp = socket.socket(af, socket.SOCK_STREAM)
        udp = socket.socket(af, socket.SOCK_DGRAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == 6:  # beside the IPv4 servers on the same port
        for s in (tcp, udp):
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    tcp.bind((anyaddr, ECHO_PORT))
    tcp.listen(16)
    udp.bind((anyaddr, ECHO_PORT))
    stop = threading.Event()

    def serve_tcp(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(64):
                    conn.sendall(data)
            except OSError:
                pass  # the client went (its socket closed after the test)

    def accept() -> None:
        tcp.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = tcp.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve_tcp, args=(conn,), daemon=True).start()

    def echo_udp() -> None:
        udp.settimeout(0.2)
        while not stop.is_set():
            try:
                data, peer = udp.recvfrom(64)
            except TimeoutError:
                continue
            udp.sendto(data, peer)

    threads = [threading.Thread(target=accept, daemon=True), threading.Thread(target=echo_udp, daemon=True)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join()
        tcp.close()
        udp.close()


class Flow:
    """One open connection from a pod's namespace: a TCP stream or a connected UDP flow."""

    def __init__(self, netns: str, ip: str, protocol: str) -> None:
        af = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with entered(netns):
            self.sock = socket.socket(af, socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM)
        self.sock.settimeout(1.0)
        self.sock.connect((ip, ECHO_PORT))
        self.name = f"{protocol} → {ip}"
        assert self.echoes(), f"{self.name}: no echo while allowed"

    def echoes(self, timeout: float = 1.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            self.sock.send(b"x")
            return self.sock.recv(64) == b"x"
        except (TimeoutError, ConnectionError):
            return False
