"""What each kind of libnftables command costs in a table the size of a busy node's, in a
throwaway network namespace: the measurement behind the rule-level-edit decision
(bench/notes.md, docs/peers.md). libnftables fills its cache before some commands; which
ones decides what an incremental change of one chain may use.

The table: 20 sets of `elements` IPv4 addresses each, 100 chains of 100 rules that name
those sets (10,000 rules), as a node's pod chains do."""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from report import ms, table

from policyd.lab.netns import add_namespace, delete_namespaces, entered
from policyd.nft.backend import Libnftables
from policyd.nft.generation import Generation

SETS, CHAINS, RULES = 20, 100, 100


def _rule(chain: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"rule": {"family": "inet", "table": "t", "chain": chain, "comment": "bench [000000000000]",
                     "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": port}},
                              {"accept": None}], **extra}}


def _fill(nft: Libnftables, elements: int) -> None:
    lines = ["add table inet t"]
    for s in range(SETS):
        lines.append(f"add set inet t s{s} {{ type ipv4_addr; }}")
        lines.append(f"add element inet t s{s} {{ " + ", ".join(f"10.{s}.{i // 250}.{i % 250 + 1}" for i in range(elements)) + " }")
    for c in range(CHAINS):
        lines.append(f"add chain inet t p{c}")
        lines += [f'add rule inet t p{c} ip saddr @s{i % SETS} tcp dport {i + 1} accept comment "rule {i} [000000000000]"'
                  for i in range(RULES)]
    rc, _, err = nft.run("\n".join(lines), json_output=False)
    if rc != 0:
        raise RuntimeError(f"filling the table: {err}")


def _handles(nft: Libnftables, chain: str) -> list[int]:
    rc, out, err = nft.run(f"list chain inet t {chain}")
    if rc != 0:
        raise RuntimeError(err)
    return [int(i["rule"]["handle"]) for i in json.loads(out)["nftables"] if "rule" in i]


def _echoed(nft: Libnftables, cmd: str) -> tuple[int, str, str]:
    """A batch with `--echo --handle` (what prints the kernel's new handles back)."""
    with nft.lock:
        nft.nft.set_json_output(True)
        nft.nft.set_echo_output(True)
        nft.nft.set_handle_output(True)
        try:
            rc, out, err = nft.nft.cmd(cmd)
        finally:
            nft.nft.set_echo_output(False)
            nft.nft.set_handle_output(False)
    return int(rc), out, err


def _time(nft: Libnftables, batches: Callable[[int], str], n: int, echo: bool = False, text: bool = False) -> list[float]:
    out = []
    for i in range(n):
        cmd = batches(i)
        t = time.perf_counter()
        rc, _, err = _echoed(nft, cmd) if echo else nft.run(cmd, json_output=not text)
        out.append(time.perf_counter() - t)
        if rc != 0:
            raise RuntimeError(f"{cmd[:200]}: {err}")
    return out


def _dumps(n: int) -> list[float]:
    gen = Generation()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        got = gen.rule_handles("t", "p6")
        out.append(time.perf_counter() - t)
        if sum(map(len, got.values())) != RULES:
            raise RuntimeError(f"the dump of chain p6 gave {sum(map(len, got.values()))} handles, not {RULES}")
    gen.close()
    return out


class BareCtypes:
    """The fewest C calls a command can take (flags set once, no lock): the yardstick for
    the official binding's own cost per call."""

    def __init__(self) -> None:
        import ctypes

        lib = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_new.restype = ctypes.c_void_p
        for f in ("nft_ctx_output_set_flags", "nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, f).argtypes = [ctypes.c_void_p] + ([ctypes.c_uint] if f.endswith("flags") else [])
        for f in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, f).restype, getattr(lib, f).argtypes = ctypes.c_char_p, [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib, self.ctx = lib, lib.nft_ctx_new(0)
        lib.nft_ctx_output_set_flags(self.ctx, 1 << 4)  # JSON
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)

    def run(self, command: str, json_output: bool = True) -> tuple[int, str, str]:
        rc = self.lib.nft_run_cmd_from_buffer(self.ctx, command.encode())
        return int(rc), self.lib.nft_ctx_get_output_buffer(self.ctx).decode(), self.lib.nft_ctx_get_error_buffer(self.ctx).decode()


