"""(what the kernel holds, what we want) → one iptables/ipset batch, and reading it back (pure).

A batch has three steps, each one call, in an order that never opens or closes a pod by
mistake:

1. `ipset restore`: create new sets (with their elements) and apply element changes, so a
   set is complete before any rule refers to it;
2. `iptables-legacy-restore --noflush` and `ip6tables-legacy-restore --noflush`: declare new
   and changed chains (declaring an existing chain flushes it), refill them, rewrite changed
   dispatch chains, hook the base chains in, flush and delete chains nothing needs. Legacy
   iptables swaps the whole filter table in at COMMIT, so each family changes atomically;
3. `ipset restore`: destroy sets no rule refers to any more.

The same comparison as `nft.diff`: with `touched` only those names, chains by digest,
sets by element (or the trusted delta), maps (dispatch chains) whole.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from ..compile.changes import SetDelta
from ..dataplane.objects import DIGEST_RE, ChainDef, Elem, Hook, MapDef, RuleBody, Ruleset, SetDef, Touched, names_to_compare
from .render import MAXELEM, Names, dispatch_rules, map_families

BUILTIN = {"forward": "FORWARD", "input": "INPUT"}
FAMILIES = (4, 6)


@dataclass
class IptTransaction:
    ipset_before: list[str] = field(default_factory=list)
    rules: dict[int, list[str]] = field(default_factory=lambda: {4: [], 6: []})
    ipset_after: list[str] = field(default_factory=list)
    ops: int = 0

    def __bool__(self) -> bool:
        return bool(self.ipset_before or self.rules[4] or self.rules[6] or self.ipset_after)

    def restore_text(self, family: int) -> str:
        """The `iptables-restore --noflush` input for one family ('' when it has nothing)."""
        lines = self.rules[family]
        return "*filter\n" + "\n".join(lines) + "\nCOMMIT\n" if lines else ""

    def text(self) -> str:
        """Everything, for humans (`policyd render --backend iptables`)."""
        parts = []
        if self.ipset_before:
            parts.append("# ipset restore\n" + "\n".join(self.ipset_before) + "\n")
        for fam in FAMILIES:
            if self.rules[fam]:
                parts.append(f"# {'ip6tables' if fam == 6 else 'iptables'}-legacy-restore --noflush\n" + self.restore_text(fam))
        if self.ipset_after:
            parts.append("# ipset restore\n" + "\n".join(self.ipset_after) + "\n")
        return "\n".join(parts)


def chain_lines(c: ChainDef) -> tuple[tuple[int, str], ...]:
    """The chain as `iptables-save` of each family lists it back (the renderer writes the
    matches the way iptables-save prints them), for comparing rule by rule."""
    if c.listed is not None:
        return tuple(c.listed)
    return tuple((f, rule_line(c.name, r)) for f in FAMILIES for r in c.rules if r["family"] in (0, f))


def rule_line(chain: str, r: RuleBody) -> str:
    parts = ["-A", chain]
    if r["match"]:
        parts.append(r["match"])
    if r["comment"]:
        parts.append(f'-m comment --comment "{r["comment"]}"')
    parts.append(f"-{'g' if r.get('goto') else 'j'} {r['target']}")
    return " ".join(parts)


def diff(
    actual: Ruleset | None,
    desired: Ruleset,
    names: Names,
    touched: Touched | None = None,
    deltas: dict[str, SetDelta[Elem]] | None = None,
) -> IptTransaction:
    """The jumps from FORWARD/INPUT are per family: where `actual` was read back, its chains
    say which families jump to them (`hooked_families`); otherwise its hooks are trusted
    (a partial sync from what we believe)."""
    tx = IptTransaction()
    if deltas is None:
        deltas = touched.deltas if touched is not None else {}
    actual = actual or Ruleset()

    set_names, map_names, chain_names = names_to_compare(actual, desired, touched)
    before, after, rules = tx.ipset_before, tx.ipset_after, tx.rules

    # 1. sets: new ones whole, existing ones by delta
    for n in set_names:
        have, want = actual.sets.get(n), desired.sets.get(n)
        if want is None:
            continue
        if have is not None and have.header() != want.header():
            raise ValueError(f"ipset {n} changed its type; run `policyd cleanup --backend iptables` to re-create it")
        if have is None:
            before.append(f"create {n} {want.type[0]} family {want.type[1]} maxelem {MAXELEM}")
            before.extend(f"add {n} {e}" for e in sorted(want.elements))
            continue
        gone: AbstractSet[Elem]
        new: AbstractSet[Elem]
        if n in deltas:
            gone, new = deltas[n].removed, deltas[n].added
        else:
            gone, new = have.elements - want.elements, want.elements - have.elements
        before.extend(f"del {n} {e.removesuffix(' nomatch')}" for e in sorted(gone))  # type: ignore[union-attr]
        before.extend(f"add {n} {e}" for e in sorted(new))

    # 2. chains: declare (create or flush) what is new or changed, then fill
    declare: dict[int, list[str]] = {4: [], 6: []}
    fill: dict[int, list[str]] = {4: [], 6: []}
    for n in chain_names:
        have_c, want_c = actual.chains.get(n), desired.chains.get(n)
        if want_c is None or (have_c is not None and have_c.digest == want_c.digest
                              and (have_c.listed is None or chain_lines(have_c) == chain_lines(want_c))):
            continue
        for fam in FAMILIES:
            declare[fam].append(f":{n} - [0:0]")
            fill[fam].extend(rule_line(n, r) for r in want_c.rules if r["family"] in (0, fam))
    for n in map_names:
        have_m, want_m = actual.maps.get(n), desired.maps.get(n)
        if want_m is None or (have_m is not None and have_m.elements == want_m.elements):
            continue
        for fam in map_families(want_m):
            declare[fam].append(f":{n} - [0:0]")
            fill[fam].extend(f"-A {n} {args}" for args in dispatch_rules(want_m))
    # base chains into FORWARD / INPUT (first position), where the kernel lacks the jump
    hooks: dict[int, list[str]] = {4: [], 6: []}
    for n in chain_names:
        want_c = desired.chains.get(n)
        if want_c is None or want_c.hook is None:
            continue
        have_c = actual.chains.get(n)
        for fam in FAMILIES:
            if have_c is not None and have_c.hooked_families is not None:  # read back: per family
                present = fam in have_c.hooked_families and have_c.hook == want_c.hook
            else:  # what we believe: the hook as we wrote it
                present = have_c is not None and have_c.hook == want_c.hook
            if not present:
                hooks[fam].append(f"-I {BUILTIN[want_c.hook.hook]} 1 -j {n}")
    # stale: unhook, flush, delete
    drop: dict[int, list[str]] = {4: [], 6: []}
    for n in chain_names:
        have_c = actual.chains.get(n)
        if have_c is None or n in desired.chains:
            continue
        for fam in FAMILIES:
            if have_c.hook is not None and (have_c.hooked_families is None or fam in have_c.hooked_families):
                drop[fam].append(f"-D {BUILTIN[have_c.hook.hook]} -j {n}")
            declare[fam].append(f":{n} - [0:0]")
            drop[fam].append(f"-X {n}")
    for n in map_names:
        if n in actual.maps and n not in desired.maps:
            for fam in map_families(actual.maps[n]):
                declare[fam].append(f":{n} - [0:0]")
                drop[fam].append(f"-X {n}")
    for fam in FAMILIES:
        rules[fam].extend(declare[fam] + fill[fam] + hooks[fam] + drop[fam])

    # 3. sets nothing refers to any more
    for n in set_names:
        if n in actual.sets and n not in desired.sets:
            after.append(f"destroy {n}")
    tx.ops = len(before) + len(after) + len(rules[4]) + len(rules[6])
    return tx


# --- reading the kernel back --------------------------------------------------------------

COMMENT_RE = re.compile(r'-m comment --comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')
DISPATCH_RE = re.compile(r"^-A (\S+) -([iosd]) (\S+) -j (\S+)$")


@dataclass
class Saved:
    """One family's `iptables-save -t filter`, reduced to what policyd owns."""

    chains: dict[str, list[str]] = field(default_factory=dict)  # our chain → its rule lines
    hooks: dict[str, str] = field(default_factory=dict)  # our chain jumped to from FORWARD/INPUT → that hook
    jump_rules: list[str] = field(default_factory=list)  # those jumps as saved (`-A FORWARD …`)


