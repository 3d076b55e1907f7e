"""libnftables in-process: one long-lived context, one call per transaction.

Through the nftables project's own Python binding (`nftables.Nftables`, the python3-nftables
module, installed from PyPI as `pip-nftables`), so the agent runs in any virtualenv; it
measured as fast as the ctypes binding it replaced (docs/benchmarks.md, `--only nft-ops`).
With libnftables 1.0.6, JSON input is parsed only while JSON output is enabled, so the
context always has JSON output on.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Set as AbstractSet

from ..dataplane.backend import OWNER_MARK, ApplyError, NotOwned
from ..dataplane.config import RenderConfig
from ..dataplane.drift import Drift, find_drift
from ..dataplane.objects import MapDef, Ruleset, SetDef
from ..dataplane.ops import Plan, plan
from ..dataplane.render import LayoutRenderer
from .generation import Generation
from .layout import LAYOUT
from .parse import parse_listing, rule_counters
from .raw import RawNftables
from .spell import Transaction, spell
from .text import ruleset_text

log = logging.getLogger("policyd.nft")

class Libnftables:
    """One libnftables context for the process, behind a lock (the C context is not
    thread-safe; the agent's kernel work runs on a worker thread)."""

    def __init__(self) -> None:
        try:
            import nftables
        except ImportError as e:
            raise RuntimeError("the nftables Python binding is missing: pip install 'policyd[agent]' (it brings pip-nftables)") from e
        try:
            self.nft = nftables.Nftables()
        except OSError as e:
            raise RuntimeError(f"cannot load libnftables (libnftables.so.1: {e}): install the libnftables1 package") from e
        self.nft.set_json_output(True)
        self.lock = threading.Lock()

    def run(self, command: str, terse: bool = False, json_output: bool = True) -> tuple[int, str, str]:
        """`terse`: listings without set and map elements; `json_output` False: text output
        (what libnftables 1.0.6 prints table comments in)."""
        with self.lock:
            self.nft.set_json_output(json_output)
            self.nft.set_terse_output(terse)
            rc, out, err = self.nft.cmd(command)
        return int(rc), out or "", err or ""


LOCAL_SET_PREFIX = "pod-"  # the node's own sets (the skeleton's); peer sets are sel-, np-, blk-, nd-


class NftDialect:
    """What every nftables backend (the kernel's, the fake) shares: the layout the renderer
    uses, and the spelling of plans."""

    supports_json = True

    def __init__(self, table: str = "policyd") -> None:
        self.table = table

    def rule_handles(self, chain: str) -> dict[str, list[int]] | None:
        """The chain's rules' handles by rule id (None: cannot say; the chain is refilled)."""
        return None

    def text(self, ruleset: Ruleset, as_json: bool = False) -> str:
        return spell(plan(None, ruleset), self.table).to_json() + "\n" if as_json else ruleset_text(ruleset, self.table)

    def renderer(self, cfg: RenderConfig) -> LayoutRenderer:
        return LayoutRenderer(cfg, LAYOUT)

    def spell(self, p: Plan) -> Transaction:
        return spell(p, self.table, self.rule_handles)

    def describe(self) -> str:
        return f"table inet {self.table}"

    @property
    def leftovers(self) -> int:
        return 0  # one transaction deletes a set with the rules that name it

    def read(self, elements: bool = True) -> Ruleset | None:
        raise NotImplementedError

    def maps(self, names: list[str]) -> dict[str, MapDef]:
        """These verdict maps with their elements (a few per node, one entry per local pod)."""
        raise NotImplementedError

    def local_sets(self, names: list[str]) -> dict[str, SetDef]:
        """These sets with their elements: the node's own (`pod-*`: its pods' interfaces and
        addresses, for anti-spoofing and fail-closed), one entry per local pod."""
        raise NotImplementedError

    def generation(self) -> int | None:
        return None

    def commits(self, tx: Transaction) -> int:
        """One commit per libnftables batch; two when the table is created (its marked
        `add table` runs first, see NftBackend.apply)."""
        if not tx:
            return 0
        return (2 if tx.creates_table else 1 if tx.commands else 0) + len(tx.queue_rules)

    def check(self, believed: Ruleset, elements: bool = False, pending: AbstractSet[str] = frozenset()) -> list[Drift]:
        """Every rule of every chain from a terse listing (no set elements), compared rule by
        rule, so a rule replaced in place is seen as well as one added or removed; and the
        verdict maps and the node's own sets with their elements, so a flushed or edited map
        or anti-spoofing set is seen. Peer sets' elements (up to 100k) only with `elements`:
        then one complete listing, compared like a full sync's."""
        if elements:
            return find_drift(believed, self.read(elements=True), True, self.describe(), pending)
        actual = self.read(elements=False)
        found = find_drift(believed, actual, False, self.describe())
        if actual is not None:
            names = [n for n in sorted(believed.maps) if n in actual.maps]
            listed = self.maps(names)
            found += [Drift("map-elements", n) for n in names if n not in listed or listed[n].elements != believed.maps[n].elements]
            own = [n for n in sorted(believed.sets) if n.startswith(LOCAL_SET_PREFIX) and n in actual.sets]
            have = self.local_sets(own)
            found += [Drift("set-elements", n) for n in own if n not in have or have[n].elements != believed.sets[n].elements]
        return found


class NftNames:
    """Learned addresses into our table's sets, through raw netlink batches."""

    def __init__(self, raw: RawNftables, table: str) -> None:
        self.raw, self.table = raw, table

    def add(self, entries: dict[str, list[tuple[str, float]]]) -> None:
        self.raw.add_elements(self.table, entries)

    def delete(self, entries: dict[str, list[str]]) -> None:
        self.raw.delete_elements(self.table, entries)


class NftBackend(NftDialect):
    """The real kernel, through libnftables, in the calling process's network namespace."""

    def __init__(self, table: str = "policyd", lib: Libnftables | None = None) -> None:
        super().__init__(table)
        self.nft = lib or Libnftables()
        self._raw = RawNftables()  # (in the caller's network namespace, like libnftables' socket)
        try:  # opened here, like libnftables' socket: in the caller's network namespace
            self._generation: Generation | None = Generation()
        except OSError as e:
            log.warning("cannot read the nftables generation (%s): every full resync lists the whole table", e)
            self._generation = None

    def raw(self) -> RawNftables:
        """The raw netlink writer (made in the agent's namespace, with this backend)."""
        return self._raw

    def names_writer(self) -> NftNames:
        """What writes the addresses learned for domainNames peers (names/)."""
        return NftNames(self._raw, self.table)

    def generation(self) -> int | None:
        if self._generation is None:
            return None
        try:
            return self._generation.read()
        except OSError as e:
            log.warning("reading the nftables generation failed (%s): assuming the kernel changed", e)
            return None

    def listing(self) -> str:
        rc, out, err = self.nft.run(f"list table inet {self.table}", json_output=False)
        if rc != 0 and "No such file or directory" not in err:
            raise ApplyError(err.strip())
        return out if rc == 0 else ""

    def rule_counters(self) -> list[tuple[str, str, int, int]]:
        """(comment, packets, bytes) of every counting rule of ours, from a terse listing
        (no set elements)."""
        rc, out, err = self.nft.run("list ruleset", terse=True)
        if rc != 0:
            raise ApplyError(f"list ruleset: {err.strip()}")
        return rule_counters(json.loads(out), self.table)

    def read(self, elements: bool = True) -> Ruleset | None:
        # Terse: `list ruleset` is the listing that libnftables 1.0.6 serves without
        # fetching set elements (`list table` fetches them even when it will not print
        # them): ~5 ms instead of ~250 ms with a 100k-element set.
        cmd = f"list table inet {self.table}" if elements else "list ruleset"
        rc, out, err = self.nft.run(cmd, terse=not elements)
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise ApplyError(f"{cmd}: {err.strip()}")
        doc = json.loads(out)
        if not any(i.get("table", {}).get("name") == self.table and i["table"].get("family") == "inet" for i in doc.get("nftables", [])):
            return None
        return parse_listing(doc, self.table)

    def maps(self, names: list[str]) -> dict[str, MapDef]:
        return self._listed("map", names).maps

    def local_sets(self, names: list[str]) -> dict[str, SetDef]:
        return self._listed("set", names).sets

    def _listed(self, what: str, names: list[str]) -> Ruleset:
        """`list map|set` of each name, with elements (one small listing each)."""
        out = Ruleset()
        for name in names:
            rc, text, err = self.nft.run(f"list {what} inet {self.table} {name}")
            if rc == 0:
                got = parse_listing(json.loads(text), self.table)
                out.maps.update(got.maps)
                out.sets.update(got.sets)
            elif "No such file or directory" not in err:
                raise ApplyError(f"list {what} {name}: {err.strip()}")
        return out

    def apply(self, tx: Transaction) -> None:
        if not tx:
            return
        if tx.creates_table:
            # The ownership mark: libnftables 1.0.6 JSON carries no table comment, so the
            # table is created (or left as it is, if it exists) by a text command first.
            rc, _, err = self.nft.run(f'add table inet {self.table} {{ comment "{OWNER_MARK}" ; }}')
            if rc != 0:
                raise ApplyError(err.strip())
        if tx.commands:
            rc, _, err = self.nft.run(tx.to_json())
            if rc != 0:
                raise ApplyError(err.strip() or f"libnftables returned {rc}")
        for chain, rule in tx.queue_rules:
            assert rule.queue is not None
            try:
                self.raw().add_queue_rule(self.table, chain, rule, rule.queue.num, rule.queue.bypass)
            except OSError as e:
                raise ApplyError(f"adding the NFQUEUE rule to chain {chain} (xtables target through nft_compat): {e}") from e

    def rule_handles(self, chain: str) -> dict[str, list[int]] | None:
        """A raw netlink dump of the one chain (libnftables would first read every set
        element of the table): each rule's handle and the id in its comment."""
        if self._generation is None:
            return None
        try:
            return self._generation.rule_handles(self.table, chain)
        except OSError as e:
            log.warning("reading the rule handles of chain %s failed (%s): it is refilled", chain, e)
            return None

    def owned(self) -> bool | None:
        """None: no such table; else whether it carries policyd's mark."""
        rc, out, err = self.nft.run(f"list table inet {self.table}", terse=True, json_output=False)
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise ApplyError(err.strip())
        lines = out.splitlines()  # the table's comment, if any, is printed first
        return len(lines) > 1 and lines[1].strip() == f'comment "{OWNER_MARK}"'

    def delete_table(self) -> bool:
        owned = self.owned()
        if owned is None:
            return False
        if not owned:
            raise NotOwned(f"table inet {self.table} exists but was not made by policyd (its comment is not "
                           f"{OWNER_MARK!r}); not removing it")
        rc, _, err = self.nft.run(f"delete table inet {self.table}")
        if rc != 0 and "No such file or directory" not in err:
            raise ApplyError(err.strip())
        return rc == 0