def binding(n: int) -> list[list[str]]:
    """`list tables` and an appended rule in an otherwise empty namespace, where the call's
    own cost is the largest share: policyd's Libnftables (the official binding) against bare
    ctypes, interleaved."""
    prefix = f"pdo{uuid.uuid4().hex[:6]}"
    ns = f"{prefix}-n"
    try:
        add_namespace(ns)
        with entered(ns):
            ours, bare = Libnftables(), BareCtypes()
            ours.run("add table inet t; add chain inet t c", json_output=False)
            rows: dict[str, list[float]] = {}
            runners: list[tuple[str, Callable[[str], tuple[int, str, str]]]] = [
                ("policyd's Libnftables (nftables.Nftables)", ours.run), ("bare ctypes", bare.run)]
            for _ in range(5):
                for name, run in runners:  # each from the same state: an empty chain
                    for cmd in ("list tables", "add rule inet t c counter"):
                        times = rows.setdefault(f"{cmd}: {name}", [])
                        for _ in range(n // 5):
                            t = time.perf_counter()
                            rc, _, err = run(cmd)
                            times.append(time.perf_counter() - t)
                            if rc != 0:
                                raise RuntimeError(err)
                    ours.run("flush chain inet t c", json_output=False)
    finally:
        delete_namespaces(prefix)
    return [[what, f"median {statistics.median(xs) * 1e6:.1f} µs (mean {statistics.mean(xs) * 1e6:.1f})"]
            for what, xs in sorted(rows.items())]


def one_size(elements: int, n: int) -> list[list[str]]:
    prefix = f"pdo{uuid.uuid4().hex[:6]}"
    ns = f"{prefix}-n"
    try:
        add_namespace(ns)
        with entered(ns):
            nft = Libnftables()
            _fill(nft, elements)
            doc = lambda *cmds: json.dumps({"nftables": list(cmds)})  # noqa: E731
            h = _handles(nft, "p1")
            last = _handles(nft, "p2")[-1]
            rows = [
                ("append a rule", _time(nft, lambda i: doc({"add": _rule("p0", 10_000 + i)}), n)),
                ("delete a rule by handle", _time(nft, lambda i: doc({"delete": {"rule": {"family": "inet", "table": "t", "chain": "p1",
                                                                                           "handle": h[i]}}}), n)),
                ("add an element", _time(nft, lambda i: doc({"add": {"element": {"family": "inet", "table": "t", "name": "s0",
                                                                                 "elem": [f"11.0.{i // 250}.{i % 250 + 1}"]}}}), n)),
                ("insert a rule at a handle", _time(nft, lambda i: doc({"insert": _rule("p2", 20_000 + i, handle=last)}), n)),
                ("replace a rule by handle", _time(nft, lambda i: doc({"replace": _rule("p2", 30_000 + i, handle=last)}), n)),
                ("append a rule, echoed (the new handle printed back)", _time(nft, lambda i: doc({"add": _rule("p3", 40_000 + i)}), n,
                                                                               echo=True)),
                ("list one chain", _time(nft, lambda i: "list chain inet t p4", n, text=True)),
                ("one chain's rule handles by a raw netlink dump (what policyd uses)", _dumps(n)),
            ]
            flush_refill = _time(nft, lambda i: doc({"flush": {"chain": {"family": "inet", "table": "t", "name": "p5"}}},
                                                    *({"add": _rule("p5", 50_000 + k)} for k in range(RULES))), n)
            rows.append((f"flush and refill a chain of {RULES} rules", flush_refill))
    finally:
        delete_namespaces(prefix)
    return [[what, ms(xs)] for what, xs in rows]


def measure(args: Any) -> list[str]:
    n = 10 if args.quick else 30
    version = json.loads(Libnftables().run("list tables")[1])["nftables"][0]["metainfo"]["version"]
    out = [f"libnftables {version}, one command per batch, {n} batches each, in a table of {SETS} sets and {CHAINS * RULES:,} "
           f"rules in {CHAINS} chains (bench/nft_ops.py, in a throwaway network namespace).", ""]
    for elements in (100, 2000):
        out += [f"With {elements:,} elements per set ({SETS * elements:,} in all):", "",
                *table(["command", "time per batch"], one_size(elements, n)), ""]
    calls = 200 if args.quick else 2000
    out += [f"The binding's own cost ({calls:,} calls each, interleaved, an empty namespace). policyd calls libnftables",
            "through the nftables project's Python binding (`nftables.Nftables`, pip-nftables); against the fewest C calls",
            "a command can take (bare ctypes: flags set once, no lock) it pays a few microseconds per call for its flag",
            "calls and lock, against the 0.16 ms and more of the cheapest kernel command above.", "",
            *table(["command: binding", "time per call"], binding(calls)), ""]
    return out[:-1]
