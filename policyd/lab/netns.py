"""Network namespaces we create and always remove: the only place tests and the lab touch
the kernel's network configuration. Every name carries a caller-chosen prefix."""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def ip(*args: str, ns: str | None = None) -> None:
    sh("ip", *args, ns=ns)


def sysctl(ns: str, key: str, value: str) -> None:
    sh("sysctl", "-qw", f"{key}={value}", ns=ns)


def list_namespaces(prefix: str, exact: bool = False) -> list[str]:
    out = sh("ip", "netns", "list").stdout
    names = [line.split()[0] for line in out.splitlines() if line.split()]
    return [n for n in names if (n == prefix if exact else n.startswith(prefix))]


def add_namespace(name: str) -> None:
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", ns=name)
    # No duplicate address detection: addresses (link-local ones too) are usable at once,
    # instead of ~1 s after the link comes up.
    for scope in ("all", "default"):
        sysctl(name, f"net.ipv6.conf.{scope}.accept_dad", "0")


def delete_namespaces(prefix: str, exact: bool = False) -> None:
    """Remove every namespace with this prefix (or exactly this name), killing the processes
    inside first; links inside go with the namespace."""
    for name in list_namespaces(prefix, exact):
        pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        sh("ip", "netns", "delete", name, check=False)


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the block with this thread inside namespace `name`, and always come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        yield
    finally:
        if _libc.setns(home, CLONE_NEWNET) != 0:  # pragma: no cover - would be fatal
            os._exit(99)
        os.close(target)
        os.close(home)


def http_get(ns: str, url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET `url` from inside namespace `ns`: (status, body); status 0 when nothing answered."""
    import urllib.error
    import urllib.request

    with entered(ns):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return 0, str(e)
