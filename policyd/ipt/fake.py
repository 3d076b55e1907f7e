"""An in-memory legacy iptables + ipset behind the iptables backend, for unit tests of
render, diff and read-back without root.

It speaks the text the backend sends and reads (`ipset restore/save/list -t`,
`ip(6)tables-legacy-restore --noflush` and `-save`) with the kernel's rules and refusals:
ipset restore applies line by line and stops at the first error; an iptables restore is
all or nothing; a chain must exist before a rule names it, a referenced or non-empty chain
cannot be deleted, a set in use by a rule cannot be destroyed, an element cannot be added
twice or deleted when absent.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from ..dataplane.backend import ApplyError
from .backend import IptBackend
from .spell import IptTransaction

BUILTIN_CHAINS = ("INPUT", "FORWARD", "OUTPUT")
TARGETS = ("ACCEPT", "DROP", "RETURN", "REJECT", "NFLOG")
TARGET_RE = re.compile(r" -[jg] (\S+)")


class Refused(Exception):
    pass


class FakeIptKernel:
    def __init__(self) -> None:
        self.sets: dict[str, tuple[str, str, dict[str, str]]] = {}  # name → (type, family, key → entry)
        self.timeouts: set[str] = set()  # sets created with `timeout` (their entries carry one)
        self.tables: dict[int, dict[str, list[str]]] = {f: {c: [] for c in BUILTIN_CHAINS} for f in (4, 6)}
        self.busy: set[str] = set()  # sets the kernel still counts a reference to (a listing, a late release)

    # --- ipset --------------------------------------------------------------------------

    def _in_use(self, name: str) -> bool:
        return any(f"--match-set {name} " in r for t in self.tables.values() for rules in t.values() for r in rules)

    def ipset_line(self, line: str, exist: bool = False) -> None:
        """`exist`: ipset's -exist, which ignores creating what exists and removing what does not."""
        verb, name, *rest = line.split(" ", 2)
        if exist and ((verb == "create" and name in self.sets) or (verb in ("destroy", "del") and name not in self.sets)):
            return
        if verb == "create":
            if name in self.sets:
                raise Refused(f"set {name} already exists")
            words = rest[0].split()
            self.sets[name] = (words[0], words[words.index("family") + 1], {})
            if "timeout" in words:
                self.timeouts.add(name)
        elif verb == "destroy":
            if name not in self.sets:
                raise Refused(f"set {name} does not exist")
            if self._in_use(name) or name in self.busy:
                raise Refused(f"set {name} is in use by a kernel component")
            del self.sets[name]
            self.timeouts.discard(name)
        elif verb == "flush":
            if name not in self.sets:
                raise Refused(f"set {name} does not exist")
            self.sets[name][2].clear()
        elif verb in ("add", "del"):
            if name not in self.sets:
                raise Refused(f"set {name} does not exist")
            entry = rest[0]
            key = entry.removesuffix(" nomatch")
            elems = self.sets[name][2]
            if verb == "add":
                if key in elems:
                    raise Refused(f"element {key} is already added to {name}")
                elems[key] = entry
            else:
                if key not in elems:
                    raise Refused(f"element {key} is not in {name}")
                del elems[key]
        else:
            raise Refused(f"unknown ipset command {verb}")

    def ipset_save(self) -> str:
        out = []
        for name, (typ, fam, elems) in self.sets.items():
            timeout = " timeout 0" if name in self.timeouts else ""
            out.append(f"create {name} {typ} family {fam} hashsize 1024 maxelem 1048576{timeout}")
            out.extend(f"add {name} {e}" for e in elems.values())
        return "".join(line + "\n" for line in out)

    def ipset_terse(self) -> str:
        return "".join(f"Name: {n}\nType: {t}\nRevision: 1\nHeader: family {f} hashsize 1024 maxelem 1048576"
                       f"{' timeout 0' if n in self.timeouts else ''}\nNumber of entries: {len(e)}\n\n"
                       for n, (t, f, e) in self.sets.items())

    # --- iptables -----------------------------------------------------------------------

    def restore(self, family: int, text: str) -> None:
        """All or nothing: the table is swapped in at COMMIT."""
        table = copy.deepcopy(self.tables[family])
        for line in text.splitlines():
            if not line or line in ("*filter", "COMMIT"):
                continue
            if line.startswith(":"):
                table[line[1:].split()[0]] = []  # declare: create, or flush an existing chain
                continue
            op, chain, *rest = line.split(" ", 2)
            body = rest[0] if rest else ""
            if chain not in table:
                raise Refused(f"{line}: no chain {chain}")
            if op in ("-A", "-I"):
                if op == "-I":
                    pos, body = body.split(" ", 1)
                found = TARGET_RE.findall(" " + body)
                target = found[-1] if found else ""
                if target not in TARGETS and target not in table:
                    raise Refused(f"{line}: no chain/target {target}")
                for name in re.findall(r"--match-set (\S+) ", body):
                    if name not in self.sets:
                        raise Refused(f"{line}: no set {name}")
                if op == "-A":
                    table[chain].append(body)
                else:
                    table[chain].insert(int(pos) - 1, body)
            elif op == "-D":
                if body not in table[chain]:
                    raise Refused(f"{line}: no such rule")
                table[chain].remove(body)
            elif op == "-X":
                if table[chain]:
                    raise Refused(f"{line}: chain is not empty")
                if any(TARGET_RE.findall(" " + r)[-1:] == [chain] for rules in table.values() for r in rules):
                    raise Refused(f"{line}: chain is referenced")
                del table[chain]
            else:
                raise Refused(f"{line}: unknown command")
        self.tables[family] = table

    def save(self, family: int, counters: bool = False) -> str:
        """As iptables-save lists it; `counters` (-c): each rule's, which in a fake never count."""
        table = self.tables[family]
        lines = ["*filter", *(f":{c} ACCEPT [0:0]" for c in BUILTIN_CHAINS)]
        lines += [f":{c} - [0:0]" for c in sorted(table) if c not in BUILTIN_CHAINS]
        for c in [*BUILTIN_CHAINS, *sorted(c for c in table if c not in BUILTIN_CHAINS)]:
            lines += [f"{'[0:0] ' if counters else ''}-A {c} {r}" for r in table[c]]
        return "\n".join([*lines, "COMMIT"]) + "\n"

    def run(self, argv: list[str], text: str | None) -> str:
        tool = argv[0]
        if tool == "ipset":
            if argv[1] == "save":
                return self.ipset_save()
            if argv[1:3] == ["list", "-t"]:
                return self.ipset_terse()
            for line in (text or "").splitlines():  # not atomic, like the real one
                self.ipset_line(line, exist="-exist" in argv)
            return ""
        family = 6 if tool.startswith("ip6") else 4
        if tool.endswith("-save"):
            return self.save(family, counters="-c" in argv)
        self.restore(family, text or "")
        return ""


class FakeIptBackend(IptBackend):
    def __init__(self, table: str = "policyd") -> None:
        super().__init__(table, check_tools=False)
        self.kernel = FakeIptKernel()
        self.applied: list[Any] = []

    def _run(self, argv: list[str], text: str | None = None) -> str:
        try:
            return self.kernel.run(argv, text)
        except Refused as e:
            raise ApplyError(f"{argv[0]}: {e}") from None

    def apply(self, tx: IptTransaction) -> None:
        self.applied.append(tx)
        super().apply(tx)
