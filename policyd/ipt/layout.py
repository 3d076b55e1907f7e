"""How policyd's objects are named in legacy iptables and ipset, and what one iptables rule can
say (the `Layout` the one renderer asks for).

* base chains `<P>-FORWARD` / `<P>-INPUT` (P = the table name in capitals), jumped to from
  the first position of the filter table's FORWARD / INPUT in both iptables and ip6tables;
* dispatch chains `<P>-EGRESS-IF` / `<P>-INGRESS-IF` (interface mode) or `<P>-EGRESS-V4` …
  (address mode): one `-i <iface> -j <pod chain>` (or `-s <addr>`) rule per local pod. They
  play the part of nft's verdict maps (`MapDef`); iptables has no map, so this is the one
  per-packet cost that grows with the number of *local* pods (not with policies or peers);
* per-pod chains `<P>-IN-<hash12>` / `<P>-OUT-<hash12>` (iptables caps chain names at 28
  characters, so the pod's name is in the rules' comments), in both families; a rule that
  names an address set goes only into the table of the set's family;
* ipsets named `<table>-sel-<hash16>-4|6` (`hash:ip`), `<table>-np-…` (`hash:ip,port`),
  `<table>-blk-…` (`hash:net`, the cidr with each `except` entered as `nomatch`),
  `<table>-nd-…` (`hash:ip`), `<table>-ifaces-4|6` and `<table>-addr-4|6` (`hash:net,iface`).
"""

from __future__ import annotations

import re

from ..compile.plan import SetSpec, set_kind
from ..dataplane.backend import OWNER_MARK
from ..dataplane.layout import COMMENT_TAG
from ..dataplane.objects import COMMENT_MAX, MapDef
from ..dataplane.rules import Side
from ..model.objects import Direction
from ..model.selectors import stable_hash

TABLE_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
BUILTIN = {"forward": "FORWARD", "input": "INPUT"}


def check_table(table: str) -> str:
    """The owner prefix of every chain and ipset. ipset names are capped at 31 characters
    and chain names at 28, so the prefix is short."""
    if not TABLE_RE.match(table):
        raise ValueError(f"--table {table!r}: the iptables backend needs 1-8 characters of [a-z0-9], starting with a letter")
    return table


def safe_comment(text: str) -> str:
    """Comments go into restore text inside double quotes: keep a plain alphabet."""
    return re.sub(r"[^A-Za-z0-9_./:,\[\]()+ -]", "_", text)


def ipset_family(family: int) -> str:
    return "inet" if family == 4 else "inet6"


class Names:
    """Kernel object names for one owner prefix (the table name): the iptables backend's
    `Layout`."""

    iface_families: tuple[int, ...] = (4, 6)  # ipsets are of one family
    port_slots: int | None = 15  # xt_multiport: 15 ports, a range counts twice
    icmp6_type_sets = False  # the icmp6 match takes one type
    nomatch = True  # hash:net holds an ipBlock's cidr and its excepts as nomatch entries
    counters = False  # iptables counts every rule
    end_return = True
    owner_mark = OWNER_MARK
    priorities = False  # the jump is first in FORWARD / INPUT

    def __init__(self, table: str) -> None:
        self.table = check_table(table)
        self.chain_prefix = table.upper() + "-"
        self.set_prefix = table + "-"

    def base_chain(self, hook: str) -> str:
        return f"{self.chain_prefix}{hook.upper()}"

    base = base_chain

    def dispatch_map(self, direction: Direction, key: str) -> str:
        return f"{self.chain_prefix}{direction.value.upper()}-{key.upper()}"

    dispatch = dispatch_map

    def dispatch_maps(self) -> dict[str, MapDef]:
        """Every dispatch chain either mode may have, as an empty map of its key."""
        out = {}
        for d in Direction:
            side = Side.SRC if d is Direction.EGRESS else Side.DST
            for key, fam in (("if", 0), ("v4", 4), ("v6", 6)):
                out[self.dispatch(d, key)] = MapDef(self.dispatch(d, key), side, fam)
        return out

    def pod_chain(self, pod_key: str, direction: Direction, kind: str = "") -> str:
        """`<P>-IN-<hash12>`; `<P>-INP-<hash12>` (kind "pass"): where an Admin Pass goes;
        `<P>-INA-<hash12>` (kind "audit"): audit mode."""
        letter = {"": "", "pass": "P", "audit": "A"}[kind]
        return f"{self.chain_prefix}{'IN' if direction is Direction.INGRESS else 'OUT'}{letter}-{stable_hash(pod_key, length=12)}"

    def set_name(self, spec: SetSpec, family: int) -> str:
        return f"{self.set_prefix}{set_kind(spec)}-{spec.digest}-{family}"  # at most 31 characters, ipset's limit

    spec_set = set_name

    def made_chain(self, name: str) -> bool:
        """Whether `name` is one of the chain names this prefix's renderer makes (not merely
        one that starts with the prefix)."""
        rest = name.removeprefix(self.chain_prefix)
        return rest != name and re.fullmatch(r"FORWARD|INPUT|DNS|(EGRESS|INGRESS)-(IF|V4|V6)|(IN|OUT)[PA]?-[0-9a-f]{12}", rest) is not None

    def made_set(self, name: str) -> bool:
        rest = name.removeprefix(self.set_prefix)
        return rest != name and re.fullmatch(r"(sel|np|blk|nd|fq)-[0-9a-f]{16}-[46]|(ifaces|addr|dns)-[46]", rest) is not None

    def iface_set(self, family: int) -> str:
        return f"{self.set_prefix}ifaces-{family}"

    ifaces = iface_set

    def addr_set(self, family: int) -> str:
        return f"{self.set_prefix}addr-{family}"

    def dns_set(self, family: int) -> str:
        return f"{self.set_prefix}dns-{family}"

    def dns_chain(self) -> str:
        return f"{self.chain_prefix}DNS"

    addrs = addr_set

    def comment(self, text: str) -> str:
        return safe_comment(text)[:COMMENT_MAX - COMMENT_TAG]
