"""Human-readable output for matrix and explain (presentation only)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from ..compile.evaluate import SideVerdict, Verdict
from ..compile.plan import AllowRule, DomainSetSpec, NodeSetSpec, PodSetSpec, PortMatch, TierRule
from ..model.objects import Action, NetworkPolicy
from ..observe.counters import Count, Counters, side_key
from .matrix import POD_MATRIX, GroupedMatrix, Matrix

YES, NO = "✓", "✗"


def service(protocol: str, port: int | None) -> str:
    return protocol if port is None else f"{protocol}/{port}"


def matrix_table(m: Matrix, title: str = "") -> str:
    """A ✓/✗ grid: rows are sources, columns destinations, numbered to stay narrow."""
    head = title or f"Reachability for {service(m.protocol, m.port)}"
    targets = set(m.targets if m.targets is not None else m.pods)
    dots = ", · not probed" if targets != set(m.pods) else ""
    rows = [(src, [(YES if dst in allowed else NO) if dst in targets else "·" for dst in m.pods])
            for src in m.pods if src in m.allowed for allowed in [set(m.allowed[src])]]
    return grid(f"{head}  ({YES} allowed, {NO} denied{dots}; row = from, column = to)", m.pods, rows)


def grouped_table(m: GroupedMatrix) -> str:
    """The grid between groups of pods that every pod treats alike, then who is in which group."""
    n = m.pod_count
    head = (f"Reachability for {service(m.protocol, m.port)}  ({YES} allowed, {NO} denied; row = from, column = to; "
            f"{n} pod{'s' * (n != 1)} in {len(m.groups)} group{'s' * (len(m.groups) != 1)} of pods that every pod treats alike; "
            "a pod always reaches itself)")
    labels = [f"{name}  {pods[0]}" + (f" +{len(pods) - 1} more" if len(pods) > 1 else "") for name, pods in m.groups.items()]
    rows = [(label, [YES if dst in allowed else NO for dst in m.groups])
            for label, name in zip(labels, m.groups, strict=True) for allowed in [set(m.allowed[name])]]
    text = grid(head, labels, rows, numbered=False)
    members = [f"  {name}: {', '.join(pods)}" for name, pods in m.groups.items() if len(pods) > 1]
    return text + ("Groups of more than one pod:\n" + "\n".join(members) + "\n" if members else "")


def write_pairs_json(out: TextIO, protocol: str, port: int | None, pods: list[str], rows: Iterable[tuple[str, list[str]]]) -> None:
    """Matrix.to_json() of every pair, one source per line, written as it is computed."""
    out.write(f'{{"kind": "{POD_MATRIX}", "version": 1, "protocol": {json.dumps(protocol)}, "port": {json.dumps(port)},\n'
              f' "pods": {json.dumps(pods)},\n "allowed": {{')
    for n, (src, allowed) in enumerate(rows):
        out.write(f'{"," if n else ""}\n  {json.dumps(src)}: {json.dumps(allowed)}')
    out.write("\n }\n}\n")


def grid(head: str, names: list[str], rows: list[tuple[str, list[str]]], numbered: bool = True) -> str:
    n = len(names)
    lines = [head]
    if not n:
        return head + "\n(no pods)\n"
    width = len(str(n))
    label_w = max(len(x) for x in names) + (width + 2 if numbered else 0)
    for digit in range(width):
        lines.append(" " * label_w + " " + " ".join(str(i + 1).rjust(width)[digit] for i in range(n)))
    index = {x: i for i, x in enumerate(names)}
    for label, cells in rows:
        prefix = f"{str(index[label] + 1).rjust(width)}  " if numbered else ""
        lines.append(f"{prefix}{label}".ljust(label_w) + " " + " ".join(cells))
    return "\n".join(lines) + "\n"


def port_text(p: PortMatch) -> str:
    if p.first is None:
        return f"ports[{p.index}] ({p.protocol}, every port)"
    rng = str(p.first) if p.first == p.last else f"{p.first}-{p.last}"
    return f"ports[{p.index}] ({p.protocol} {rng})"


def rule_text(rule: AllowRule | TierRule, protocol: str, port: int | None) -> str:
    text = rule.describe() if isinstance(rule, TierRule) else rule.label()
    if isinstance(rule, TierRule) and rule.peer_index is not None:
        text += f", {'from' if rule.direction.value == 'ingress' else 'to'}[{rule.peer_index}]"
    if rule.peer is None:
        text += " (every peer)"
    if isinstance(rule.peer, NodeSetSpec):
        text += f" (nodes {rule.peer.node_selector.canonical() or 'all'})"
    if isinstance(rule.peer, DomainSetSpec):
        text += f" (domainNames {', '.join(rule.peer.names)})"
    if isinstance(rule.peer, PodSetSpec) and rule.peer.port_name:
        text += f" named port {rule.peer.protocol}/{rule.peer.port_name}"
    elif rule.ports is None:
        text += " (every port)"
    else:
        hit = next((p for p in rule.ports if port is not None and p.matches(protocol, port)), None)
        if hit:
            text += " " + port_text(hit)
    return text


def side_text(s: SideVerdict, protocol: str, port: int | None) -> str:
    who = f"{s.direction.value} of {s.endpoint}"
    if s.endpoint.pod is None:
        return f"  {who}: not a pod, no {s.direction.value} policy applies"
    kind = "Ingress" if s.direction.value == "ingress" else "Egress"
    if s.plan is None:
        return f"  {who}: not isolated (no policy with {kind} in policyTypes selects it)"
    lines = [f"  {who}:"]
    if s.passed_by is not None:
        lines.append(f"    passed on by {rule_text(s.passed_by, protocol, port)}")
    d = s.decided_by
    if d is not None and d.tier.value == "Admin":
        lines.append(f"    {'accepted' if d.action is Action.ACCEPT else 'denied'} by {rule_text(d, protocol, port)}")
    elif s.plan.isolated:
        lines[0] += f" isolated by {', '.join(s.plan.policies)}"
        if s.plan.invalid:
            lines.append(f"    cannot be enforced as written, allowing nothing: {', '.join(s.plan.invalid)}")
        if s.allowed_by is not None:
            lines.append(f"    allowed by {rule_text(s.allowed_by, protocol, port)}")
        else:
            lines.append("    no rule allows this connection")
    elif d is not None:
        verb = {Action.ACCEPT: "accepted", Action.DENY: "denied", Action.PASS: "passed on to the default (allowed)"}[d.action]
        lines.append(f"    no NetworkPolicy isolates it; {verb} by {rule_text(d, protocol, port)}")
    else:
        lines.append("    no NetworkPolicy isolates it and no ClusterNetworkPolicy rule matches: allowed")
    names = [r for r in (*s.plan.admin, *s.plan.baseline) if isinstance(r.peer, DomainSetSpec) and r is not d]
    for r in names:
        lines.append(f"    not through {rule_text(r, protocol, port)}: its address was not learned for one of those names "
                     "(`--name NAME`: as if the pod had resolved NAME to it)")
    if s.audit_would_drop:
        lines.append(f"    audit mode (not enforced): {', '.join(s.audit_would_drop)} would drop this; no rule of "
                     f"{'it' if len(s.audit_would_drop) == 1 else 'them'} allows it")
    elif s.audit_allowed_by is not None:
        lines.append(f"    audit mode (not enforced): would be allowed by {rule_text(s.audit_allowed_by, protocol, port)}")
    return "\n".join(lines)


def hits_text(v: Verdict, counters_of: Callable[[str], Counters]) -> str:
    """What the rule that decided each side has counted on the pod's node (a live lab or
    agent): every pod of that node it applies to, summed, since the rule was written."""
    lines = []
    for side in (v.egress, v.ingress):
        key, pod = side_key(side), side.endpoint.pod
        if key is None or pod is None or pod.node is None:
            continue
        count = counters_of(pod.node).by_rule.get(key, Count())
        lines.append(f"  counted on {pod.node}: {key.describe()}: {count.packets} packets, {count.bytes} bytes")
    return "".join(line + "\n" for line in lines)


def audit_note(policies: Iterable[NetworkPolicy]) -> str:
    """Under a matrix: the audit-mode policies, which it leaves out (they enforce nothing;
    `policyd explain` says what each would do)."""
    audited = sorted(p.key for p in policies if p.audit)
    if not audited:
        return ""
    return f"audit mode, not enforced and not in this matrix (policyd explain shows what they would drop): {', '.join(audited)}\n"


def explain_text(v: Verdict) -> str:
    head = (
        f"{v.src} ({v.src.ip}) → {v.dst} ({v.dst.ip}) {service(v.protocol, v.port)}: "
        f"{'ALLOWED' if v.allowed else 'DENIED'}"
    )
    return "\n".join([head, side_text(v.egress, v.protocol, v.port), side_text(v.ingress, v.protocol, v.port)]) + "\n"


def flows_table(doc: dict[str, Any]) -> str:
    """FlowRecords as text: one line per source, destination and port."""
    records = doc.get("records", [])
    lines = [f"{len(records)} flow(s) recorded on {', '.join(doc.get('nodes', [])) or 'no node'}"
             + (f"; {doc['dropped']} connection(s) not recorded (the table was full)" if doc.get("dropped") else "")]
    for r in records:
        lines.append(f"  {r['src']} → {r['dst']} {service(r['protocol'], r['port'])}: {r['count']} connection(s)")
    return "\n".join(lines) + "\n"
