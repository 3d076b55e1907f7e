"""Which policyd agent owns a ruleset in this network namespace, for `policyd cleanup`.

A running agent holds an abstract Unix socket named after its backend and table. Abstract
sockets belong to the network namespace they are bound in, and the kernel releases one the
moment its holder dies (SIGKILL included), so there is no file to leave stale: the name is
taken exactly while an agent for that ruleset lives in this namespace. `policyd cleanup`
refuses while it is taken, since the agent would re-create what cleanup removes; a second
agent for the same ruleset waits for the first to end instead of fighting it.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable


def _address(backend: str, table: str) -> str:
    return f"\0policyd-agent/{backend}/{table}"


def claim(backend: str, table: str) -> socket.socket | None:
    """The claim on (backend, table) in this namespace, held while the socket stays open;
    None if another process holds it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(_address(backend, table))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            return None
        raise  # not "held by another agent": say what really failed
    return sock


def held(backend: str, table: str) -> bool:
    """Whether a running agent holds (backend, table) in this namespace."""
    sock = claim(backend, table)
    if sock is None:
        return True
    sock.close()
    return False


def wait_to_claim(backend: str, table: str, say: Callable[[str], None], every: float = 30.0) -> socket.socket:
    """The claim, once no other agent holds it (saying so now and every `every` seconds):
    during a rolling update the next agent starts only when the last one has ended."""
    waited = 0.0
    while (sock := claim(backend, table)) is None:
        if waited % every == 0:
            say(f"another policyd agent runs the {backend} ruleset {table!r} in this network namespace: "
                f"waiting for it to end ({waited:.0f} s so far)")
        time.sleep(0.5)
        waited += 0.5
    return sock
