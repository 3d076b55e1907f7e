"""`policyd lab check`: probe every service a lab's pods serve, in each of its families, and
compare what answered with what the engine says."""

from __future__ import annotations

from ..whatif import report
from ..whatif.matrix import Matrix
from .families import VERSIONS
from .lab import Lab
from .probes import Say, services


def run_check(lab: Lab, protocol: str | None, port: int | None, timeout: float, say: Say = print,
              progress: Say | None = None, seen: dict[tuple[str, int | None], Matrix] | None = None) -> int:
    """Probe every service and compare with the engine; returns the number of mismatches
    (`seen`: also gets what each service's probes observed)."""
    rec = lab.load()
    wanted = [(protocol, port if protocol != "ICMP" else None)] if protocol else services(rec)
    versions = VERSIONS[rec.ip_family]
    total = 0
    for proto, prt in wanted:
        for version in versions:
            observed = lab.probe(None, None, proto, prt, timeout, progress=progress, version=version)
            if seen is not None and version == versions[0]:
                seen[(proto, prt)] = observed
            targets = observed.targets or observed.pods
            engine = lab.expected(proto, prt, list(observed.allowed), targets, version=version)
            bad = [(s, d, engine.is_allowed(s, d)) for s in observed.allowed for d in targets
                   if observed.is_allowed(s, d) != engine.is_allowed(s, d)]
            over = "" if rec.ip_family == "ipv4" else f" over IPv{version}"  # an IPv4 lab's lines as they always were
            say(f"{report.service(proto, prt):>8}{over}: {len(observed.allowed) * len(targets)} pairs probed, "
                f"{len(bad)} mismatch{'es' if len(bad) != 1 else ''}")
            for s, d, exp in bad:
                say(f"          {s} → {d}: engine says {'allowed' if exp else 'denied'}, probe {'answered' if not exp else 'got no answer'}")
            total += len(bad)
    return total
