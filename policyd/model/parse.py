"""API dicts → frozen objects, with the API server's defaulting and validation.

Every problem is collected (not just the first) with its field path. A NetworkPolicy that
fails validation is still returned, marked `invalid`, so that the agent can keep the pods it
selects isolated instead of silently widening access.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable
from typing import Any

from .fields import (
    Context,
    as_dict,
    as_list,
    as_str,
    check_dns_subdomain,
    check_port_name,
    check_port_number,
    parse_cidr,
    parse_metadata,
    parse_selector,
)
from .objects import (
    AUDIT_ANNOTATION,
    PROTOCOLS,
    ContainerPort,
    Direction,
    IPAddress,
    IPBlock,
    KubeObject,
    Namespace,
    NetworkPolicy,
    Node,
    Peer,
    Pod,
    PolicyPort,
    PolicyRule,
)
from .problems import Problem
from .selectors import LabelSelector

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


# --- Namespace, Node, Pod ------------------------------------------------------------------


def parse_namespace(ctx: Context, obj: dict[str, Any]) -> Namespace:
    _, name, labels = parse_metadata(ctx, obj, namespaced=False)
    # The API server sets this immutable label on every namespace (Kubernetes ≥ 1.21).
    labels = {**labels, NAMESPACE_NAME_LABEL: name}
    return Namespace(name, labels)


NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")  # what a ClusterNetworkPolicy `nodes` peer matches


def parse_node(ctx: Context, obj: dict[str, Any]) -> Node:
    _, name, labels = parse_metadata(ctx, obj, namespaced=False)
    spec = as_dict(ctx, "spec", obj.get("spec"))
    raw = as_list(ctx, "spec.podCIDRs", spec.get("podCIDRs")) or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    cidrs = tuple(c for i, r in enumerate(raw) if (c := parse_cidr(ctx, f"spec.podCIDRs[{i}]", r)))
    addresses: list[IPAddress] = []
    status = as_dict(ctx, "status", obj.get("status"))
    for i, a in enumerate(as_list(ctx, "status.addresses", status.get("addresses"))):
        a = as_dict(ctx, f"status.addresses[{i}]", a)
        if a.get("type") in NODE_ADDRESS_TYPES:
            try:
                addresses.append(ipaddress.ip_address(str(a.get("address"))))
            except ValueError:
                ctx.error(f"status.addresses[{i}].address", f"{a.get('address')!r} is not an IP address")
    return Node(name, cidrs, labels, tuple(dict.fromkeys(addresses)))


def parse_protocol(ctx: Context, path: str, raw: Any) -> str:
    if raw is None:
        return "TCP"  # API server default
    if raw not in PROTOCOLS:
        ctx.error(path, f"{raw!r} is not one of TCP, UDP, SCTP")
    return str(raw)


def parse_pod(ctx: Context, obj: dict[str, Any]) -> Pod:
    ns, name, labels = parse_metadata(ctx, obj, namespaced=True)
    spec = as_dict(ctx, "spec", obj.get("spec"))
    status = as_dict(ctx, "status", obj.get("status"))
    ports: list[ContainerPort] = []
    seen_names: set[str] = set()
    for ci, c in enumerate(as_list(ctx, "spec.containers", spec.get("containers"))):
        container = as_dict(ctx, f"spec.containers[{ci}]", c)
        for pi, p in enumerate(as_list(ctx, f"spec.containers[{ci}].ports", container.get("ports"))):
            path = f"spec.containers[{ci}].ports[{pi}]"
            p = as_dict(ctx, path, p)
            number: Any = p.get("containerPort")  # checked just below
            ok = check_port_number(ctx, f"{path}.containerPort", number)
            proto = parse_protocol(ctx, f"{path}.protocol", p.get("protocol"))
            pname = p.get("name")
            if pname is not None:
                ok &= check_port_name(ctx, f"{path}.name", pname)
                if isinstance(pname, str) and pname in seen_names:
                    ctx.error(f"{path}.name", f"duplicate port name {pname!r}")
                if isinstance(pname, str):
                    seen_names.add(pname)
            if ok:
                ports.append(ContainerPort(number, sys.intern(proto), sys.intern(pname) if isinstance(pname, str) else pname))
    raw_ips = [as_dict(ctx, f"status.podIPs[{i}]", e).get("ip") for i, e in enumerate(as_list(ctx, "status.podIPs", status.get("podIPs")))]
    if not raw_ips and status.get("podIP") is not None:
        raw_ips = [status["podIP"]]
    ips = []
    for i, raw in enumerate(raw_ips):
        try:
            if not isinstance(raw, str):  # the API server's podIP is a string (an integer is refused)
                raise ValueError
            ips.append(ipaddress.ip_address(raw))
        except ValueError:
            ctx.error(f"status.podIPs[{i}].ip", f"{raw!r} is not a valid IP address")
    node = spec.get("nodeName")
    if node is not None and not check_dns_subdomain(ctx, "spec.nodeName", node):
        node = None
    if isinstance(node, str):
        node = sys.intern(node)
    return Pod(
        namespace=ns,
        name=name,
        labels=labels,
        node=node,
        ips=tuple(ips),
        ports=tuple(ports),
        host_network=spec.get("hostNetwork") is True,
        phase=sys.intern(as_str(ctx, "status.phase", status.get("phase")) or "Running"),
    )


# --- NetworkPolicy -------------------------------------------------------------------------


def parse_policy_port(ctx: Context, path: str, raw: Any) -> PolicyPort | None:
    if not isinstance(raw, dict):
        ctx.error(path, "must be an object with protocol, port and endPort")
        return None
    before = len(ctx.problems)
    proto = parse_protocol(ctx, f"{path}.protocol", raw.get("protocol"))
    port = raw.get("port")
    end = raw.get("endPort")
    # An IntOrString given as a string is a port name, even "80": the API server rejects a
    # numeric string (not an IANA_SVC_NAME), so policyd does too (check_port_name says so).
    if port is not None:
        if isinstance(port, int) and not isinstance(port, bool):
            check_port_number(ctx, f"{path}.port", port)
        else:
            check_port_name(ctx, f"{path}.port", port)
    if end is not None:
        if port is None:
            ctx.error(f"{path}.endPort", "may not be specified when port is not specified")
        elif not isinstance(port, int):
            ctx.error(f"{path}.endPort", "may not be specified when port is non-numeric")
        elif check_port_number(ctx, f"{path}.endPort", end) and end < port:
            ctx.error(f"{path}.endPort", f"must be greater than or equal to port ({end} < {port})")
    if len(ctx.problems) > before:
        return None
    return PolicyPort(proto, port, end)


def parse_ip_block(ctx: Context, path: str, raw: Any) -> IPBlock | None:
    if not isinstance(raw, dict):
        ctx.error(path, "must be an object with cidr and except")
        return None
    cidr = parse_cidr(ctx, f"{path}.cidr", raw.get("cidr"))
    excepts = []
    for i, e in enumerate(as_list(ctx, f"{path}.except", raw.get("except"))):
        net = parse_cidr(ctx, f"{path}.except[{i}]", e)
        if net is None or cidr is None:
            continue
        if net.version != cidr.version or not net.subnet_of(cidr) or net.prefixlen <= cidr.prefixlen:  # type: ignore[arg-type]
            ctx.error(f"{path}.except[{i}]", f"{e!r} must be a strict subset of cidr {str(cidr)!r}")
            continue
        excepts.append(net)
    if cidr is None:
        return None
    return IPBlock(cidr, tuple(sorted(set(excepts), key=lambda n: (n.network_address, n.prefixlen))))


def parse_peer(ctx: Context, path: str, raw: Any) -> Peer | None:
    if not isinstance(raw, dict):
        ctx.error(path, "must be an object with podSelector, namespaceSelector or ipBlock")
        return None
    # A field given as null is absent, as the API server reads a nil pointer: a null
    # namespaceSelector means "this namespace", never "every namespace".
    raw = {k: v for k, v in raw.items() if v is not None}
    has_sel = "podSelector" in raw or "namespaceSelector" in raw
    has_block = "ipBlock" in raw
    if has_sel and has_block:
        ctx.error(path, "may not specify both ipBlock and another peer")
        return None
    if not has_sel and not has_block:
        ctx.error(path, "must specify a peer: podSelector, namespaceSelector or ipBlock")
        return None
    if has_block:
        block = parse_ip_block(ctx, f"{path}.ipBlock", raw["ipBlock"])
        return Peer(ip_block=block) if block else None
    pod_sel = parse_selector(ctx, f"{path}.podSelector", raw.get("podSelector"))
    ns_sel = None
    if "namespaceSelector" in raw:
        ns_sel = parse_selector(ctx, f"{path}.namespaceSelector", raw["namespaceSelector"])
        if ns_sel is None:
            return None
    if pod_sel is None:
        return None
    return Peer(pod_selector=pod_sel, namespace_selector=ns_sel)


def parse_rules(ctx: Context, path: str, raw: Any, peer_field: str) -> tuple[PolicyRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        ctx.error(path, "must be a list of rules")
        return ()
    rules = []
    for i, r in enumerate(raw):
        rp = f"{path}[{i}]"
        if r is None:
            r = {}  # "- {}" and "- " both mean: allow everything
        if not isinstance(r, dict):
            ctx.error(rp, "must be an object")
            continue
        for k in sorted(map(str, set(r) - {peer_field, "ports"})):
            ctx.error(f"{rp}.{k}", f"unknown field (expected {peer_field} and ports)")
        peers = [parse_peer(ctx, f"{rp}.{peer_field}[{j}]", p)
                 for j, p in enumerate(as_list(ctx, f"{rp}.{peer_field}", r.get(peer_field)))]
        ports = [parse_policy_port(ctx, f"{rp}.ports[{j}]", p) for j, p in enumerate(as_list(ctx, f"{rp}.ports", r.get("ports")))]
        rules.append(
            PolicyRule(
                tuple(p for p in peers if p is not None),
                tuple(p for p in ports if p is not None),
            )
        )
    return tuple(rules)


def parse_policy(ctx: Context, obj: dict[str, Any]) -> NetworkPolicy:
    ns, name, _ = parse_metadata(ctx, obj, namespaced=True)
    before = len(ctx.problems)
    # spec is a struct: absent or null it is its zero value (every pod of the namespace,
    # isolated for ingress), which the API server accepts.
    spec = as_dict(ctx, "spec", obj.get("spec"))
    # podSelector is a struct, not a pointer: absent or null it is the empty selector, every
    # pod of the namespace (the API server accepts both).
    pod_sel = parse_selector(ctx, "spec.podSelector", spec.get("podSelector"))
    ingress = parse_rules(ctx, "spec.ingress", spec.get("ingress"), "from")
    egress = parse_rules(ctx, "spec.egress", spec.get("egress"), "to")
    raw_types = spec.get("policyTypes")
    types: set[Direction] = set()
    if not raw_types:
        # API server defaulting: Ingress always, Egress when there is an egress rule.
        types = {Direction.INGRESS}
        if spec.get("egress"):
            types.add(Direction.EGRESS)
    elif not isinstance(raw_types, list) or len(raw_types) > 2:
        ctx.error("spec.policyTypes", "must be a list of at most two of Ingress, Egress")
        types = {Direction.INGRESS, Direction.EGRESS}
    else:
        for i, t in enumerate(raw_types):
            if t == "Ingress":
                types.add(Direction.INGRESS)
            elif t == "Egress":
                types.add(Direction.EGRESS)
            else:
                ctx.error(f"spec.policyTypes[{i}]", f"{t!r} is not one of Ingress, Egress")
    mine = ctx.problems[before:]
    invalid = tuple(f"{p.path}: {p.message}" for p in mine)
    if any(p.path.startswith("spec.policyTypes") for p in mine):
        types = {Direction.INGRESS, Direction.EGRESS}  # unknown intent: isolate both ways
    audit = parse_audit(ctx, obj.get("metadata"))
    return NetworkPolicy(
        namespace=ns,
        name=name,
        # An unreadable podSelector keeps the whole namespace isolated: never widen access.
        pod_selector=pod_sel if pod_sel is not None else LabelSelector(),
        ingress=ingress,
        egress=egress,
        policy_types=frozenset(types),
        invalid=invalid,
        notes=tuple(ctx.notes),
        audit=audit,
    )


def parse_audit(ctx: Context, meta: Any) -> bool:
    """policyd's audit annotation: "true" or "false". Anything else is reported and the
    policy is enforced (the API server accepts any annotation; what we cannot read must not
    quietly leave a policy unenforced)."""
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    value = annotations.get(AUDIT_ANNOTATION) if isinstance(annotations, dict) else None
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    ctx.notes.append(f"metadata.annotations[{AUDIT_ANNOTATION}]: {value!r} is neither \"true\" nor \"false\"; "
                     "the policy is enforced, not audited")
    return False


PARSERS: dict[tuple[str, str], Callable[[Context, dict[str, Any]], KubeObject]] = {
    ("v1", "Namespace"): parse_namespace,
    ("v1", "Pod"): parse_pod,
    ("v1", "Node"): parse_node,
    ("networking.k8s.io/v1", "NetworkPolicy"): parse_policy,
}

# ClusterNetworkPolicy's parser builds on the helpers above, so it is registered here.
from .parse_cnp import GROUP, VERSIONS, parse_cluster_policy  # noqa: E402

PARSERS.update({(f"{GROUP}/{v}", "ClusterNetworkPolicy"): parse_cluster_policy for v in VERSIONS})


def parse_object(obj: Any, source: str, doc: int | None, live: bool = False) -> tuple[KubeObject | None, list[Problem]]:
    """One API object → (value, problems). Unsupported kinds are a problem, not ignored.
    `live`: an object the API server serves (see Context.live), not a manifest to create."""
    ctx = Context(source, doc, live=live)
    if not isinstance(obj, dict):
        ctx.error("", "document is not a Kubernetes object")
        return None, ctx.problems
    kind, api = obj.get("kind"), obj.get("apiVersion")
    ctx.kind = str(kind)
    parser = PARSERS.get((api, kind)) if isinstance(kind, str) and isinstance(api, str) else None
    if parser is None:
        known = ", ".join(f"{k} ({a})" for a, k in PARSERS)
        ctx.error("kind", f"unsupported {api}/{kind}; policyd reads {known}")
        return None, ctx.problems
    return parser(ctx, obj), ctx.problems
