"""The proposal as a user reads it: YAML manifests (each with what it admits) and a summary."""

from __future__ import annotations

from typing import Any

import yaml

from .propose import Proposal
from .prove import Proof

BEYOND_SHOWN = 20


class _Dumper(yaml.SafeDumper):
    """Plain manifests: a peer used twice is written twice, never as a YAML alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def manifests_yaml(p: Proposal) -> str:
    docs = []
    for pol in p.policies:
        key = f"{pol['metadata']['namespace']}/{pol['metadata']['name']}"
        n = p.admitted.get(key)
        head = f"# {key}: admits {n} observed flow(s)\n" if n is not None else f"# {key}: a namespace default deny\n"
        docs.append(head + yaml.dump(pol, Dumper=_Dumper, sort_keys=False))
    return "---\n".join(docs)


def summary(p: Proposal, proof: Proof, flows: int) -> list[str]:
    lines = [f"advise: {len(p.policies)} NetworkPolicies from {flows} observed flow(s)"]
    if proof.holds:
        lines.append(f"advise: the engine checked {proof.checked} observed flow(s) with these policies enforced: every one stays allowed")
    else:
        lines.append(f"advise: {len(proof.denied)} of {proof.checked} observed flow(s) would be DENIED with these policies enforced "
                     "(another policy denies them, e.g. a ClusterNetworkPolicy Deny):")
        lines += [f"  {f.src} → {f.dst} {f.protocol}/{f.port}" for f in proof.denied]
    if proof.beyond:
        lines.append(f"advise: beyond the observed flows, they also admit {len(proof.beyond)} workload pair(s) and service(s) never seen:")
        lines += [f"  {s} → {d} {svc}" for s, d, svc in proof.beyond[:BEYOND_SHOWN]]
        if len(proof.beyond) > BEYOND_SHOWN:
            lines.append(f"  … and {len(proof.beyond) - BEYOND_SHOWN} more (-o json lists every one)")
    else:
        lines.append("advise: between workloads, they admit nothing that was not seen")
    lines += [f"advise: note: {n}" for n in p.notes]
    return lines


def as_json(p: Proposal, proof: Proof) -> dict[str, Any]:
    return {"kind": "AdviseResult", "version": 1, "policies": p.policies, "admitted": p.admitted, "notes": p.notes,
            "checked": proof.checked, "denied": [f.to_json() for f in proof.denied],
            "beyond": [{"src": s, "dst": d, "service": svc} for s, d, svc in proof.beyond]}
