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

from ..compile.changes import SetDelta
from ..dataplane.backend import OWNER_MARK, ApplyError, NotOwned
from ..dataplane.config import RenderConfig
from ..dataplane.drift import Drift, find_drift
from ..dataplane.objects import ChainDef, Elem, MapDef, Ruleset, SetDef, Touched
from .diff import KernelChain, Transaction, chain_holds, diff
from .generation import Generation
from .render import NftRenderer
from .ruleset import parse_listing, rule_counters
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


LOCAL_SET_PREFIX = "pod-"  # the node's own sets (render_skeleton); peer sets are sel-, np-, blk-, nd-


class NftDialect:
    """What every nftables backend (the kernel's, the fake) shares: renderer and diff."""

    supports_json = True

    def __init__(self, table: str = "policyd") -> None:
        self.table = table
        # What our writes left in each chain (in the kernel's order), and the handles of its
        # rules once read: what lets a changed chain be edited in place (nft/diff.py).
        self.kernel_chains: dict[str, KernelChain] = {}
        self.handle_cache: dict[str, tuple[int, ...]] = {}

    def rule_handles(self, chain: str) -> tuple[int, ...] | None:
        """The chain's rules' handles in the kernel's order (None: cannot say)."""
        return None

    def handles_of(self, chain: str) -> tuple[int, ...] | None:
        """The handles of what we wrote in `chain`, read once per write; None unless the
        kernel holds exactly as many rules."""
        got = self.handle_cache.get(chain)
        if got is None:
            km = self.kernel_chains.get(chain)
            got = self.rule_handles(chain) if km is not None else None
            if km is None or got is None or len(got) != len(km.keys):
                return None
            self.handle_cache[chain] = got
        return got

    def committed(self, tx: Transaction) -> None:
        """After `tx` reached the kernel: the chains it wrote hold its layouts, with handles
        not read yet."""
        for n in tx.forget:
            self.kernel_chains.pop(n, None)
            self.handle_cache.pop(n, None)
        for n, layout in tx.layouts.items():
            self.kernel_chains[n] = layout
            self.handle_cache.pop(n, None)

    def failed(self) -> None:
        """A transaction failed: what the kernel holds is read again before any edit."""
        self.kernel_chains.clear()
        self.handle_cache.clear()

    def listed(self, rs: Ruleset | None) -> Ruleset | None:
        """A listing shows the kernel's handles: a chain whose handles are not what we last
        read (or whose length differs) is refilled at its next change."""
        chains = rs.chains if rs is not None else {}
        for n in list(self.kernel_chains):
            listed = chains[n].handles if n in chains else None
            cached = self.handle_cache.get(n)
            if listed is None or len(listed) != len(self.kernel_chains[n].keys) or (cached is not None and cached != listed):
                self.kernel_chains.pop(n)
                self.handle_cache.pop(n, None)
            else:
                self.handle_cache[n] = listed
        return rs

    def text(self, ruleset: Ruleset, as_json: bool = False) -> str:
        return diff(None, ruleset, self.table).to_json() + "\n" if as_json else ruleset_text(ruleset, self.table)

    def renderer(self, cfg: RenderConfig) -> NftRenderer:
        return NftRenderer(cfg)

    def diff(self, actual: Ruleset | None, desired: Ruleset, touched: Touched | None = None,
             deltas: dict[str, SetDelta[Elem]] | None = None) -> Transaction:
        return diff(actual, desired, self.table, touched, deltas, self.kernel_chains, self.handles_of)

    def describe(self) -> str:
        return f"table inet {self.table}"

    @property
    def leftovers(self) -> int:
        return 0  # one transaction deletes a set with the rules that name it

    def chain_holds(self, have: ChainDef, want: ChainDef) -> bool:
        return chain_holds(have, want)

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
        return 2 if any("table" in c.get("add", {}) for c in tx.commands) else 1

    def check(self, believed: Ruleset, elements: bool = False, pending: AbstractSet[str] = frozenset()) -> list[Drift]:
        """Every rule of every chain from a terse listing (no set elements), compared rule by
        rule, so a rule replaced in place is seen as well as one added or removed; and the
        verdict maps and the node's own sets with their elements, so a flushed or edited map
        or anti-spoofing set is seen. Peer sets' elements (up to 100k) only with `elements`:
        then one complete listing, compared like a full sync's."""
        if elements:
            return find_drift(believed, self.read(elements=True), self.chain_holds, True, self.describe(), pending)
        actual = self.read(elements=False)
        found = find_drift(believed, actual, self.chain_holds, False, self.describe())
        if actual is not None:
            names = [n for n in sorted(believed.maps) if n in actual.maps]
            listed = self.maps(names)
            found += [Drift("map-elements", n) for n in names if n not in listed or listed[n].elements != believed.maps[n].elements]
            own = [n for n in sorted(believed.sets) if n.startswith(LOCAL_SET_PREFIX) and n in actual.sets]
            have = self.local_sets(own)
            found += [Drift("set-elements", n) for n in own if n not in have or have[n].elements != believed.sets[n].elements]
        return found


class NftBackend(NftDialect):
    """The real kernel, through libnftables, in the calling process's network namespace."""

    def __init__(self, table: str = "policyd", lib: Libnftables | None = None) -> None:
        super().__init__(table)
        self.nft = lib or Libnftables()
        try:  # opened here, like libnftables' socket: in the caller's network namespace
            self._generation: Generation | None = Generation()
        except OSError as e:
            log.warning("cannot read the nftables generation (%s): every full resync lists the whole table", e)
            self._generation = None

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
                return self.listed(None)
            raise ApplyError(f"{cmd}: {err.strip()}")
        doc = json.loads(out)
        if not any(i.get("table", {}).get("name") == self.table and i["table"].get("family") == "inet" for i in doc.get("nftables", [])):
            return self.listed(None)
        return self.listed(parse_listing(doc, self.table))

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
        if any("table" in c.get("add", {}) for c in tx.commands):
            # The ownership mark: libnftables 1.0.6 JSON carries no table comment, so the
            # table is created (or left as it is, if it exists) by a text command first.
            rc, _, err = self.nft.run(f'add table inet {self.table} {{ comment "{OWNER_MARK}" ; }}')
            if rc != 0:
                raise ApplyError(err.strip())
        rc, _, err = self.nft.run(tx.to_json())
        if rc != 0:
            self.failed()
            raise ApplyError(err.strip() or f"libnftables returned {rc}")
        self.committed(tx)

    def rule_handles(self, chain: str) -> tuple[int, ...] | None:
        """A raw netlink dump of the one chain (libnftables would first read every set
        element of the table)."""
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
        self.failed()  # nothing we wrote stays there
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
