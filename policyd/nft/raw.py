"""What libnftables cannot do for us, through raw nf_tables netlink batches (effectful).

* The rule that queues DNS answers to the agent (`names/`): on kernels without the nft
  `queue` expression (CONFIG_NFT_QUEUE off, as on these machines) the xtables NFQUEUE target
  runs through nft_compat, as iptables-nft writes it; libnftables can list such a rule but
  not write one. One rule, one expression: `target NFQUEUE` (revision 3).
* Learned set elements with a timeout, at the rate DNS answers come: one batch of a few
  hundred bytes, a fraction of what a libnftables command costs (its parser and cache).

Each call is one batch (NFNL_MSG_BATCH_BEGIN … END), answered by the kernel's ack, so an
error is the caller's and a success means the commit is done.
"""

from __future__ import annotations

import errno as errnos
import ipaddress
import socket
import struct

from ..dataplane.netlink import NLM_F_ACK, NLM_F_REQUEST, NetfilterSocket, attr, cstr, nested
from ..dataplane.rules import Rule

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWRULE, NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 6, 12, 14
NFPROTO_INET = 1
NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x200, 0x400, 0x800
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 1, 2, 4, 7
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_TARGET_NAME, NFTA_TARGET_REV, NFTA_TARGET_INFO = 1, 2, 3
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_TIMEOUT = 1, 4
NFTA_DATA_VALUE = 1
NFTNL_UDATA_RULE_COMMENT = 0
NFQ_FLAG_BYPASS = 0x01
_NFGEN = struct.Struct("=BBH")


def queue_rule_attrs(table: str, chain: str, rule: Rule, num: int, bypass: bool) -> bytes:
    """NEWRULE's attributes: `target NFQUEUE --queue-num num [--queue-bypass]` and the rule's
    comment (with its id) as libnftnl writes a comment into the rule's user data."""
    # xt_NFQ_info_v3 {queuenum, queues_total (1: this queue alone; 0 is refused), flags}, 8-aligned
    info = struct.pack("=HHH", num, 1, NFQ_FLAG_BYPASS if bypass else 0) + b"\0\0"
    target = nested(NFTA_LIST_ELEM, attr(NFTA_EXPR_NAME, cstr("target")),
                    nested(NFTA_EXPR_DATA, attr(NFTA_TARGET_NAME, cstr("NFQUEUE")), attr(NFTA_TARGET_REV, struct.pack(">I", 3)),
                           attr(NFTA_TARGET_INFO, info)))
    comment = cstr(rule.tagged_comment)
    udata = struct.pack("=BB", NFTNL_UDATA_RULE_COMMENT, len(comment)) + comment
    return (attr(NFTA_RULE_TABLE, cstr(table)) + attr(NFTA_RULE_CHAIN, cstr(chain)) + nested(NFTA_RULE_EXPRESSIONS, target)
            + attr(NFTA_RULE_USERDATA, udata))


def elements_attrs(table: str, name: str, addresses: list[tuple[str, float]], timeout: bool = True) -> bytes:
    """NEWSETELEM's (DELSETELEM's) attributes: each address (with its timeout, seconds)."""
    elems = b"".join(nested(NFTA_LIST_ELEM, nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, ipaddress.ip_address(a).packed)),
                            attr(NFTA_SET_ELEM_TIMEOUT, struct.pack(">Q", int(seconds * 1000))) if timeout else b"")
                     for a, seconds in addresses)
    return attr(NFTA_SET_ELEM_LIST_TABLE, cstr(table)) + attr(NFTA_SET_ELEM_LIST_SET, cstr(name)) + nested(NFTA_SET_ELEM_LIST_ELEMENTS, elems)


class RawNftables(NetfilterSocket):
    """nf_tables batches through a netfilter netlink socket of the namespace it was made in."""

    def _nft(self, kind: int, flags: int, body: bytes, family: int = NFPROTO_INET, res_id: int = 0) -> bytes:
        return self.message(kind, flags, _NFGEN.pack(family, 0, res_id) + body)

    def batch(self, changes: list[tuple[int, int, bytes]]) -> None:
        """Changes (message type, flags, attributes) in one batch, all or nothing; raises
        OSError with the kernel's errno when refused."""
        with self.lock:
            parts = [self._nft(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, b"", 0, socket.htons(NFNL_SUBSYS_NFTABLES))]
            first = self.seq + 1
            parts += [self._nft((NFNL_SUBSYS_NFTABLES << 8) | kind, NLM_F_REQUEST | NLM_F_ACK | flags, body)
                      for kind, flags, body in changes]
            waiting = set(range(first, self.seq + 1))
            parts.append(self._nft(NFNL_MSG_BATCH_END, NLM_F_REQUEST, b"", 0, socket.htons(NFNL_SUBSYS_NFTABLES)))
            self.sock.send(b"".join(parts))
            for _, code in self.acks(waiting):
                if code:
                    raise OSError(code, f"nf_tables refused the change: {errnos.errorcode.get(code, code)}")

    def add_queue_rule(self, table: str, chain: str, rule: Rule, num: int, bypass: bool) -> None:
        self.batch([(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, queue_rule_attrs(table, chain, rule, num, bypass))])

    def add_elements(self, table: str, entries: dict[str, list[tuple[str, float]]]) -> None:
        """Add (or refresh the timeout of) addresses in sets created with timeouts, in one batch."""
        self.batch([(NFT_MSG_NEWSETELEM, NLM_F_CREATE, elements_attrs(table, name, items)) for name, items in entries.items()])

    def delete_elements(self, table: str, entries: dict[str, list[str]]) -> None:
        """Remove addresses (each one that is there) from sets, in one batch."""
        self.batch([(NFT_MSG_DELSETELEM, 0, elements_attrs(table, name, [(a, 0) for a in items], timeout=False))
                    for name, items in entries.items()])

