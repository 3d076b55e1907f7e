"""Human-readable output for matrix and explain (presentation only)."""

from __future__ import annotations

from .compile.evaluate import SideVerdict, Verdict
from .compile.matrix import Matrix
from .compile.plan import AllowRule, PortMatch

YES, NO = "✓", "✗"


def service(protocol: str, port: int | None) -> str:
    return protocol if port is None else f"{protocol}/{port}"


def matrix_table(m: Matrix, title: str = "") -> str:
    """A ✓/✗ grid: rows are sources, columns destinations, numbered to stay narrow."""
    n = len(m.pods)
    head = title or f"Reachability for {service(m.protocol, m.port)}"
    targets = set(m.targets if m.targets is not None else m.pods)
    dots = ", · not probed" if targets != set(m.pods) else ""
    lines = [f"{head}  ({YES} allowed, {NO} denied{dots}; row = from, column = to)"]
    if not n:
        return lines[0] + "\n(no pods)\n"
    width = len(str(n))
    label_w = max(len(p) for p in m.pods) + width + 2
    for digit in range(width):
        cells = " ".join(str(i + 1).rjust(width)[digit] for i in range(n))
        lines.append(" " * label_w + " " + cells)
    for i, src in enumerate(m.pods):
        if src not in m.allowed:
            continue
        allowed = set(m.allowed[src])
        cells = " ".join((YES if dst in allowed else NO) if dst in targets else "·" for dst in m.pods)
        lines.append(f"{str(i + 1).rjust(width)}  {src}".ljust(label_w) + " " + cells)
    return "\n".join(lines) + "\n"


def port_text(p: PortMatch) -> str:
    if p.first is None:
        return f"ports[{p.index}] ({p.protocol}, every port)"
    rng = str(p.first) if p.first == p.last else f"{p.first}-{p.last}"
    return f"ports[{p.index}] ({p.protocol} {rng})"


def rule_text(rule: AllowRule, protocol: str, port: int | None) -> str:
    text = rule.label()
    if rule.peer is None:
        text += " (every peer)"
    if rule.peer is not None and getattr(rule.peer, "port_name", None):
        text += f" named port {rule.peer.protocol}/{rule.peer.port_name}"  # type: ignore[union-attr]
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
    if s.plan is None:
        kind = "Ingress" if s.direction.value == "ingress" else "Egress"
        return f"  {who}: not isolated (no policy with {kind} in policyTypes selects it)"
    lines = [f"  {who}: isolated by {', '.join(s.plan.policies)}"]
    if s.plan.invalid:
        lines.append(f"    cannot be enforced as written, allowing nothing: {', '.join(s.plan.invalid)}")
    if s.allowed_by is not None:
        lines.append(f"    allowed by {rule_text(s.allowed_by, protocol, port)}")
    else:
        lines.append("    no rule allows this connection")
    return "\n".join(lines)


def explain_text(v: Verdict) -> str:
    head = (
        f"{v.src} ({v.src.ip}) → {v.dst} ({v.dst.ip}) {service(v.protocol, v.port)}: "
        f"{'ALLOWED' if v.allowed else 'DENIED'}"
    )
    return "\n".join([head, side_text(v.egress, v.protocol, v.port), side_text(v.ingress, v.protocol, v.port)]) + "\n"
