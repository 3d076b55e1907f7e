"""Which kernel backend to use: `--backend nftables|iptables|auto` (wiring, effectful)."""

from __future__ import annotations

from .dataplane.backend import Backend

KINDS = ("nftables", "iptables")
CHOICES = (*KINDS, "auto")


def nftables_usable() -> str | None:
    """None when libnftables loads and the kernel answers a listing; else why not."""
    try:
        from .nft.backend import Libnftables

        rc, _, err = Libnftables().run("list tables")
    except (RuntimeError, OSError) as e:
        return str(e)
    return None if rc == 0 else (err.strip() or f"libnftables returned {rc}")


def resolve(kind: str) -> str:
    """`auto` → nftables where it works, else iptables (legacy) where its tools exist."""
    if kind != "auto":
        if kind not in CHOICES:
            raise ValueError(f"--backend {kind!r}: choose one of {', '.join(CHOICES)}")
        return kind
    why = nftables_usable()
    if why is None:
        return "nftables"
    from .ipt.backend import missing_tools

    missing = missing_tools()
    if missing:
        raise RuntimeError(f"no usable backend: nftables ({why}), iptables (missing {', '.join(missing)})")
    return "iptables"


def make_backend(kind: str, table: str) -> Backend:
    """A backend of `kind` (resolved: nftables or iptables) owning `table`."""
    if resolve(kind) == "iptables":
        from .ipt.backend import IptBackend

        return IptBackend(table)
    from .nft.backend import NftBackend

    return NftBackend(table)
