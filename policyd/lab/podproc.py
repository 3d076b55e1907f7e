"""The process that plays a pod inside its network namespace.

It serves every declared container port (TCP: answers its pod name and closes; UDP:
replies with its pod name) and takes probe requests on a Unix socket. A probe succeeds
when the peer answers or refuses (reset, port unreachable): either way the packets
passed; a dropped packet shows as a timeout (Unix sockets live
in the filesystem, so the prober needs no namespace switch). SCTP ports are declared but
not served: this kernel has no SCTP sockets.

    python -m policyd.lab.podproc --name ns/pod --control /run/…/pod.sock --tcp 80 --udp 80
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import itertools
import json
import os
import socket
from typing import Any


class UdpReply(asyncio.DatagramProtocol):
    def __init__(self, name: bytes) -> None:
        self.name = name

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data, addr):  # type: ignore[no-untyped-def]
        self.transport.sendto(self.name, addr)


class UdpProbe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr):  # type: ignore[no-untyped-def]
        if not self.reply.done():
            self.reply.set_result(data.decode())

    def error_received(self, exc):  # type: ignore[no-untyped-def]
        if not self.reply.done():
            self.reply.set_exception(exc)


# UDP probes take their source ports in turn from this range instead of the kernel's random
# choice: a random port can repeat a 5-tuple whose conntrack entry (30 s for UDP) is still
# "established" from an earlier probe, and an established flow passes any later isolation
# (NetworkPolicy governs new connections). That was the lab's rare "UDP probe answered,
# engine says denied". 40,000 ports per pod are far more than a test probes in 30 s.
UDP_PORTS = itertools.cycle(range(20_000, 60_000))


async def udp_endpoint(loop: asyncio.AbstractEventLoop, family: int, host: str, port: int):  # type: ignore[no-untyped-def]
    for _ in range(100):
        local = ("::" if family == socket.AF_INET6 else "0.0.0.0", next(UDP_PORTS))
        try:
            return await loop.create_datagram_endpoint(UdpProbe, family=family, local_addr=local, remote_addr=(host, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, "no free UDP source port for the probe")


async def resolve(name: str, server: str, family: int, timeout: float) -> list[str]:
    """`name`'s addresses of `family`, asked of `server` as a pod's resolver asks (UDP, then
    TCP when the answer is truncated); LookupError when it does not resolve. (dnspython is
    imported here: most pods never resolve, and start faster without it.)"""
    import dns.asyncquery
    import dns.exception
    import dns.flags
    import dns.message
    import dns.rcode
    import dns.rdatatype

    q = dns.message.make_query(name, dns.rdatatype.A if family == 4 else dns.rdatatype.AAAA)
    try:
        answer = await dns.asyncquery.udp(q, server, timeout=timeout)
        if answer.flags & dns.flags.TC:
            answer = await dns.asyncquery.tcp(q, server, timeout=timeout)
    except dns.exception.DNSException as e:
        raise LookupError(f"{type(e).__name__}: {e}") from None
    if answer.rcode() != dns.rcode.NOERROR:
        raise LookupError(dns.rcode.to_text(answer.rcode()))
    found = [r.address for rrset in answer.answer for r in rrset if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)]
    if not found:
        raise LookupError("no address")
    return found


async def probe(req: dict[str, Any]) -> dict[str, Any]:
    if "name" in req:  # resolve through the lab's DNS server, then connect to the first address
        try:
            addresses = await resolve(req["name"], req["server"], int(req.get("family", 4)), float(req.get("timeout", 1.0)))
        except (LookupError, OSError) as e:
            return {"ok": False, "resolved": False, "error": f"{type(e).__name__}: {e}".rstrip(": ")}
        got = await probe({**{k: v for k, v in req.items() if k not in ("name", "server")}, "host": addresses[0]})
        return {**got, "resolved": True, "addresses": addresses}
    proto, host, timeout = req["protocol"], req["host"], float(req.get("timeout", 1.0))
    try:
        if proto == "TCP":
            r, w = await asyncio.wait_for(asyncio.open_connection(host, req["port"]), timeout)
            data = await asyncio.wait_for(r.read(256), timeout)
            w.close()
            return {"ok": True, "reply": data.decode().strip()}
        if proto == "UDP":
            loop = asyncio.get_running_loop()
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            transport, proto_ = await udp_endpoint(loop, family, host, req["port"])
            try:
                transport.sendto(b"probe")
                reply = await asyncio.wait_for(proto_.reply, timeout)
                return {"ok": True, "reply": reply}
            finally:
                transport.close()
        if proto == "ICMP":
            cmd = ["ping", "-n", "-q", "-c", "1", "-W", f"{max(0.1, timeout):.2f}", host]  # iputils takes fractions
            p = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            return {"ok": await p.wait() == 0}
        return {"ok": False, "error": f"unknown protocol {proto}"}
    except ConnectionRefusedError:
        # A TCP reset or an ICMP port-unreachable came back: the policy let the packets
        # through both ways, only nothing listens on that port.
        return {"ok": True, "refused": True}
    except (TimeoutError, OSError) as e:
        return {"ok": False, "error": type(e).__name__}


async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write((json.dumps(await probe(json.loads(line))) + "\n").encode())
            await writer.drain()
    finally:
        writer.close()


async def main_async(args: argparse.Namespace) -> None:
    name = args.name.encode() + b"\n"

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(name)
        await writer.drain()
        writer.close()

    loop = asyncio.get_running_loop()
    for port in args.tcp:
        await asyncio.start_server(tcp, host=["0.0.0.0", "::"], port=port, reuse_address=True)
    for port in args.udp:
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            await loop.create_datagram_endpoint(lambda: UdpReply(name), sock=sock)
    if os.path.exists(args.control):
        os.unlink(args.control)
    await asyncio.start_unix_server(control, path=args.control)
    with open(args.control + ".ready", "w") as f:
        f.write(str(os.getpid()))
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--control", required=True)
    p.add_argument("--tcp", type=int, action="append", default=[])
    p.add_argument("--udp", type=int, action="append", default=[])
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
