"""An in-memory nftables with the Backend interface, for unit tests of render, plan and spell.

It interprets the transaction's JSON commands with the kernel's all-or-nothing semantics
and its refusals (adding an existing chain, deleting a missing element, deleting a chain
or set that is still referenced, deleting a rule by a handle the chain does not hold), so
that ordering bugs fail here as they would there. Rules get handles as the kernel gives
them (one counter per table) and are listed back as they were written (the real kernel's
normal form is the kernel tests' business).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from typing import Any

from ..dataplane.backend import ApplyError
from ..dataplane.objects import FOREIGN_TARGET, ChainDef, MapDef, Ruleset, SetDef
from ..dataplane.rules import Side, split_comment
from .backend import NftDialect
from .parse import NFT_KINDS, _hook, elem_from_json, map_entry_from_json, parse_rule
from .spell import Transaction


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
            return None
        rs = self.ruleset.copy()
        rs.sets = {n: replace(s, elements=frozenset()) if not elements or s.learned else s for n, s in rs.sets.items()}
        if not elements:
            rs.maps = {n: replace(m, elements=()) for n, m in rs.maps.items()}
        for name, chain in rs.chains.items():
            rs.chains[name] = ChainDef.read(name, (parse_rule(r) for r in self.rules.get(name, [])), chain.hook)
        return rs

    def rule_handles(self, chain: str) -> dict[str, list[int]] | None:
        out: dict[str, list[int]] = {}
        for r in self.rules.get(chain, []):
            if "handle" not in r:  # written by a test as someone else would: the kernel numbers it
                r["handle"] = self.next_handle
                self.next_handle += 1
            out.setdefault(split_comment(str(r.get("comment", "")))[1], []).append(r["handle"])
        return out

    def listing(self) -> str:
        return self.text(self.ruleset) if self.ruleset is not None else ""

    def rule_counters(self) -> list[tuple[str, str, int, int]]:
        """No packets cross a fake: every counting rule at zero."""
        return [(chain, split_comment(str(r.get("comment", "")))[1], 0, 0) for chain, rules in self.rules.items() for r in rules
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
            for chain, rule in tx.queue_rules:  # (the raw netlink batch after it: listed as libnftables lists it)
                self._run({"add": {"rule": {"family": "inet", "table": self.table, "chain": chain,
                                            "expr": [{"xt": {"type": "target", "name": "NFQUEUE"}}], "comment": rule.tagged_comment}}})
            self._check_references()
        except ApplyError:
            self.ruleset, self.rules = saved
            raise
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
                typ = tuple(body["type"] if isinstance(body["type"], list) else [body["type"]])
                skind, fam = NFT_KINDS[typ]
                if "interval" in body.get("flags", []):
                    skind = skind.PREFIX
                rs.sets[name] = SetDef(name, skind, fam, body.get("comment", ""), learned="timeout" in body.get("flags", []))
            elif verb == "delete":
                self._need(rs.sets, name)
                del rs.sets[name]
            elif verb == "flush":
                self._need(rs.sets, name)
                rs.sets[name] = replace(rs.sets[name], elements=frozenset())
        elif kind == "map":
            if verb == "add":
                rs.maps.setdefault(name, MapDef(name, Side.SRC, {"ifname": 0, "ipv4_addr": 4, "ipv6_addr": 6}[body["type"]]))
            elif verb == "delete":
                self._need(rs.maps, name)
                del rs.maps[name]
            elif verb == "flush":
                self._need(rs.maps, name)
                rs.maps[name] = replace(rs.maps[name], elements=())
        elif kind == "chain":
            if verb == "add":
                hook = _hook(body)
                if name in rs.chains and rs.chains[name].hook is not None and hook is not None and \
                        (hook.hook, hook.priority, hook.type) != (rs.chains[name].hook.hook, rs.chains[name].hook.priority,  # type: ignore[union-attr]
                                                                  rs.chains[name].hook.type):  # type: ignore[union-attr]
                    raise ApplyError(f"Operation not supported: chain {name}'s hook cannot be changed")
                if name in rs.chains and hook is None:
                    return
                rs.chains[name] = ChainDef(name, (), hook)
                self.rules.setdefault(name, [])
            elif verb == "flush":
                self._need(rs.chains, name)
                self.rules[name] = []
            elif verb == "delete":
                self._need(rs.chains, name)
                if self.rules.get(name):
                    raise ApplyError(f"Device or resource busy: chain {name} is not empty")
                if self._referenced(name):
                    raise ApplyError(f"Device or resource busy: chain {name} is referenced")
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
            elif verb in ("add", "insert") and "handle" not in body:
                rule = {**{k: v for k, v in body.items() if k in ("expr", "comment")}, "handle": self.next_handle}
                if verb == "add":
                    rules.append(rule)
                else:
                    rules.insert(0, rule)
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
            rs.maps[name] = replace(m, elements=tuple(sorted(cur.items())))
            return
        self._need(rs.sets, name)
        s = rs.sets[name]
        members = set(s.elements)
        for e in (elem_from_json(x, s.kind) for x in elems):
            if verb == "add":
                members.add(e)
            elif e not in members:
                raise ApplyError(f"No such file or directory: element {e} in set {name}")
            else:
                members.discard(e)
        rs.sets[name] = replace(s, elements=frozenset(members))

    @staticmethod
    def _need(d: dict[str, Any], name: str) -> None:
        if name not in d:
            raise ApplyError(f"No such file or directory: {name}")

    def _referenced(self, chain: str) -> bool:
        rs = self._rs()
        text = json.dumps(self.rules)
        return f'"target": "{chain}"' in text or any(target == chain for m in rs.maps.values() for _, target in m.elements)

    def _check_references(self) -> None:
        """Every @set, vmap and jump target must exist at the end of the batch."""
        rs = self.ruleset
        if rs is None:
            return
        text = json.dumps(self.rules)
        for ref in set(re.findall(r'"@([^"]+)"', text)):
            if ref not in rs.sets and ref not in rs.maps:
                raise ApplyError(f"No such file or directory: set {ref}")
        for ref in set(re.findall(r'"target": "([^"]+)"', text)):
            self._need(rs.chains, ref)
        for m in rs.maps.values():
            for _, target in m.elements:
                if target != FOREIGN_TARGET:
                    self._need(rs.chains, target)

