"""The legacy iptables stack and ipset, in the calling process's network namespace.

Batches go through `iptables-legacy-restore --noflush` / `ip6tables-legacy-restore` and
`ipset restore` (one process per step; see `restore.py` for the order). That is how
kube-proxy and Calico drive iptables too: legacy iptables replaces the whole table at
COMMIT, so a per-rule library (python-iptables over libiptc) would do the same table swap
once per call, without the atomic batch.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
from collections.abc import Set as AbstractSet

from ..dataplane.backend import OWNER_MARK, ApplyError, NotOwned
from ..dataplane.config import RenderConfig
from ..dataplane.drift import Drift, find_drift
from ..dataplane.objects import Ruleset
from ..dataplane.ops import Plan, plan
from ..dataplane.render import LayoutRenderer
from .ipset import IpsetNetlink
from .layout import Names
from .parse import Saved, entries_of, entry_counts, parse_ipset_save, parse_save, saved_counters, to_ruleset
from .spell import FAMILIES, IptTransaction, map_families, spell

log = logging.getLogger("policyd.ipt")
SAVE = {4: "iptables-legacy-save", 6: "ip6tables-legacy-save"}
RESTORE = {4: "iptables-legacy-restore", 6: "ip6tables-legacy-restore"}
TOOLS = (*SAVE.values(), *RESTORE.values(), "ipset")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


class IptDialect:
    """How the iptables backend writes a plan down and diffs it, without the kernel: chains
    prefixed `<TABLE>-` in the filter tables of iptables and ip6tables (legacy), ipsets
    prefixed `<table>-`."""

    supports_json = False

    def __init__(self, table: str = "policyd") -> None:
        self.table = table
        self.names = Names(table)

    def text(self, ruleset: Ruleset, as_json: bool = False) -> str:
        if as_json:
            raise ValueError("the iptables backend's input is ipset and iptables-restore text, not JSON")
        return spell(plan(None, ruleset)).text()

    def renderer(self, cfg: RenderConfig) -> LayoutRenderer:
        return LayoutRenderer(cfg, self.names)

    def describe(self) -> str:
        return f"iptables-legacy chains {self.names.chain_prefix}* and ipsets {self.names.set_prefix}*"

    def spell(self, p: Plan) -> IptTransaction:
        return spell(p)


class IptBackend(IptDialect):
    """The legacy iptables and ipset tools of the calling process's network namespace."""

    def __init__(self, table: str = "policyd", check_tools: bool = True) -> None:
        super().__init__(table)
        missing = missing_tools() if check_tools else []
        if missing:
            raise RuntimeError(f"the iptables backend needs {', '.join(missing)}: install the iptables and ipset packages")
        self.leftover_sets = 0  # destroys the kernel refused with "in use" (see _destroy)

    @property
    def leftovers(self) -> int:
        return self.leftover_sets

    def listing(self) -> str:
        ipsets = sorted(self._run(["ipset", "save"]).splitlines(), key=lambda line: (line.split()[1:2], not line.startswith("create"), line))
        text = "".join(self._run([SAVE[f], "-t", "filter"]) for f in FAMILIES) + "".join(line + "\n" for line in ipsets)
        text = re.sub(r"\[\d+:\d+\]", "[0:0]", text)  # packet counters of the built-in chains
        text = re.sub(r" initval 0x[0-9a-f]+", "", text)  # each ipset's random hash seed (elements sorted: hash order)
        return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))  # no timestamps

    def generation(self) -> int | None:
        return None  # legacy iptables and ipset keep no generation: every full resync reads all

    def names_writer(self) -> IpsetNetlink:
        """What writes the addresses learned for domainNames peers (names/): ipset's netlink,
        in the namespace of the caller."""
        return IpsetNetlink()

    def commits(self, tx: IptTransaction) -> int:
        return 0

    def check(self, believed: Ruleset, elements: bool = False, pending: AbstractSet[str] = frozenset()) -> list[Drift]:
        """iptables-save of both families and ipset headers (three processes): every rule,
        compared line by line (dispatch chains included: a deleted pod dispatch rule is
        seen), and each ipset's number of entries (a flushed or edited set is seen; which
        elements differ is for the full sync that follows). With `elements`, `ipset save`
        instead, every element compared."""
        saved = self._saved()
        listed = self._run(["ipset", "save"] if elements else ["ipset", "list", "-t"])
        actual = self._ruleset(saved, listed, elements)
        found = find_drift(believed, actual, elements, self.describe(), pending)
        if actual is None:
            return found
        if not elements:  # else find_drift compared maps and sets element by element
            found += [Drift("map-elements", n) for n, m in sorted(believed.maps.items())
                      if n in actual.maps and actual.maps[n].elements != m.elements]
            counts = entry_counts(listed)
            found += [Drift("set-elements", n) for n, s in sorted(believed.sets.items())
                      if n in counts and n not in pending and not s.learned and counts[n] != entries_of(s)]
        # What exists in one family only still reads back under its name (the other
        # family's copy), so say here what a family lacks: a chain, a dispatch chain, or a
        # chain's jump from FORWARD/INPUT.
        for n, c in sorted(believed.chains.items()):
            found += [Drift("chain-missing", f"{n} (IPv{f})") for f in FAMILIES if n in actual.chains and n not in saved[f].chains]
            have = actual.chains.get(n)
            if c.hook is not None and have is not None and have.hooked_families is not None:
                found += [Drift("jump-not-first" if f in have.stray_hooks else "jump-missing", f"{n} (IPv{f})")
                          for f in FAMILIES if f not in have.hooked_families]
        for n, m in sorted(believed.maps.items()):
            found += [Drift("map-missing", f"{n} (IPv{f})") for f in map_families(m) if n in actual.maps and n not in saved[f].chains]
        return found

    # --- kernel calls ----------------------------------------------------------------------

    def _run(self, argv: list[str], text: str | None = None) -> str:
        p = subprocess.run(argv, input=text, capture_output=True, text=True)
        if p.returncode != 0:
            err = p.stderr.strip() or f"exit {p.returncode}"
            raise ApplyError(f"{argv[0]}: {err}")
        return p.stdout

    def rule_counters(self) -> list[tuple[str, str, int, int]]:
        """(chain, rule id, packets, bytes) of every RETURN and DROP rule of ours, both families
        (`iptables-save -c`: iptables counts every rule; no ipset is read)."""
        return [c for f in FAMILIES for c in saved_counters(self._run([SAVE[f], "-c", "-t", "filter"]), self.names.chain_prefix)]

    def _saved(self) -> dict[int, Saved]:
        return {f: parse_save(self._run([SAVE[f], "-t", "filter"]), self.names) for f in FAMILIES}

    def read(self, elements: bool = True) -> Ruleset | None:
        """Without `elements` the sets come from `ipset list -t` (headers only)."""
        return self._ruleset(self._saved(), self._run(["ipset", "save"] if elements else ["ipset", "list", "-t"]), elements)

    def _ruleset(self, saved: dict[int, Saved], ipsets: str, elements: bool) -> Ruleset | None:
        sets = parse_ipset_save(ipsets, self.names, elements)
        if not sets and not saved[4].chains and not saved[6].chains:
            return None
        return to_ruleset(saved, sets, self.names)

    def apply(self, tx: IptTransaction) -> None:
        if not tx:
            return
        if tx.ipset_before:
            self._run(["ipset", "restore"], "\n".join(tx.ipset_before) + "\n")
        for fam in FAMILIES:
            if tx.rules[fam]:
                self._apply_family(fam, tx)
        if tx.ipset_after:
            self._destroy(tx.ipset_after)

    def _apply_family(self, family: int, tx: IptTransaction) -> None:
        """One family's chains in one swap of its filter table."""
        self._run([RESTORE[family], "-w", "5", "--noflush"], tx.restore_text(family))

    def _destroy(self, lines: list[str]) -> None:
        """Step 3. The kernel may refuse to destroy a set that no rule names any more ("in
        use by a kernel component": its references are dropped a moment after the table
        swap, or held by a listing in progress). The rules are already right, so that is not
        a failed sync: retry briefly, then leave the set, say so, and let the next full
        resync (which finds a set we do not want) destroy it."""
        remaining = list(lines)
        for attempt in range(4):
            try:
                self._run(["ipset", "-exist", "restore"], "\n".join(remaining) + "\n")
                return
            except ApplyError as e:
                if "in use" not in str(e):
                    raise
                present = set(parse_ipset_save(self._run(["ipset", "list", "-t"]), self.names, elements=False))
                remaining = [line for line in remaining if line.split()[1] in present]
                if not remaining:
                    return
                time.sleep(0.05 * (attempt + 1))
        log.warning("ipsets left for the next full resync to remove: %s", self._references(remaining))
        self.leftover_sets += len(remaining)

    def _references(self, lines: list[str]) -> str:
        """Who still refers to the sets a failed destroy named (for the error message)."""
        names = [line.split()[1] for line in lines if line.startswith("destroy ")]
        terse = self._run(["ipset", "list", "-t"])
        refs = {}
        for block in terse.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if fields.get("Name") in names:
                refs[fields["Name"]] = fields.get("References", "?")
        rules = [line for f in FAMILIES for line in self._run([SAVE[f], "-t", "filter"]).splitlines()
                 if any(f"--match-set {n} " in line for n in names)]
        return f"{', '.join(names)} (kernel reference counts {refs}; our rules naming them: {rules or 'none'})"

    def delete_table(self) -> bool:
        """Unhook, flush and delete our chains in both families, then destroy our sets."""
        saved = self._saved()
        for fam in FAMILIES:
            ours = [n for n in saved[fam].chains if n in (self.names.base("forward"), self.names.base("input"))]
            marked = any(OWNER_MARK in (saved[fam].chains[n] or [""])[0] for n in ours)
            if saved[fam].chains and not marked:
                raise NotOwned(f"chains {self.names.chain_prefix}* exist in {RESTORE[fam].split('-')[0]} but policyd's base "
                               f"chains there do not carry its mark ({OWNER_MARK!r}): not removing anything")
        # Only names our renderer makes: a POLICYD-FOO chain or policyd-foo ipset someone
        # else made stays (a chain of ours that jumps to it would keep it referenced, so
        # ours are flushed before any is deleted, and theirs are left as they are).
        found = False
        for fam in FAMILIES:
            s = saved[fam]
            ours = sorted(n for n in s.chains if self.names.made_chain(n))
            if not ours:
                continue
            found = True
            lines = ["-D" + line[2:] for line in s.jump_rules if self.names.made_chain(line.rsplit(" -j ", 1)[-1].strip())]
            lines += [f":{n} - [0:0]" for n in ours] + [f"-X {n}" for n in ours]
            self._run([RESTORE[fam], "-w", "5", "--noflush"], "*filter\n" + "\n".join(lines) + "\nCOMMIT\n")
        sets = [n for n in parse_ipset_save(self._run(["ipset", "list", "-t"]), self.names, elements=False) if self.names.made_set(n)]
        if sets:
            found = True
            self._run(["ipset", "restore"], "".join(f"destroy {n}\n" for n in sorted(sets)))
        return found
