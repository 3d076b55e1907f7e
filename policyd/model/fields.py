"""The field readers every kind's parser shares: shapes, names, labels, selectors,
metadata, CIDRs and ports, each checked as the API server checks it, with every problem
collected in a Context (the document being read) instead of raised."""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from .problems import Problem
from .selectors import OPERATORS, LabelSelector, Requirement

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


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


def port_number(text: str) -> int:
    """The `--port` of the CLIs: a port as the API takes it, 1-65535 (argparse type)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number between 1 and 65535")
    return port
