"""What the one renderer (`dataplane.render`) asks of a backend: the names of its objects and
what its kernel can say in one rule. Each backend provides one `Layout`; nothing else of a
backend reaches the rendering."""

from __future__ import annotations

from typing import Protocol

from ..compile.plan import SetSpec
from ..model.objects import Direction

COMMENT_TAG = len(" (r:") + 16 + len(")")  # rules.Rule.tagged_comment adds this


class Layout(Protocol):
    # --- names ---
    def set_name(self, spec: SetSpec, family: int) -> str: ...

    def pod_chain(self, pod_key: str, direction: Direction, kind: str = "") -> str:
        """A pod's chain in one direction; kind "pass" (where an Admin Pass goes) or "audit"."""

    def dispatch_map(self, direction: Direction, key: str) -> str:
        """The dispatch map of a direction, by key kind: "if", "v4" or "v6"."""

    def base_chain(self, hook: str) -> str: ...

    def iface_set(self, family: int) -> str:
        """The set of local pods' interfaces that rules of `family` name (see iface_families)."""

    def addr_set(self, family: int) -> str:
        """The set of (interface, address) of local pods, for anti-spoofing."""

    def dns_set(self, family: int) -> str:
        """The set of addresses of local pods a domainNames rule selects (their DNS answers are
        queued to the agent)."""

    def dns_chain(self) -> str:
        """The chain whose one rule queues DNS answers to the agent."""

    def comment(self, text: str) -> str:
        """`text` in the backend's comment alphabet, cut to leave room for the id tag."""

    # --- what one rule can say ---
    iface_families: tuple[int, ...]  # (0,): one interface set for both families; (4, 6): one each
    port_slots: int | None  # ports one rule can match (a range counts twice); None: any number
    icmp6_type_sets: bool  # one rule matches a set of ICMPv6 types (else one rule per type)
    nomatch: bool  # an ipBlock is its cidr with each except `nomatch` (else the computed intervals)
    counters: bool  # counting is an option of the rule (else the kernel counts every rule)
    end_return: bool  # base chains end in an explicit return
    owner_mark: str  # put into the comment of each base chain's first rule ("" for none)
    priorities: bool  # base chains hook in at a priority (else: first in the built-in chain)
