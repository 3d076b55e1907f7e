"""How policyd's objects are named in table `inet policyd`, and what one nftables rule can say
(the `Layout` the one renderer asks for)."""

from __future__ import annotations

from ..compile.plan import SetSpec, set_kind
from ..dataplane.layout import COMMENT_TAG
from ..dataplane.objects import COMMENT_MAX
from ..model.objects import Direction
from ..model.selectors import stable_hash

BASE_CHAINS = {"forward": "forward-hook", "input": "input-hook"}


class NftLayout:
    iface_families: tuple[int, ...] = (0,)  # an inet table: one interface set serves both families
    port_slots: int | None = None  # an anonymous set holds any number of ports
    icmp6_type_sets = True
    nomatch = False  # interval sets hold the computed prefixes of an ipBlock
    counters = True  # a rule counts only with a `counter` statement
    end_return = False  # a base chain's policy accepts
    owner_mark = ""  # the table's comment carries it
    priorities = True

    def set_name(self, spec: SetSpec, family: int) -> str:
        return f"{set_kind(spec)}-{spec.digest}-v{family}"

    def pod_chain(self, pod_key: str, direction: Direction, kind: str = "") -> str:
        """`pod-in-<hash8>-<ns>/<pod>` (`pod-inpass-…`: where an Admin Pass goes; `pod-inaudit-…`:
        audit mode): a `/` never occurs in Kubernetes names, so ownership is a pattern test; the
        hash keeps truncated names unique (nft caps names at 256)."""
        prefix = ("in" if direction is Direction.INGRESS else "out") + kind
        return f"pod-{prefix}-{stable_hash(pod_key, length=8)}-{pod_key}"[:240]

    def dispatch_map(self, direction: Direction, key: str) -> str:
        return f"pod-{direction.value}-{key}"

    def base_chain(self, hook: str) -> str:
        return BASE_CHAINS[hook]

    def iface_set(self, family: int) -> str:
        return "pod-ifaces"

    def addr_set(self, family: int) -> str:
        return f"pod-addr-v{family}"

    def dns_set(self, family: int) -> str:
        return f"pod-dns-v{family}"

    def dns_chain(self) -> str:
        return "dns-answers"

    def comment(self, text: str) -> str:
        return text[:COMMENT_MAX - COMMENT_TAG]


LAYOUT = NftLayout()
