"""docs/conformance.md, regenerated from the kept results of both upstream suites (and
keeping our own cases' section as written)."""

from __future__ import annotations

from .cnp_conformance import section
from .conformance import CNP_RESULTS_DIR, CONFIGS, DOC, OWN_CASES, RESULTS_DIR, Report, document, family_order


def record(report: Report, suite: str = "netpol") -> None:
    """Keep this configuration's latest result of `suite` (netpol or cnp) and regenerate
    docs/conformance.md from all (a control run without policyd is kept apart, as
    `control-<cni>`)."""
    where = RESULTS_DIR if suite == "netpol" else CNP_RESULTS_DIR
    where.mkdir(parents=True, exist_ok=True)
    stem = report.config if report.proxy_mode == "iptables" else f"{report.config}-proxy-{report.proxy_mode}"
    stem += "" if report.ip_family == "ipv4" else f"-{report.ip_family}"
    (where / f"{stem}.json").write_text(report.to_json())
    reports = [Report.from_json(f.read_text()) for f in sorted(RESULTS_DIR.glob("*.json"))]
    text = document([r for r in reports if not r.config.startswith("control-")],
                    [r for r in reports if r.config.startswith("control-")])
    cnp = [Report.from_json(f.read_text()) for f in sorted(CNP_RESULTS_DIR.glob("*.json"))]
    if cnp:
        order = {f"{c}-{b}": i for i, (c, b) in enumerate(CONFIGS)}
        text += "\n" + "\n".join(section(sorted(cnp, key=lambda r: (order.get(r.config, 99), r.proxy_mode, family_order(r))))) + "\n"
    old = DOC.read_text() if DOC.exists() else ""
    if OWN_CASES in old:  # our own cases (not an upstream suite's) are written by hand: kept as they are
        text = text.rstrip("\n") + "\n\n" + old[old.index(OWN_CASES):]
    DOC.write_text(text)