def parse_save(text: str, names: Names) -> Saved:
    out = Saved()
    builtin_hook = {v: k for k, v in BUILTIN.items()}
    prefix = names.chain_prefix
    for line in text.splitlines():
        if line.startswith(":" + prefix):
            out.chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chain = line.split(maxsplit=2)[1]
            if chain.startswith(prefix):
                out.chains.setdefault(chain, []).append(line)
            elif chain in builtin_hook:
                target = line.rsplit(" -j ", 1)[-1].strip()
                if target.startswith(prefix):
                    out.hooks[target] = builtin_hook[chain]
                    out.jump_rules.append(line)
    return out


COUNTED_RE = re.compile(r"^\[(\d+):(\d+)\] -A (\S+) .*-j (RETURN|DROP)$")


def saved_counters(text: str, chain_prefix: str) -> list[tuple[str, str, int, int]]:
    """`iptables-save -c` → (chain, comment, packets, bytes) of our chains' RETURN and DROP rules."""
    out = []
    for line in text.splitlines():
        m = COUNTED_RE.match(line)
        if m is None or not m.group(3).startswith(chain_prefix):
            continue
        c = COMMENT_RE.search(line)
        out.append((m.group(3), (c.group(1) or c.group(2)) if c else "", int(m.group(1)), int(m.group(2))))
    return out


