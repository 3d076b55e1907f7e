"""Domain names as a ClusterNetworkPolicy `domainNames` peer says them (pure).

The API (network-policy-api, experimental): "DomainName can be an exact match, or use the
wildcard specifier '*' to match one or more labels. '*', the wildcard specifier, matches one
or more entire labels. It does not support partial matches. '*' may only be specified as a
prefix." `kubernetes.io` matches only `kubernetes.io`; `*.kubernetes.io` matches
`www.kubernetes.io` and `latest.blog.kubernetes.io`, never `kubernetes.io`. Names compare
without case (DNS) and a trailing dot (the root) is allowed and means nothing more.
"""

from __future__ import annotations

import re

# The CRD's pattern for one item of `domainNames`.
PATTERN = re.compile(r"^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$")
MAX_NAMES = 25  # "DomainNames can have up to 25 domain names specified in one rule."


def normalize(name: str) -> str:
    """Lower case, without the final dot: how names are compared."""
    return name.lower().removesuffix(".")


def valid(name: str) -> bool:
    """The CRD's pattern, and nothing more (a name longer than DNS allows is accepted by the
    API server, and matches no answer)."""
    return PATTERN.match(name) is not None


def matches(pattern: str, qname: str) -> bool:
    """Whether `qname` (as a pod asked for it) is one `pattern` (normalized) allows."""
    q = normalize(qname)
    if pattern.startswith("*."):
        return q.endswith(pattern[1:]) and len(q) > len(pattern) - 1
    return q == pattern


def any_matches(patterns: tuple[str, ...], qname: str) -> bool:
    return any(matches(p, qname) for p in patterns)
