"""NFQUEUE, from the agent's side (effectful): a netlink socket bound to one queue in the
calling thread's network namespace (the node's), the packets it hands over, and the verdict
for each (linux/netfilter/nfnetlink_queue.h).

The queue copies whole packets (up to 65,535 bytes: a DNS answer of any size; conntrack has
reassembled fragments before the filter hooks). With `fail_open` the kernel lets packets
pass while the queue is full instead of dropping them (NFQA_CFG_F_FAIL_OPEN); what happens
when no program listens is the rule's (`--queue-bypass`, dataplane.config.Fqdn).
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from ..observe.netlink import Subscription, messages

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_PAYLOAD = 1, 2, 10
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_FAIL_OPEN = 1
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
COPY_RANGE = 0xFFFF


@dataclass(frozen=True)
class Queued:
    id: int
    payload: bytes  # from the network header on


def _attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def parse(data: bytes) -> list[Queued]:
    """Every NFQNL_MSG_PACKET in one datagram."""
    out = []
    for a in messages(data, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET):
        hdr, payload = a.get(NFQA_PACKET_HDR), a.get(NFQA_PAYLOAD)
        if hdr is not None and len(hdr) >= 4:
            out.append(Queued(struct.unpack_from("!I", hdr)[0], payload or b""))
    return out


class NfQueue(Subscription):
    def __init__(self, num: int, fail_open: bool, maxlen: int = 4096, rcvbuf: int = 8 << 20) -> None:
        super().__init__(rcvbuf)
        self.num = num
        self.seq = 0
        try:
            self._config(_attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_UNSPEC)))
            self._config(_attr(NFQA_CFG_PARAMS, struct.pack("!IBxxx", COPY_RANGE, NFQNL_COPY_PACKET)))
            self._config(_attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen)))
            flags = NFQA_CFG_F_FAIL_OPEN if fail_open else 0
            self._config(_attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)) + _attr(NFQA_CFG_FLAGS, struct.pack("!I", flags)))
        except BaseException:
            self.sock.close()
            raise

    def _message(self, kind: int, body: bytes, ack: bool) -> bytes:
        self.seq += 1
        payload = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(self.num)) + body
        return struct.pack("=IHHII", 16 + len(payload), (NFNL_SUBSYS_QUEUE << 8) | kind,
                           NLM_F_REQUEST | (NLM_F_ACK if ack else 0), self.seq, 0) + payload

    def _config(self, body: bytes) -> None:
        self.sock.send(self._message(NFQNL_MSG_CONFIG, body, ack=True))
        while True:
            data = self.sock.recv(65536)
            _, kind, _, seq, _ = struct.unpack_from("=IHHII", data, 0)
            if kind == NLMSG_ERROR and seq == self.seq:
                code = -struct.unpack_from("=i", data, 16)[0]
                if code:
                    raise OSError(code, f"configuring NFQUEUE {self.num}: {os.strerror(code)}")
                return

    def recv(self, timeout: float | None = None) -> list[Queued]:
        return parse(self.datagram(timeout))

    def verdict(self, packet_id: int, accept: bool) -> None:
        body = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT if accept else NF_DROP, packet_id))
        self.sock.send(self._message(NFQNL_MSG_VERDICT, body, ack=False))

    def close(self) -> None:
        try:
            self.sock.send(self._message(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_UNBIND, 0, 0)),
                                         ack=False))
        except OSError:
            pass
        self.sock.close()
