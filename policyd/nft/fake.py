"""An in-memory nftables with the Backend interface, for unit tests of render and diff.

It interprets the transaction's JSON commands with the kernel's all-or-nothing semantics
and its refusals (adding an existing chain, deleting a missing element, deleting a chain
or set that is still referenced, deleting a rule by a handle the chain does not hold), so
that ordering bugs fail here as they would there. Rules get handles as the kernel gives
them (one counter per table).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from typing import Any

from ..dataplane.backend import ApplyError
from ..dataplane.objects import DIGEST_RE, FOREIGN_TARGET, ChainDef, Hook, MapDef, Ruleset, SetDef
from .backend import NftDialect
from .diff import Transaction
from .ruleset import canonical_rule, elem_from_json, map_entry_from_json


class FakeBackend(NftDialect):
    def __init__(self, table: str = "policyd") -> None:
        super().__init__(table)
        self.ruleset: Ruleset | None = None
        self.rules: dict[str, list[dict[str, Any]]] = {}
        self.transactions: list[Transaction] = []
        self.fail_next = False  # inject a failure into the next apply
        self.reads: list[bool] = []  # one entry per read: were elements listed?
        # The kernel's generation, modelled when set to a number: each applied transaction
        # moves it by `commits`; a test that edits the fake behind the syncer's back moves it
        # itself (as any commit to the kernel would).
        self.gen: int | None = None
        self.next_handle = 1

    def generation(self) -> int | None:
        return self.gen

    def read(self, elements: bool = True) -> Ruleset | None:
        self.reads.append(elements)
        if self.ruleset is None:
            return self.listed(None)
        rs = self.ruleset.copy()
        if not elements:
            rs.sets = {n: replace(s, elements=frozenset()) for n, s in rs.sets.items()}
            rs.maps = {n: replace(m, elements=()) for n, m in rs.maps.items()}
        for name, chain in rs.chains.items():
            rules = self.rules.get(name, [])
            m = DIGEST_RE.search(rules[-1].get("comment", "")) if rules else None
            # Listed as the kernel would: in libnftables' normal form, with handles.
            rs.chains[name] = ChainDef(name, (), chain.hook, m.group(1) if m else "", tuple(canonical_rule(r) for r in rules),
                                       handles=self.rule_handles(name))
        return self.listed(rs)

    def rule_handles(self, chain: str) -> tuple[int, ...] | None:
        rules = self.rules.get(chain, [])
        for r in rules:
            if "handle" not in r:  # written by a test as someone else would: the kernel numbers it
                r["handle"] = self.next_handle
                self.next_handle += 1
        return tuple(r["handle"] for r in rules)

    def listing(self) -> str:
        return self.text(self.ruleset) if self.ruleset is not None else ""

    def rule_counters(self) -> list[tuple[str, str, int, int]]:
        """No packets cross a fake: every counting rule at zero."""
        return [(chain, str(r.get("comment", "")), 0, 0) for chain, rules in self.rules.items() for r in rules
                if any(isinstance(e, dict) and "counter" in e for e in r.get("expr", []))]

    def maps(self, names: list[str]) -> dict[str, MapDef]:
        have = self.ruleset.maps if self.ruleset is not None else {}
        return {n: have[n] for n in names if n in have}

    def local_sets(self, names: list[str]) -> dict[str, SetDef]:
        have = self.ruleset.sets if self.ruleset is not None else {}
        return {n: have[n] for n in names if n in have}

    def delete_table(self) -> bool:
        had = self.ruleset is not None
        self.ruleset, self.rules = None, {}
        self.failed()  # nothing we wrote is there any more
        return had

    def apply(self, tx: Transaction) -> None:
        self.transactions.append(tx)
        if self.fail_next:
            self.fail_next = False
            raise ApplyError("injected failure")
        saved = (copy.deepcopy(self.ruleset), copy.deepcopy(self.rules))
        try:
            for cmd in json.loads(tx.to_json())["nftables"][1:]:
                self._run(cmd)
            self._check_references()
        except ApplyError:
            self.ruleset, self.rules = saved
            self.failed()
            raise
        self.committed(tx)
        if self.gen is not None:
            self.gen += self.commits(tx)

    # --- interpretation ---------------------------------------------------------------

    def _rs(self) -> Ruleset:
        if self.ruleset is None:
            raise ApplyError("No such file or directory: table")
        return self.ruleset

    def _run(self, cmd: dict[str, Any]) -> None:
        (verb, obj), = cmd.items()
        (kind, body), = obj.items()
        if kind == "table":
            if verb == "add" and self.ruleset is None:
                self.ruleset, self.rules = Ruleset(), {}
            return
        rs = self._rs()
        name = body.get("name")
        if kind == "set":
            if verb == "add":
                if name in rs.sets:
                    return  # "add" of an existing set is a no-op, like nft
                typ = body["type"] if isinstance(body["type"], list) else [body["type"]]
                rs.sets[name] = SetDef(name, tuple(typ), "interval" in body.get("flags", []), body.get("comment", ""))
            elif verb == "delete":
                self._need(rs.sets, name)
                del rs.sets[name]
            elif verb == "flush":
                self._need(rs.sets, name)
                rs.sets[name] = replace(rs.sets[name], elements=frozenset())
        elif kind == "map":
            if verb == "add":
                rs.maps.setdefault(name, MapDef(name, body["type"]))
            elif verb == "delete":
                self._need(rs.maps, name)
                del rs.maps[name]
            elif verb == "flush":
                self._need(rs.maps, name)
                rs.maps[name] = replace(rs.maps[name], elements=())
        elif kind == "chain":
            if verb == "add":
                hook = Hook(body["hook"], body["prio"]) if "hook" in body else None
                rs.chains.setdefault(name, ChainDef(name, (), hook))
                self.rules.setdefault(name, [])
            elif verb == "flush":
                self._need(rs.chains, name)
                self.rules[name] = []
            elif verb == "delete":
                self._need(rs.chains, name)
                if self.rules.get(name):
                    raise ApplyError(f"Device or resource busy: chain {name} is not empty")
                del rs.chains[name]
                self.rules.pop(name, None)
        elif kind == "rule":
            self._need(rs.chains, body["chain"])
            rules = self.rules[body["chain"]]
            if verb == "delete":
                at = next((i for i, r in enumerate(rules) if r.get("handle") == body.get("handle")), None)
                if at is None:
                    raise ApplyError(f"No such file or directory: rule handle {body.get('handle')} in chain {body['chain']}")
                del rules[at]
            elif verb == "add" and "handle" not in body:
                rules.append({**{k: v for k, v in body.items() if k in ("expr", "comment")}, "handle": self.next_handle})
                self.next_handle += 1
            else:
                raise ApplyError(f"fake backend: unsupported {verb} rule {body}")
        elif kind == "element":
            self._element(rs, verb, name, body["elem"])
        else:
            raise ApplyError(f"fake backend: unsupported {verb} {kind}")

    def _element(self, rs: Ruleset, verb: str, name: str, elems: list[Any]) -> None:
        if name in rs.maps:
            m = rs.maps[name]
            cur = dict(m.elements)
            for entry in elems:
                key, target = map_entry_from_json(entry)  # a verdict other than jump: FOREIGN_TARGET
                if verb == "add":
                    if key in cur and cur[key] != target:
                        raise ApplyError(f"File exists: element {key} in map {name}")
                    if target != FOREIGN_TARGET:
                        self._need(rs.chains, target)
                    cur[key] = target
                else:
                    if key not in cur:
                        raise ApplyError(f"No such file or directory: element {key} in map {name}")
                    del cur[key]
            rs.maps[name] = MapDef(name, m.type, tuple(sorted(cur.items())))
            return
        self._need(rs.sets, name)
        s = rs.sets[name]
        members = set(s.elements)
        for e in map(elem_from_json, elems):
            if verb == "add":
                members.add(e)
            elif e not in members:
                raise ApplyError(f"No such file or directory: element {e} in set {name}")
            else:
                members.discard(e)
        rs.sets[name] = SetDef(s.name, s.type, s.interval, s.comment, frozenset(members))

    @staticmethod
    def _need(d: dict[str, Any], name: str) -> None:
        if name not in d:
            raise ApplyError(f"No such file or directory: {name}")

    def _check_references(self) -> None:
        """Every @set, vmap and jump target must exist at the end of the batch."""
        rs = self.ruleset
        if rs is None:
            return
        text = json.dumps(self.rules)
        for ref in set(re.findall(r'"@([^"]+)"', text)):
            if ref not in rs.sets and ref not in rs.maps:
                raise ApplyError(f"No such file or directory: set {ref}")
        for m in rs.maps.values():
            for _, target in m.elements:
                if target != FOREIGN_TARGET:
                    self._need(rs.chains, target)
