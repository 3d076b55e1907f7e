"""ClusterNetworkPolicy (policy.networking.k8s.io v1alpha2 and v1beta1, one schema) → a
frozen ClusterNetworkPolicy, with the CRD's validation (OpenAPI bounds and CEL rules).

The field documentation quoted below is the API's (sigs.k8s.io/network-policy-api). An
object that fails validation is returned marked `invalid`: it denies all traffic of what
its subject selects, at its tier and priority, so nothing is widened by a typo.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import names
from .fields import Context, as_dict, as_list, as_str, check_port_name, check_port_number, parse_cidr, parse_metadata, parse_selector
from .objects import Action, ClusterNetworkPolicy, CNPPeer, CNPPort, CNPRule, Direction, IPNetwork, Tier
from .selectors import MATCH_ALL, LabelSelector

GROUP = "policy.networking.k8s.io"
VERSIONS = ("v1alpha2", "v1beta1")
MAX_RULES = 25  # "A maximum of 25 rules is allowed in this block."
MAX_PEERS = 25
MAX_PROTOCOLS = 25
MAX_NETWORKS = 25
MAX_RULE_NAME = 100
# Where the API does not support a `domainNames` peer, it is a peer policyd does not enforce:
# an Accept rule matches nothing through it, a Deny or Pass rule denies all (fail closed).
NAMES_NOT_ACCEPT = "domainNames peers in a rule whose action is not Accept (the API supports them in Accept rules only)"
NAMES_NOT_ADMIN = "domainNames peers in the Baseline tier (policyd enforces them in the Admin tier, as NPEP-133 intends)"


def _one_of(ctx: Context, path: str, raw: dict[str, Any], fields: tuple[str, ...]) -> str | None:
    """MinProperties=1, MaxProperties=1: exactly one field set (null counts as unset)."""
    present = [k for k in raw if raw[k] is not None]
    unknown = [k for k in present if k not in fields]
    for k in unknown:
        ctx.error(f"{path}.{k}", f"unknown field (expected one of {', '.join(fields)})")
    known = [k for k in present if k in fields]
    if len(known) != 1 or unknown:
        if not unknown:
            ctx.error(path, f"exactly one of {', '.join(fields)} must be set" + (f" (has {', '.join(known)})" if known else ""))
        return None
    return known[0]


def _bounded(ctx: Context, path: str, raw: Any, low: int, high: int) -> list[Any]:
    items = as_list(ctx, path, raw)
    if raw is not None and not low <= len(items) <= high:
        ctx.error(path, f"must have {low} to {high} items, has {len(items)}")
    return items


def parse_namespaced_pod(ctx: Context, path: str, raw: Any) -> tuple[LabelSelector, LabelSelector] | None:
    """NamespacedPod: `namespaceSelector` (empty: every namespace) AND `podSelector` (required)."""
    raw = as_dict(ctx, path, raw)
    for k in sorted(set(raw) - {"namespaceSelector", "podSelector"}):
        ctx.error(f"{path}.{k}", "unknown field (expected namespaceSelector and podSelector)")
    if raw.get("podSelector") is None:
        ctx.error(f"{path}.podSelector", "required")
        return None
    ns = parse_selector(ctx, f"{path}.namespaceSelector", raw.get("namespaceSelector"))
    pods = parse_selector(ctx, f"{path}.podSelector", raw.get("podSelector"))
    return (ns, pods) if ns is not None and pods is not None else None


def parse_peer(ctx: Context, path: str, raw: Any, direction: Direction) -> CNPPeer | None:
    raw = as_dict(ctx, path, raw)
    fields = ("namespaces", "pods") if direction is Direction.INGRESS else ("namespaces", "pods", "nodes", "networks", "domainNames")
    if ctx.live and not any(raw.get(k) is not None for k in fields):
        # "If an implementation sees no fields are set then it can infer that the deployed
        # CRD is of an incompatible version with an unknown field. In that case it should
        # fail closed." (The API server accepted it, so its CRD knows a peer we do not.)
        ctx.notes.append(f"{path}: a peer with no field policyd knows ({', '.join(sorted(map(str, raw))) or 'empty'}): the rule fails closed")
        return CNPPeer(unsupported="a peer of a kind policyd does not know")
    which = _one_of(ctx, path, raw, fields)
    if which is None:
        return None
    value = raw[which]
    if which == "namespaces":
        # "Namespaces defines a way to select all pods within a set of Namespaces."
        sel = parse_selector(ctx, f"{path}.namespaces", value)
        return CNPPeer(namespace_selector=sel, pod_selector=MATCH_ALL) if sel is not None else None
    if which == "pods":
        got = parse_namespaced_pod(ctx, f"{path}.pods", value)
        return CNPPeer(namespace_selector=got[0], pod_selector=got[1]) if got is not None else None
    if which == "networks":
        nets: list[IPNetwork] = []
        for i, c in enumerate(_bounded(ctx, f"{path}.networks", value, 1, MAX_NETWORKS)):
            if isinstance(c, str) and len(c) > 43:
                ctx.error(f"{path}.networks[{i}]", "may not be longer than 43 characters")
                continue
            # The CRD's CEL rule has always refused host bits: no leniency for stored objects.
            net = parse_cidr(replace(ctx, live=False), f"{path}.networks[{i}]", c)
            if net is not None:
                nets.append(net)
        if len(set(nets)) != len(nets):
            ctx.error(f"{path}.networks", "duplicate CIDR (the list is a set)")
        return CNPPeer(networks=tuple(dict.fromkeys(nets)))
    if which == "nodes":
        selector = parse_selector(ctx, f"{path}.nodes", value)
        return CNPPeer(node_selector=selector) if selector is not None else None
    found: list[str] = []
    for i, d in enumerate(_bounded(ctx, f"{path}.domainNames", value, 1, names.MAX_NAMES)):
        name = as_str(ctx, f"{path}.domainNames[{i}]", d)
        if name is None:
            continue
        if not names.valid(name):
            ctx.error(f"{path}.domainNames[{i}]", f"{name!r}: not a domain name or `*.` and one (the CRD's pattern "
                      "^(\\*\\.)?([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\\.)+[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\\.?$)")
        elif name in found:
            ctx.error(f"{path}.domainNames[{i}]", f"Duplicate value: {name!r} (the list is a set)")
        else:
            found.append(name)
    return CNPPeer(domain_names=tuple(dict.fromkeys(names.normalize(n) for n in found)))


def parse_port(ctx: Context, path: str, raw: Any) -> tuple[int, int] | None:
    """Port: exactly one of `number` or `range` (start < end)."""
    raw = as_dict(ctx, path, raw)
    which = _one_of(ctx, path, raw, ("number", "range"))
    if which == "number":
        return (raw["number"], raw["number"]) if check_port_number(ctx, f"{path}.number", raw["number"]) else None
    if which == "range":
        r = as_dict(ctx, f"{path}.range", raw["range"])
        ok = True
        for k in ("start", "end"):
            if r.get(k) is None:
                ctx.error(f"{path}.range.{k}", "required")
                ok = False
            else:
                ok &= check_port_number(ctx, f"{path}.range.{k}", r[k])
        if ok and not r["start"] < r["end"]:
            ctx.error(f"{path}.range", "Start port must be less than End port")
            ok = False
        return (r["start"], r["end"]) if ok else None
    return None


def parse_protocol(ctx: Context, path: str, raw: Any) -> CNPPort | None:
    raw = as_dict(ctx, path, raw)
    which = _one_of(ctx, path, raw, ("tcp", "udp", "sctp", "destinationNamedPort"))
    if which is None:
        return None
    if which == "destinationNamedPort":
        name = raw[which]
        return CNPPort(None, named_port=name) if check_port_name(ctx, f"{path}.{which}", name) else None
    body = as_dict(ctx, f"{path}.{which}", raw[which])
    for k in sorted(set(body) - {"destinationPort"}):
        ctx.error(f"{path}.{which}.{k}", "unknown field (expected destinationPort)")
    if body.get("destinationPort") is None:
        ctx.error(f"{path}.{which}", "destinationPort is required (MinProperties=1)")
        return None
    got = parse_port(ctx, f"{path}.{which}.destinationPort", body["destinationPort"])
    return CNPPort(which.upper(), got[0], got[1]) if got is not None else None


def parse_rule(ctx: Context, path: str, raw: Any, direction: Direction) -> CNPRule | None:
    raw = as_dict(ctx, path, raw)
    peer_field = "from" if direction is Direction.INGRESS else "to"
    for k in sorted(set(raw) - {"name", "action", peer_field, "protocols"}):
        ctx.error(f"{path}.{k}", f"unknown field (expected name, action, {peer_field}, protocols)")
    before = len(ctx.problems)
    name = as_str(ctx, f"{path}.name", raw.get("name")) or ""
    if len(name) > MAX_RULE_NAME:
        ctx.error(f"{path}.name", f"may not be longer than {MAX_RULE_NAME} characters")
    try:
        action = Action(raw.get("action"))
    except ValueError:
        ctx.error(f"{path}.action", f"{raw.get('action')!r} is not one of Accept, Deny, Pass")
        action = Action.DENY
    if raw.get(peer_field) is None:
        ctx.error(f"{path}.{peer_field}", "required: at least one peer")
    peers = [parse_peer(ctx, f"{path}.{peer_field}[{i}]", p, direction)
             for i, p in enumerate(_bounded(ctx, f"{path}.{peer_field}", raw.get(peer_field), 1, MAX_PEERS))]
    protocols = [parse_protocol(ctx, f"{path}.protocols[{i}]", p)
                 for i, p in enumerate(_bounded(ctx, f"{path}.protocols", raw.get("protocols"), 1, MAX_PROTOCOLS))]
    if direction is Direction.EGRESS and any(p is not None and p.named_port for p in protocols):
        if any(p is not None and (p.networks or p.node_selector is not None or p.domain_names) for p in peers):
            ctx.error(path, "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames")
    if len(ctx.problems) > before:
        return None
    if action is not Action.ACCEPT and any(p is not None and p.domain_names for p in peers):
        ctx.notes.append(f"{path}: {NAMES_NOT_ACCEPT}: the rule fails closed, denying all its subject's egress")
        peers = [CNPPeer(unsupported=NAMES_NOT_ACCEPT) if p is not None and p.domain_names else p for p in peers]
    return CNPRule(action, tuple(p for p in peers if p is not None), tuple(p for p in protocols if p is not None), name)


def _without_names(ctx: Context, path: str, rule: CNPRule | None) -> CNPRule | None:
    """A Baseline rule's domainNames peers, as peers policyd does not enforce (noted)."""
    if rule is None or not any(p.domain_names for p in rule.peers):
        return rule
    ctx.notes.append(f"{path}: {NAMES_NOT_ADMIN}: " + ("they match nothing" if rule.action is Action.ACCEPT else
                                                       "the rule fails closed, denying all its subject's egress"))
    return replace(rule, peers=tuple(CNPPeer(unsupported=NAMES_NOT_ADMIN) if p.domain_names else p for p in rule.peers))


