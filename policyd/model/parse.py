"""API dicts → frozen objects, with the API server's defaulting and validation.

Every problem is collected (not just the first) with its field path. A NetworkPolicy that
fails validation is still returned, marked `invalid`, so that the agent can keep the pods it
selects isolated instead of silently widening access.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
from .selectors import OPERATORS, LabelSelector, Requirement

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass
class Context:
    """Where we are: collects problems for one document."""

    source: str
    doc: int | None
    kind: str = ""
    name: str = ""
    problems: list[Problem] = field(default_factory=list)
    # Read an object the API server is serving (it was valid when stored) rather than one
    # about to be created: validation that newer API servers added only for new objects
    # ("ratcheting") becomes a note instead of a problem.
    live: bool = False
    notes: list[str] = field(default_factory=list)

    def error(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.source, self.doc, path, message, self.kind, self.name))


# --- shapes --------------------------------------------------------------------------------


def as_dict(ctx: Context, path: str, raw: Any) -> dict[str, Any]:
    """An object field: absent or null is empty; any other non-object is a problem (and
    empty), so no later step ever meets a value of the wrong type."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        ctx.error(path, f"must be an object, not {type(raw).__name__}")
        return {}
    return raw


def as_list(ctx: Context, path: str, raw: Any) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        ctx.error(path, f"must be a list, not {type(raw).__name__}")
        return []
    return raw


def as_str(ctx: Context, path: str, raw: Any) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    ctx.error(path, f"must be a string, not {type(raw).__name__}")
    return None


# --- names and labels ------------------------------------------------------------------


