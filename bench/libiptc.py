"""An experiment kept for its benchmark (`bench/run.py --only iptables-api`): the iptables
backend with its legacy filter tables driven in process through python-iptables (`iptc`,
libiptc) instead of `iptables-legacy-restore` child processes. The same transaction
(IptTransaction), each family's lines carried out on a table with autocommit off and
committed in one swap; ipsets still go through `ipset restore`. It did not win anywhere
that matters (docs/benchmarks.md), so the product keeps the restore path only.
`python bench/libiptc.py` checks, in two throwaway namespaces, that both paths leave
identical tables at every step."""

from __future__ import annotations

import shlex
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policyd.dataplane.backend import ApplyError  # noqa: E402
from policyd.dataplane.config import DispatchMode, RenderConfig  # noqa: E402
from policyd.ipt.backend import IptBackend  # noqa: E402
from policyd.ipt.spell import IptTransaction  # noqa: E402
from policyd.lab.netns import add_namespace, delete_namespaces, entered  # noqa: E402
from policyd.model.manifests import load  # noqa: E402
from policyd.reconcile.syncer import Syncer  # noqa: E402
from policyd.whatif.world import load_world  # noqa: E402

RULE_OPTIONS = {"-p": "protocol", "-s": "src", "-d": "dst", "-i": "in_interface", "-o": "out_interface"}
# As iptables knows them itself: python-iptables asks /etc/protocols, which minimal images lack.
PROTOCOLS = {"tcp": "6", "udp": "17", "sctp": "132", "icmp": "1", "ipv6-icmp": "58", "icmpv6": "58"}


def _iptc() -> Any:
    try:
        import iptc  # type: ignore[import-not-found, unused-ignore]
    except ImportError as e:  # pragma: no cover - the package is an extra
        raise RuntimeError("the libiptc path needs python-iptables: pip install python-iptables") from e
    return iptc


def build_rule(iptc: Any, family: int, args: list[str]) -> Any:
    """iptables rule arguments (`-p tcp -m tcp --dport 80 -m set ! --match-set S src -j RETURN`)
    → an iptc Rule. Matches and their options in order; `!` negates what follows."""
    rule = iptc.Rule6() if family == 6 else iptc.Rule()
    match = None
    negate = False
    i = 0
    while i < len(args):
        tok = args[i]
        if tok == "!":
            negate = True
            i += 1
            continue
        if tok in RULE_OPTIONS:
            value = PROTOCOLS.get(args[i + 1], args[i + 1]) if tok == "-p" else args[i + 1]
            setattr(rule, RULE_OPTIONS[tok], ("!" if negate else "") + value)
            i += 2
        elif tok == "-m":
            match = rule.create_match(args[i + 1])
            i += 2
        elif tok == "-j":
            rule.target = rule.create_target(args[i + 1])
            i += 2
        elif tok.startswith("--") and match is not None:
            values = []
            i += 1
            while i < len(args) and not (args[i].startswith("-") and len(args[i]) > 1 and not args[i][1].isdigit()) and args[i] != "!":
                values.append(args[i])
                i += 1
            match.parse(tok[2:], (["!"] if negate else []) + values)
        else:
            raise ApplyError(f"libiptc: cannot express {tok!r} in {shlex.join(args)}")
        negate = False
    return rule


def carry_out(iptc: Any, family: int, lines: list[str]) -> None:
    """One family's `iptables-restore --noflush` lines on its filter table, one commit."""
    table = iptc.Table6(iptc.Table6.FILTER, autocommit=False) if family == 6 else iptc.Table(iptc.Table.FILTER, autocommit=False)
    table.refresh()
    try:
        for line in lines:
            words = shlex.split(line)
            if line.startswith(":"):  # declare: create, or flush when it exists (restore --noflush)
                name = words[0][1:]
                if table.is_chain(name):
                    table.flush_entries(name)
                else:
                    table.create_chain(name)
            elif words[0] in ("-A", "-I", "-D"):
                chain = iptc.Chain(table, words[1])
                if words[0] == "-I":
                    chain.insert_rule(build_rule(iptc, family, words[3:]), position=int(words[2]) - 1)
                elif words[0] == "-A":
                    chain.append_rule(build_rule(iptc, family, words[2:]))
                else:
                    chain.delete_rule(build_rule(iptc, family, words[2:]))
            elif words[0] == "-X":
                table.delete_chain(words[1])
            elif words[0] == "-F":
                table.flush_entries(words[1])
            else:
                raise ApplyError(f"libiptc: unexpected line {line!r}")
        table.commit()
    except (iptc.IPTCError, ValueError, AttributeError) as e:
        table.refresh()  # drop what was not committed
        raise ApplyError(f"libiptc (IPv{family}): {e}") from None
    finally:
        table.autocommit = True  # python-iptables caches tables: leave this one as others expect


class IptcBackend(IptBackend):
    """IptBackend with the filter tables changed through libiptc in this process."""

    def __init__(self, table: str = "policyd", check_tools: bool = True) -> None:
        super().__init__(table, check_tools)
        self.iptc = _iptc()

    def describe(self) -> str:
        return super().describe() + " (libiptc)"

    def _apply_family(self, family: int, tx: IptTransaction) -> None:
        carry_out(self.iptc, family, tx.rules[family])


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def check_equivalence() -> None:
    """Both paths, the same transactions, two throwaway namespaces: identical tables at every
    step (initial programming, a policy added, a pod relabelled, a policy deleted), and a full
    resync afterwards finds nothing to do."""
    prefix = f"pdt{uuid.uuid4().hex[:6]}"
    namespaces = {"restore": f"{prefix}.restore", "libiptc": f"{prefix}.libiptc"}
    try:
        for ns in namespaces.values():
            add_namespace(ns)
        world = load_world([EXAMPLES / "cluster", EXAMPLES / "policies" / "allow-frontend-to-backend.yaml"])
        syncers = {}
        for kind, ns in namespaces.items():
            with entered(ns):
                backend = IptBackend() if kind == "restore" else IptcBackend()
                compiler = world.compile("node-1")
                syncers[kind] = Syncer(compiler, backend, RenderConfig(mode=DispatchMode.ADDRESS))

        def step() -> list[str]:
            listings, ops = [], set()
            for kind, ns in namespaces.items():
                with entered(ns):
                    ops.add(syncers[kind].sync().ops)
                    listings.append(syncers[kind].backend.listing())
            assert listings[0] == listings[1], "\n".join(listings)
            assert len(ops) == 1, ops
            return listings

        assert "POLICYD-FORWARD" in step()[0]
        extra = load([EXAMPLES / "policies" / "default-deny-egress-allow-dns.yaml"]).policies[0]
        backend_pod = next(p for p in world.pods if p.labels.get("app") == "backend" and p.node == "node-1")
        for s in syncers.values():
            s.compiler.upsert_policy(extra)
        step()
        for s in syncers.values():
            s.compiler.upsert_pod(replace(backend_pod, labels={"app": "other"}))
        step()
        for s in syncers.values():
            s.compiler.delete_policy(extra.key)
        step()
        for kind, ns in namespaces.items():
            with entered(ns):
                assert syncers[kind].sync(full=True).ops == 0, f"{kind}: a full resync finds nothing to repair"
    finally:
        delete_namespaces(prefix + ".")


if __name__ == "__main__":
    check_equivalence()
    print("libiptc and iptables-legacy-restore left identical tables at every step")