def parse_cluster_policy(ctx: Context, obj: dict[str, Any]) -> ClusterNetworkPolicy:
    _, name, _ = parse_metadata(ctx, obj, namespaced=False)
    before = len(ctx.problems)
    if obj.get("spec") is None:
        ctx.error("spec", "required")
    spec = as_dict(ctx, "spec", obj.get("spec"))
    for k in sorted(set(spec) - {"tier", "priority", "subject", "ingress", "egress"}):
        ctx.error(f"spec.{k}", "unknown field (expected tier, priority, subject, ingress, egress)")
    try:
        tier = Tier(spec.get("tier"))
    except ValueError:
        ctx.error("spec.tier", f"{spec.get('tier')!r} is not one of Admin, Baseline")
        tier = Tier.ADMIN  # unknown tier: fail closed where nothing can override it
    priority = spec.get("priority")
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 1000:
        ctx.error("spec.priority", f"{priority!r} must be an integer from 0 to 1000")
        priority = 0
    ns_sel: LabelSelector | None = None
    pod_sel: LabelSelector | None = None
    subject = as_dict(ctx, "spec.subject", spec.get("subject"))
    which = _one_of(ctx, "spec.subject", subject, ("namespaces", "pods"))
    if which == "namespaces":
        ns_sel, pod_sel = parse_selector(ctx, "spec.subject.namespaces", subject["namespaces"]), MATCH_ALL
    elif which == "pods":
        got = parse_namespaced_pod(ctx, "spec.subject.pods", subject["pods"])
        ns_sel, pod_sel = got if got is not None else (None, None)
    rules: dict[Direction, list[CNPRule | None]] = {}
    for d in Direction:
        items = as_list(ctx, f"spec.{d.value}", spec.get(d.value))
        if len(items) > MAX_RULES:
            ctx.error(f"spec.{d.value}", f"must have at most {MAX_RULES} rules, has {len(items)}")
        rules[d] = [parse_rule(ctx, f"spec.{d.value}[{i}]", r, d) for i, r in enumerate(items)]
    invalid = tuple(f"{p.path}: {p.message}" for p in ctx.problems[before:])
    if tier is Tier.BASELINE:
        rules[Direction.EGRESS] = [_without_names(ctx, f"spec.egress[{i}]", r) for i, r in enumerate(rules[Direction.EGRESS])]
    return ClusterNetworkPolicy(
        name=name,
        tier=tier,
        priority=priority,
        # An unreadable subject selects every pod: the policy then denies, never widens.
        namespace_selector=ns_sel if ns_sel is not None else MATCH_ALL,
        pod_selector=pod_sel if pod_sel is not None else MATCH_ALL,
        ingress=tuple(r for r in rules[Direction.INGRESS] if r is not None),
        egress=tuple(r for r in rules[Direction.EGRESS] if r is not None),
        invalid=invalid,
        notes=tuple(ctx.notes),
    )
