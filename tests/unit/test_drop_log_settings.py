"""`policyd run --drop-log` and its limits, and the pure half of the drop log: causes and
their prefixes, NFLOG parsing, and the record a packet becomes."""

from __future__ import annotations

import socket
import struct

import pytest

from policyd.cli import build_parser
from policyd.compile.engine import Compiler
from policyd.dataplane.droplog import DropCause, DropLog
from policyd.kube.cli import RunError, settings_from
from policyd.model.events import Delete, Upsert
from policyd.model.manifests import Manifests, load_documents
from policyd.model.objects import Direction
from policyd.observe import droplog
from policyd.observe.droplog import CauseBook, CompiledSource, record, text_line
from policyd.observe.nflog import NFULA_PAYLOAD, NFULA_PREFIX, Packet, parse


def run_args(*extra: str):
    return build_parser().parse_args(["run", "--node-name", "n1", "--dispatch-mode", "address", *extra])


def test_the_drop_log_is_opt_in_and_its_limits_are_checked():
    st, _, _ = settings_from(run_args())
    assert st.drop_log is None
    st, _, _ = settings_from(run_args("--drop-log", "--drop-log-group", "5", "--drop-log-rate", "2"))
    assert st.drop_log == DropLog(group=5, rate=2, burst=20)
    with pytest.raises(RunError, match="NFLOG group is 0-65535"):
        settings_from(run_args("--drop-log", "--drop-log-group", "70000"))
    with pytest.raises(RunError, match="rate is 1-10000"):
        settings_from(run_args("--drop-log", "--drop-log-rate", "0"))


def rendered(c: Compiler, backend: str = "nftables") -> dict:
    """Each local pod's rendered objects, as an agent with a drop log holds them."""
    from policyd.backends import make_dialect
    from policyd.dataplane.config import DispatchMode, RenderConfig

    r = make_dialect(backend, "policyd").renderer(RenderConfig(mode=DispatchMode.ADDRESS, drop_log=DropLog()))
    return {key: r.pod(plan, None) for key, plan in c.plans.items()}


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_log_prefix_is_its_rules_id_and_carries_no_name(backend):
    """The NFLOG prefix of a log rule is `pd-` and the rule's id: one per kernel rule (two
    policies isolating a pod log under another prefix than one), never a name."""
    def prefixes(*policies: str) -> dict[str, DropCause]:
        c = Compiler("node-1")
        for o in objects(pod("b1", "10.0.0.1") + "".join("---\n" + p for p in policies)):
            c.apply(Upsert(o))
        return dict(droplog.log_causes(ch for objs in rendered(c, backend).values() for ch in objs.chains))

    deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {}, namespace: default}}\nspec: {{podSelector: {{}}}}\n"
    a, b = prefixes(deny.format("deny")), prefixes(deny.format("deny"), deny.format("also"))
    assert a == prefixes(deny.format("deny")) and set(a).isdisjoint(b)
    assert all(p.startswith("pd-") and len(p) == 19 and "default" not in p for p in [*a, *b])
    assert [c.policies for c in a.values()] == [("default/deny",)]


def nflog_message(prefix: bytes, payload: bytes) -> bytes:
    def attr(kind: int, value: bytes) -> bytes:
        raw = struct.pack("=HH", 4 + len(value), kind) + value
        return raw + b"\0" * (-len(raw) % 4)
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(7)) + attr(NFULA_PREFIX, prefix + b"\0") + attr(NFULA_PAYLOAD, payload)
    return struct.pack("=IHHII", 16 + len(body), 4 << 8, 0, 0, 0) + body


def test_nflog_messages_parse_to_addresses_protocol_and_port():
    ipv4 = bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HH", 40000, 80) + bytes(16)
    ipv6 = bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + socket.inet_pton(socket.AF_INET6, "fd00::1") + socket.inet_pton(socket.AF_INET6, "fd00::2") \
        + struct.pack("!HH", 5353, 53)
    got = parse(nflog_message(b"pd-0123456789abcdef", ipv4) + nflog_message(b"pd-x", ipv6))
    assert got == [Packet("pd-0123456789abcdef", "10.0.0.1", "10.0.0.2", "TCP", 80, None, None),
                   Packet("pd-x", "fd00::1", "fd00::2", "UDP", 53, None, None)]


