"""DNS over TCP from servers to pods, put back together (pure): each message is two length
bytes and the message, over one segment or many. A segment is held (its queued packet) until
every message whose bytes it carries is complete and read; then it is released, so the pod
sees no byte of an answer before its addresses are learned. A flow that waits too long (a
segment lost, a message never finished) is given up, its segments released or dropped as
the fail mode says."""

from __future__ import annotations

from dataclasses import dataclass, field

from .packets import FIN, RST, Packet

MAX_BUFFER = 2 + 65535 + 65535  # a whole message and the start of the next
MAX_FLOWS = 1024


@dataclass
class Flow:
    next_seq: int
    consumed: int  # the sequence number up to which messages were read
    buf: bytearray = field(default_factory=bytearray)
    held: list[tuple[int, int]] = field(default_factory=list)  # (packet id, the segment's first sequence number)
    later: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # seq → (packet id, payload): after a gap
    since: float = 0.0  # when the oldest held segment came


@dataclass
class Fed:
    messages: list[bytes] = field(default_factory=list)  # complete DNS messages, to read before `release`
    release: list[int] = field(default_factory=list)  # packet ids that may pass now
    given_up: list[int] = field(default_factory=list)  # packet ids of a flow that could not be followed


def _lt(a: int, b: int) -> bool:
    """Sequence numbers compare modulo 2**32."""
    return ((a - b) & 0xFFFFFFFF) >= 0x80000000


class Streams:
    def __init__(self, max_flows: int = MAX_FLOWS, max_buffer: int = MAX_BUFFER) -> None:
        self.flows: dict[tuple[str, str, int, int], Flow] = {}
        self.max_flows, self.max_buffer = max_flows, max_buffer

    def feed(self, pid: int, pkt: Packet, now: float) -> Fed:
        out = Fed()
        key = pkt.flow
        flow = self.flows.get(key)
        if not pkt.payload:
            out.release.append(pid)  # a SYN-ACK, an ACK, a FIN without data
            if pkt.flags & (FIN | RST) and flow is not None:
                out.release += self._drop(key)
            return out
        if flow is None:
            if len(self.flows) >= self.max_flows:
                out.given_up.append(pid)
                return out
            flow = self.flows[key] = Flow(pkt.seq, pkt.seq, since=now)
        if not flow.held:
            flow.since = now
        end = (pkt.seq + len(pkt.payload)) & 0xFFFFFFFF
        if not _lt(flow.next_seq, end):
            out.release.append(pid)  # all of it seen before: a retransmission
        elif _lt(flow.next_seq, pkt.seq):
            flow.later[pkt.seq] = (pid, pkt.payload)  # after a gap: wait for what is missing
        else:
            skip = (flow.next_seq - pkt.seq) & 0xFFFFFFFF
            self._append(flow, pid, pkt.seq, pkt.payload[skip:])
            while flow.next_seq in flow.later:
                lpid, payload = flow.later.pop(flow.next_seq)
                self._append(flow, lpid, flow.next_seq, payload)
        if len(flow.buf) > self.max_buffer:
            out.given_up += self._drop(key)
            return out
        while len(flow.buf) >= 2:
            size = int.from_bytes(flow.buf[:2], "big")
            if len(flow.buf) < 2 + size:
                break
            out.messages.append(bytes(flow.buf[2:2 + size]))
            del flow.buf[:2 + size]
            flow.consumed = (flow.consumed + 2 + size) & 0xFFFFFFFF
        # Release what carries bytes of messages read (the start of the next may ride along).
        keep = [(p, s) for p, s in flow.held if not _lt(s, flow.consumed)]
        out.release += [p for p, s in flow.held if _lt(s, flow.consumed)]
        flow.held = keep
        if pkt.flags & (FIN | RST):
            out.release += self._drop(key)
        return out

    def _append(self, flow: Flow, pid: int, seq: int, payload: bytes) -> None:
        flow.buf += payload
        flow.held.append((pid, seq))
        flow.next_seq = (seq + len(payload)) & 0xFFFFFFFF

    def _drop(self, key: tuple[str, str, int, int]) -> list[int]:
        flow = self.flows.pop(key, None)
        if flow is None:
            return []
        return [p for p, _ in flow.held] + [p for p, _ in flow.later.values()]

    @property
    def waiting(self) -> bool:
        """Whether some segment is held for the rest of its message."""
        return any(f.held or f.later for f in self.flows.values())

    def expire(self, now: float, after: float) -> list[int]:
        """The held packets of flows that waited longer than `after` (given up on)."""
        out: list[int] = []
        for key, flow in list(self.flows.items()):
            if (flow.held or flow.later) and now - flow.since > after:
                out += self._drop(key)
            elif not flow.held and not flow.later and now - flow.since > 60:
                self.flows.pop(key)  # (a finished conversation whose FIN we did not see)
        return out