def check_dns_label(ctx: Context, path: str, value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 63 or not DNS1123_LABEL.match(value):
        ctx.error(path, f"{value!r} is not a valid DNS-1123 label (lowercase alphanumerics and '-', at most 63)")
        return False
    return True


def check_dns_subdomain(ctx: Context, path: str, value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 253 or not DNS1123_SUBDOMAIN.match(value):
        ctx.error(path, f"{value!r} is not a valid DNS-1123 subdomain (lowercase alphanumerics, '-' and '.')")
        return False
    return True


def check_label_key(ctx: Context, path: str, key: Any) -> bool:
    if not isinstance(key, str) or not key:
        ctx.error(path, f"label key {key!r} must be a non-empty string")
        return False
    prefix, _, name = key.rpartition("/")
    ok = len(name) <= 63 and bool(QUALIFIED_NAME.match(name))
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        ok = False
    if not ok:
        ctx.error(path, f"invalid label key {key!r}: [prefix/]name, name at most 63 of [A-Za-z0-9_.-] starting and ending alphanumeric")
    return ok


def check_label_value(ctx: Context, path: str, value: Any) -> bool:
    if not isinstance(value, str) or (value and (len(value) > 63 or not QUALIFIED_NAME.match(value))):
        ctx.error(path, f"invalid label value {value!r}: at most 63 of [A-Za-z0-9_.-], starting and ending alphanumeric")
        return False
    return True


def parse_labels(ctx: Context, path: str, raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        ctx.error(path, "must be a map of strings")
        return {}
    out = {}
    for k, v in raw.items():
        if check_label_key(ctx, f"{path}[{k}]", k) & check_label_value(ctx, f"{path}[{k}]", v):
            out[sys.intern(k)] = sys.intern(v)  # shared by the many pods that carry them
    return out


def parse_selector(ctx: Context, path: str, raw: Any) -> LabelSelector | None:
    """matchLabels AND matchExpressions; None when invalid."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        ctx.error(path, "must be a label selector object")
        return None
    before = len(ctx.problems)
    unknown = set(raw) - {"matchLabels", "matchExpressions"}
    for k in sorted(unknown):
        ctx.error(f"{path}.{k}", "unknown field in a label selector")
    labels = parse_labels(ctx, f"{path}.matchLabels", raw.get("matchLabels"))
    exprs: list[Requirement] = []
    raw_exprs = raw.get("matchExpressions") or []
    if not isinstance(raw_exprs, list):
        ctx.error(f"{path}.matchExpressions", "must be a list")
        raw_exprs = []
    for i, e in enumerate(raw_exprs):
        p = f"{path}.matchExpressions[{i}]"
        if not isinstance(e, dict):
            ctx.error(p, "must be an object with key, operator and values")
            continue
        key, op, values = e.get("key"), e.get("operator"), e.get("values")
        check_label_key(ctx, f"{p}.key", key)
        if op not in OPERATORS:
            ctx.error(f"{p}.operator", f"{op!r} is not one of {', '.join(OPERATORS)}")
            continue
        if values is None:
            values = []
        if not isinstance(values, list):
            ctx.error(f"{p}.values", "must be a list of strings")
            continue
        if op in ("In", "NotIn") and not values:
            ctx.error(f"{p}.values", f"must be non-empty when operator is {op}")
        if op in ("Exists", "DoesNotExist") and values:
            ctx.error(f"{p}.values", f"must be empty when operator is {op}")
        for j, v in enumerate(values):
            check_label_value(ctx, f"{p}.values[{j}]", v)
        if isinstance(key, str):
            exprs.append(Requirement(key, op, tuple(str(v) for v in values)))
    if len(ctx.problems) > before:
        return None
    return LabelSelector.build(labels, exprs)


def parse_metadata(ctx: Context, obj: dict[str, Any], namespaced: bool) -> tuple[str, str, dict[str, str]]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        ctx.error("metadata", "required")
        return "default", "", {}
    name = meta.get("name")
    ns = (meta.get("namespace") or "default") if namespaced else ""
    if not isinstance(ns, str):
        ctx.error("metadata.namespace", f"must be a string, not {type(ns).__name__}")
        ns = str(ns)
    ns = sys.intern(ns)
    if name is not None and not isinstance(name, str):
        ctx.error("metadata.name", f"must be a string, not {type(name).__name__}")
        name = str(name)
    ctx.name = f"{ns}/{name}" if namespaced else str(name)
    if name is None:
        ctx.error("metadata.name", "required")
        name = ""
    elif ctx.kind == "Namespace":
        check_dns_label(ctx, "metadata.name", name)
    else:
        check_dns_subdomain(ctx, "metadata.name", name)
    if namespaced:
        check_dns_label(ctx, "metadata.namespace", ns)
    return ns, str(name), parse_labels(ctx, "metadata.labels", meta.get("labels"))


# --- Namespace, Node, Pod ------------------------------------------------------------------


def parse_namespace(ctx: Context, obj: dict[str, Any]) -> Namespace:
    _, name, labels = parse_metadata(ctx, obj, namespaced=False)
    # The API server sets this immutable label on every namespace (Kubernetes ≥ 1.21).
    labels = {**labels, NAMESPACE_NAME_LABEL: name}
    return Namespace(name, labels)


def parse_cidr(ctx: Context, path: str, raw: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if not isinstance(raw, str):
        ctx.error(path, "required: a CIDR such as 10.0.0.0/8")
        return None
    try:
        net = ipaddress.ip_network(raw, strict=False)
    except ValueError:
        ctx.error(path, f"{raw!r} is not a valid CIDR")
        return None
    if "/" not in raw:
        ctx.error(path, f"{raw!r} has no prefix length (write {str(net)!r})")
        return None
    if str(net) != raw:
        if ctx.live and ipaddress.ip_network(raw.split("/")[0] + "/" + str(net.prefixlen), strict=False) == net:
            # Stored before the API server refused host bits (Kubernetes < 1.33 took
            # 10.0.0.1/24 as 10.0.0.0/24, as Go's net.ParseCIDR does): read it that way.
            ctx.notes.append(f"{path}: {raw!r} has host bits set; read as {str(net)!r}, as the API server did when it stored it")
            return net
        ctx.error(path, f"{raw!r} must be in canonical form ({str(net)!r}): it must not have bits set beyond the prefix length")
        return None
    return net


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


def check_port_number(ctx: Context, path: str, raw: Any) -> bool:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 65535:
        ctx.error(path, f"{raw!r} must be a port number between 1 and 65535")
        return False
    return True


def check_port_name(ctx: Context, path: str, raw: Any) -> bool:
    if (
        not isinstance(raw, str)
        or len(raw) > 15
        or not IANA_SVC_NAME.match(raw)
        or "--" in raw
        or not re.search(r"[a-z]", raw)
    ):
        hint = " (a port number is an integer: write it without quotes)" if isinstance(raw, str) and raw.isdigit() else ""
        ctx.error(path, f"{raw!r} is not a valid port name (IANA_SVC_NAME: at most 15 of [a-z0-9-], at least one letter){hint}")
        return False
    return True


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