def test_a_record_names_peers_it_knows_and_never_guesses_a_cause():
    p = Packet("pd-1", "10.0.0.1", "10.0.0.2", "TCP", 80, None, None)
    cause = DropCause("default/b1", Direction.INGRESS, "NetworkPolicy", ("default/allow-frontend",))
    r = record(p, cause, {"10.0.0.1": "default/u1", "10.0.0.2": "default/b1"}.get, "node-1", 0.0)
    assert text_line(r) == ("drop ingress default/b1 ← default/u1 TCP/80: isolated by 1 NetworkPolicy (default/allow-frontend), "
                            "no rule allows")
    unknown = record(p, None, {}.get, "node-1", 0.0)
    assert "pod" not in unknown and "policies" not in unknown and unknown["src"] == "10.0.0.1"
    assert text_line(unknown).startswith("drop 10.0.0.1 → 10.0.0.2 TCP/80: unattributed")


def test_accept_logging_is_part_of_the_drop_log():
    st, _, _ = settings_from(run_args("--drop-log", "--accept-log-rate", "5"))
    assert st.drop_log is not None and st.drop_log.accepts == 5
    with pytest.raises(RunError, match="add --drop-log"):
        settings_from(run_args("--accept-log-rate", "5"))
    accept = DropCause("default/b1", Direction.INGRESS, "NetworkPolicy", ("default/a",), "default/a ingress[0]", accepted=True)
    assert DropLog(accepts=0).logs(accept) == 0 and DropLog(accepts=3).logs(accept) == 3


def test_rule_counters_round_trip_through_metrics():
    """What the agent serves on /metrics is what `explain --hits` reads back."""
    from prometheus_client import generate_latest

    from policyd.kube.metrics import AgentMetrics
    from policyd.observe.counters import Counters, RuleKey, counters_from_metrics

    c = Counters()
    allow = RuleKey("allow", "default", "allow-frontend", "ingress", "0")
    drop = RuleKey("drop", "default", "default/a,default/b", "egress", "")
    c.add(allow, 3, 180)
    c.add(drop, 2, 120)
    m = AgentMetrics()
    m.rules.update(c)
    back = counters_from_metrics(generate_latest(m.registry).decode())
    assert {k: (v.packets, v.bytes) for k, v in back.by_rule.items()} == {allow: (3, 180), drop: (2, 120)}


def test_the_drop_log_accounts_for_what_it_lost():
    from prometheus_client import generate_latest

    from policyd.kube.metrics import AgentMetrics
    from policyd.observe.droplog import DropCounters

    m = AgentMetrics()
    assert "policyd_drop_log" not in generate_latest(m.registry).decode(), "nothing until a drop log runs"
    m.drop_log.attach(DropCounters(logged=7, unattributed=1, queue_full=3, socket_overruns=2))
    text = generate_latest(m.registry).decode()
    assert "policyd_drop_log_records_total 7.0" in text and "policyd_drop_log_unattributed_total 1.0" in text
    assert 'policyd_drop_log_lost_total{reason="queue_full"} 3.0' in text and 'policyd_drop_log_lost_total{reason="socket_overrun"} 2.0' in text