def last_digest(lines: list[str]) -> str:
    if not lines:
        return ""
    m = COMMENT_RE.search(lines[-1])
    text = (m.group(1) or m.group(2)) if m else ""
    d = DIGEST_RE.search(text or "")
    return d.group(1) if d else ""


def dispatch_elements(lines: list[str]) -> tuple[tuple[str, str], ...] | None:
    """A dispatch chain's rules back as map elements; None when a rule is not ours."""
    out = []
    for line in lines:
        m = DISPATCH_RE.match(line)
        if m is None:
            return None
        key = m.group(3)
        if m.group(2) in "sd":
            key = re.sub(r"/(32|128)$", "", key)
        out.append((key, m.group(4)))
    return tuple(sorted(out))


def parse_ipset_save(text: str, names: Names, elements: bool = True) -> dict[str, SetDef]:
    """`ipset save` (or, terse, `ipset list -t`) → our sets."""
    sets: dict[str, SetDef] = {}
    elems: dict[str, set[Elem]] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("create "):
            parts = shlex.split(line)
            n, typ = parts[1], parts[2]
            fam = parts[parts.index("family") + 1] if "family" in parts else "inet"
            if n.startswith(names.set_prefix):
                sets[n] = SetDef(n, (typ, fam))
                elems[n] = set()
        elif line.startswith("add "):
            _, n, rest = line.split(" ", 2)
            if n in elems:
                elems[n].add(rest.strip())
        elif line.startswith("Name: "):
            name = line[6:].strip()
        elif line.startswith("Type: ") and name and name.startswith(names.set_prefix):
            sets[name] = SetDef(name, (line[6:].strip(), "inet"))
        elif line.startswith("Header: ") and name in sets:
            parts = line[8:].split()
            fam = parts[parts.index("family") + 1] if "family" in parts else "inet"
            sets[name] = SetDef(name, (sets[name].type[0], fam))
    if elements:
        for n, es in elems.items():
            sets[n] = SetDef(n, sets[n].type, elements=frozenset(es))
    return sets


def entry_counts(terse: str) -> dict[str, int]:
    """`ipset list -t` → each set's number of entries."""
    out, name = {}, None
    for line in terse.splitlines():
        if line.startswith("Name: "):
            name = line[6:].strip()
        elif line.startswith("Number of entries: ") and name is not None:
            out[name] = int(line.split(":", 1)[1])
    return out


def to_ruleset(saved: dict[int, Saved], sets: dict[str, SetDef], desired_maps: dict[str, MapDef]) -> Ruleset:
    """Both families' chains and the sets → one Ruleset. A chain whose two families differ
    gets no digest (so it is rewritten); dispatch chains (named like desired's maps, or
    made only of dispatch rules) come back as maps."""
    rs = Ruleset(sets=dict(sets))
    names = set(saved[4].chains) | set(saved[6].chains)
    for n in sorted(names):
        per_fam = [saved[f].chains.get(n) for f in FAMILIES]
        if n in desired_maps:
            typ = desired_maps[n].type
            fams = map_families(desired_maps[n])
            # Missing in one of its families is not "empty": an empty dispatch chain lists
            # no rules either, so presence is checked first (else it is never re-created).
            got = [dispatch_elements(saved[f].chains[n]) if n in saved[f].chains else None for f in fams]
            if all(g is not None and g == got[0] for g in got):
                rs.maps[n] = MapDef(n, typ, got[0])  # type: ignore[arg-type]
            else:
                rs.maps[n] = MapDef(n, typ, (("?", "?"),))  # differs from anything desired
            continue
        digests = {last_digest(lines) if lines is not None else None for lines in per_fam}
        digest = digests.pop() if len(digests) == 1 else ""
        hooked = [saved[f].hooks[n] for f in FAMILIES if n in saved[f].hooks]
        hook = Hook(hooked[0], 0) if hooked else None
        listed = tuple((f, line.strip()) for f, lines in zip(FAMILIES, per_fam, strict=True) for line in lines or ())
        rs.chains[n] = ChainDef(n, (), hook, digest or "", listed, frozenset(f for f in FAMILIES if n in saved[f].hooks))
    return rs
