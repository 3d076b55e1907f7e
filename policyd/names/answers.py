"""A DNS answer, read with dnspython (pure): the name the pod asked for, and the addresses the
answer gave for it, through any CNAME chain in that answer, each with the time it may be
kept (the smallest TTL along its chain).

Only what a resolver would trust is read: a response (QR set) to a standard query of class
IN with one question, whose answer section follows CNAMEs from the question's name; records
for other names, other classes or other types teach nothing. A message dnspython cannot
read (a compression loop, a truncated or malformed one) is `Unreadable`.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdataclass
import dns.rdatatype

MAX_ADDRESSES = 512  # per answer: a response with thousands of records teaches no more than this (counted)
MAX_CHAIN = 16  # CNAMEs followed


class Unreadable(Exception):
    """Not a DNS response policyd can read (why, in the message)."""


@dataclass(frozen=True)
class Answer:
    qname: str  # lower case, without the final dot
    addresses: tuple[tuple[str, int], ...]  # (address, TTL seconds)
    truncated: bool = False  # more addresses than MAX_ADDRESSES: the rest were not read


def text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


_read: dict[bytes, Answer | Unreadable] = {}
READ_KEPT = 4096


def parse(wire: bytes) -> Answer:
    """Remembered by the message's bytes after its ID: pods ask the same names again and
    again, and a server answers them alike (the reading, not the trust, is what is kept: the
    answer is still one the pod's own query got)."""
    key = wire[2:]
    got = _read.get(key)
    if got is None:
        try:
            got = _parse(wire)
        except Unreadable as e:
            got = e
        if len(_read) >= READ_KEPT:
            _read.clear()
        _read[key] = got
    if isinstance(got, Unreadable):
        raise got
    return got


def _parse(wire: bytes) -> Answer:
    # Only the question and answer sections are read: the authority and additional sections
    # (NS records, glue, EDNS, signatures) teach nothing here and cost most of the reading,
    # so their counts are set to 0 and the library stops after the answers.
    if len(wire) >= 12:
        wire = wire[:8] + b"\0\0\0\0" + wire[12:]
    try:
        msg = dns.message.from_wire(wire, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError, IndexError, UnicodeError) as e:
        raise Unreadable(f"{type(e).__name__}: {e}") from None
    if not msg.flags & dns.flags.QR:
        raise Unreadable("a query, not a response")
    if msg.opcode() != dns.opcode.QUERY or len(msg.question) != 1:
        raise Unreadable("not an answer to one standard query")
    q = msg.question[0]
    if q.rdclass != dns.rdataclass.IN:
        raise Unreadable(f"class {dns.rdataclass.to_text(q.rdclass)}, not IN")
    qname = q.name
    # Follow the chain from the question's name: name → CNAME target → …, the smallest TTL so far.
    cnames: dict[dns.name.Name, tuple[dns.name.Name, int]] = {}
    addresses: dict[dns.name.Name, list[tuple[str, int]]] = {}
    for rrset in msg.answer:
        if rrset.rdclass != dns.rdataclass.IN:
            continue
        if rrset.rdtype == dns.rdatatype.CNAME and len(rrset) == 1:
            cnames.setdefault(rrset.name, (next(iter(rrset)).target, rrset.ttl))
        elif rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            addresses.setdefault(rrset.name, []).extend((r.address, rrset.ttl) for r in rrset)
    out: list[tuple[str, int]] = []
    name, ttl, seen = qname, 2**31 - 1, set()
    for _ in range(MAX_CHAIN + 1):
        out += [(a, min(ttl, t)) for a, t in addresses.get(name, ())]
        if name not in cnames or name in seen:
            break
        seen.add(name)
        name, chain_ttl = cnames[name]
        ttl = min(ttl, chain_ttl)
    return Answer(text(qname), tuple(out[:MAX_ADDRESSES]), len(out) > MAX_ADDRESSES)