def pod(name: str, ip: str, app: str = "b", host_network: bool = False) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}
spec: {{nodeName: node-1, hostNetwork: {str(host_network).lower()}, containers: [{{name: c}}]}}
status: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
"""


def objects(text: str) -> list:
    m = Manifests()
    load_documents("test", text, m)
    assert not m.problems, m.problems
    return [*m.pods, *m.policies]


def test_peers_are_named_from_the_live_store_never_from_a_stale_or_shared_address():
    """The drop log names a packet's pods when the record is written: a pod created after
    the last refresh is named, a deleted pod's address is not named after it, and an address
    two pods hold (host network, or a reuse in transition) is left an address."""
    c = Compiler("node-1")
    for o in objects(pod("u1", "10.0.0.1")):
        c.apply(Upsert(o))
    source = CompiledSource(c)  # turns the store's address index on, built from what it holds
    assert source.pod_at("10.0.0.1") == "default/u1"
    for o in objects(pod("walker", "10.0.0.7")):
        c.apply(Upsert(o))
    assert source.pod_at("10.0.0.7") == "default/walker"
    c.apply(Delete("Pod", "default/walker"))
    assert source.pod_at("10.0.0.7") is None
    for o in objects(pod("h1", "192.168.0.1", host_network=True) + "---" + pod("h2", "192.168.0.1", host_network=True)):
        c.apply(Upsert(o))
    assert source.pod_at("192.168.0.1") is None
    for o in objects(pod("u1", "10.0.0.2")):  # moved: the old address is free
        c.apply(Upsert(o))
    assert source.pod_at("10.0.0.1") is None and source.pod_at("10.0.0.2") == "default/u1"
    for o in objects(pod("u2", "10.0.0.2")):  # two pods claim one address: no name
        c.apply(Upsert(o))
    assert source.pod_at("10.0.0.2") is None
    assert source.pod_at("not an address") is None


def test_the_cause_book_rereads_only_changed_plans_and_keeps_old_causes(monkeypatch):
    policy = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: default}
spec: {podSelector: {matchLabels: {app: b}}}
"""
    c = Compiler("node-1")
    for o in objects(pod("b1", "10.0.0.1") + "---" + policy):
        c.apply(Upsert(o))
    book = CauseBook()
    pods = rendered(c)
    book.refresh(pods)
    first = dict(book.causes)
    assert [x.policies for x in first.values()] == [("default/deny",)]
    read: list[str] = []
    real = droplog.log_causes

    def counted(chains):
        chains = list(chains)
        read.extend(ch.name for ch in chains)
        return real(chains)

    monkeypatch.setattr(droplog, "log_causes", counted)
    for o in objects(pod("b2", "10.0.0.2")):
        c.apply(Upsert(o))
    book.refresh({**pods, "default/b2": rendered(c)["default/b2"]})
    assert read and all("/b2" in name for name in read), "b1's rules are unchanged: not read again"
    assert {x.pod for x in book.causes.values()} == {"default/b1", "default/b2"}
    c.apply(Delete("NetworkPolicy", "default/deny"))
    book.refresh(rendered(c))
    assert set(first) <= set(book.causes)  # a packet dropped just before the change is still named


def test_a_failing_drop_log_thread_is_logged_counted_and_started_again():
    """The reader's socket raising, the writer's formatting raising: each thread starts again
    (the reader on a new socket), the failures are counted on /metrics and the packets after
    them are still written. Before, one error ended a thread silently."""
    import threading
    import time

    from prometheus_client import generate_latest

    from policyd.kube.metrics import AgentMetrics
    from policyd.observe.droplog import DropLogger

    packet = Packet("prefix", "10.0.0.1", "10.0.0.2", "TCP", 80, None, None)
    lines: list[str] = []

    class Sock:
        opened = 0

        def __init__(self) -> None:
            Sock.opened += 1
            self.first = Sock.opened == 1
            self.overruns = 0

        def recv(self, timeout: float) -> list:
            if self.first:
                raise OSError("the socket broke")
            time.sleep(0.01)
            return [packet] if len(lines) < 3 else []

        def close(self) -> None:
            pass

    logger = DropLogger(7, "n1", CompiledSource(Compiler("n1"), threading.Lock()), lines.append)
    logger.open_socket = Sock  # type: ignore[method-assign]
    real_format, calls = logger.format, [0]

    def format_once_badly(rec):
        calls[0] += 1
        if calls[0] == 1:
            raise ValueError("a record it cannot write")
        return real_format(rec)

    logger.format = format_once_badly
    logger.start()
    deadline = time.monotonic() + 5
    while len(lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    logger.stop()
    assert len(lines) >= 2 and Sock.opened >= 2, (lines, Sock.opened)
    assert logger.counters.restarts == {"read": 1, "write": 1}, logger.counters.restarts
    m = AgentMetrics()
    m.drop_log.attach(logger.counters)
    text = generate_latest(m.registry).decode()
    assert 'policyd_drop_log_restarts_total{thread="read"} 1.0' in text and 'policyd_drop_log_restarts_total{thread="write"} 1.0' in text
