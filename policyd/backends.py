"""Which kernel backend to use: `--backend nftables|iptables|auto` (wiring, effectful)."""

from __future__ import annotations

import re
from typing import Any

from .dataplane.backend import AnyBackend, AnyDialect

BACKENDS = ("nftables", "iptables")
CHOICES = (*BACKENDS, "auto")
NFT_TABLE_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def table_problem(kind: str, table: str) -> str | None:
    """Why `table` cannot be the name policyd owns with backend `kind` (None: it can)."""
    if kind == "iptables":
        from .ipt.layout import TABLE_RE

        if not TABLE_RE.match(table):
            return f"--table {table!r}: the iptables backend needs 1-8 characters of [a-z0-9], starting with a letter"
    elif not NFT_TABLE_RE.match(table):
        return f"--table {table!r}: an nftables table name of 1-32 characters of [a-z0-9_], starting with a letter"
    return None


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


def _classes(kind: str, table: str) -> tuple[type[Any], type[Any]]:
    """(dialect, backend) classes of `kind`, once `table` is known to be a valid name for it."""
    why = table_problem(kind, table)
    if why:
        raise ValueError(why)
    if kind == "iptables":
        from .ipt.backend import IptBackend, IptDialect

        return IptDialect, IptBackend
    from .nft.backend import NftBackend, NftDialect

    return NftDialect, NftBackend


def make_backend(kind: str, table: str) -> AnyBackend:
    """A backend of `kind` (nftables, iptables, or auto: resolved) owning `table`."""
    backend: AnyBackend = _classes(resolve(kind), table)[1](table)
    return backend


def make_dialect(kind: str, table: str) -> AnyDialect:
    """How backend `kind` (nftables or iptables, not auto) writes rulesets, without its
    kernel or tools: what `policyd render` prints."""
    dialect: AnyDialect = _classes(kind, table)[0](table)
    return dialect
