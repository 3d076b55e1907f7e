"""`policyd matrix -o html`: the profile matrix as one self-contained page (no script, no
font, no request: it works offline and from a file). Rows are sources, columns
destinations, one per group of pods that every pod treats alike; a cell is green when the
group may open connections to the other, red when not, and its tooltip is `policyd
explain` between the groups' first pods: the rule that decides. Below the grid, the groups'
pods by namespace (presentation only)."""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from .matrix import GroupedMatrix
from .report import service

ALLOWED, DENIED = "#2e7d32", "#c62828"  # the cells' colours (the test looks for them in a screenshot)
MAX_EXPLAINED = 200  # groups up to which every cell carries its deciding rule (G² verdicts)


def matrix_html(m: GroupedMatrix, explain: Callable[[str, str], str] | None, title: str = "", audit: str = "") -> str:
    """`explain(source group, destination group)`: the deciding rule, for the tooltip (None,
    or more than MAX_EXPLAINED groups: the cells say only allowed or denied); `audit`: the
    audit-mode policies the matrix leaves out (report.audit_note), shown under the legend."""
    names = list(m.groups)
    detail = explain if explain is not None and len(names) <= MAX_EXPLAINED else None
    head = title or f"Reachability for {service(m.protocol, m.port)}"

    def label(name: str) -> str:
        pods = m.groups[name]
        more = f" +{len(pods) - 1}" if len(pods) > 1 else ""
        return f'<th scope="row" title="{escape(chr(10).join(pods))}">{escape(name)} <span>{escape(pods[0])}{more}</span></th>'

    rows = []
    for src in names:
        allowed = set(m.allowed[src])
        cells = []
        for dst in names:
            ok = dst in allowed
            tip = detail(src, dst) if detail is not None else f"{src} → {dst}: {'allowed' if ok else 'denied'}"
            cells.append(f'<td class="{"y" if ok else "n"}" title="{escape(tip)}">{"✓" if ok else "✗"}</td>')
        rows.append(f"<tr>{label(src)}{''.join(cells)}</tr>")
    by_ns: dict[str, list[tuple[str, str]]] = {}
    for name, pods in m.groups.items():
        for pod in pods:
            ns, _, pod_name = pod.partition("/")
            by_ns.setdefault(ns, []).append((name, pod_name))
    members = "".join(
        f"<h3>{escape(ns)}</h3><ul>" + "".join(f"<li><b>{escape(g)}</b> {escape(p)}</li>" for g, p in sorted(items)) + "</ul>"
        for ns, items in sorted(by_ns.items()))
    note = "" if detail is not None or explain is None else f"<p>More than {MAX_EXPLAINED} groups: the cells do not name their rules.</p>"
    if audit:
        note += f'<p class="audit">{escape(audit.strip())}</p>'
    n = m.pod_count
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(head)}</title>
<style>
body {{ font: 14px sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #bbb; padding: 4px 8px; }}
thead th {{ writing-mode: vertical-rl; transform: rotate(180deg); white-space: nowrap; font-weight: normal; }}
th[scope=row] {{ text-align: left; white-space: nowrap; }}
th span {{ color: #666; }}
td {{ text-align: center; color: #fff; min-width: 1.6em; cursor: help; }}
td.y {{ background: {ALLOWED}; }}
td.n {{ background: {DENIED}; }}
.legend span {{ display: inline-block; padding: 2px 10px; color: #fff; margin-right: 1em; }}
</style></head>
<body>
<h1>{escape(head)}</h1>
<p class="legend"><span style="background: {ALLOWED}">✓ allowed</span><span style="background: {DENIED}">✗ denied</span>
row = from, column = to; {n} pod{"s" * (n != 1)} in {len(names)} group{"s" * (len(names) != 1)} of pods that every pod treats
alike (a pod always reaches itself); hover over a cell for the rule that decides.</p>
{note}
<table>
<thead><tr><th></th>{"".join(f'<th scope="col">{escape(x)}</th>' for x in names)}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
<h2>Pods by namespace</h2>
{members}
</body></html>
"""
