"""Kubernetes label selectors with exact API semantics.

"A label selector is a label query over a set of resources. The result of matchLabels and
matchExpressions are ANDed. An empty label selector matches all objects."
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

Labels = Mapping[str, str]

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True, order=True)
class Requirement:
    """One `key op values` term; matchLabels entries become `In` with one value."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Labels) -> bool:
        op = self.operator
        if op == "In":
            return labels.get(self.key) in self.values
        if op == "NotIn":
            # "NotIn ... the key is absent or its value is not in the set"
            return self.key not in labels or labels[self.key] not in self.values
        if op == "Exists":
            return self.key in labels
        if op == "DoesNotExist":
            return self.key not in labels
        raise ValueError(f"unknown operator {op!r}")  # validated at the edge


@dataclass(frozen=True)
class LabelSelector:
    """A canonical selector: requirements sorted and de-duplicated, values sorted."""

    requirements: tuple[Requirement, ...] = ()

    @staticmethod
    def build(match_labels: Labels | None, expressions: list[Requirement] | None) -> LabelSelector:
        reqs = {Requirement(k, "In", (v,)) for k, v in (match_labels or {}).items()}
        for r in expressions or ():
            reqs.add(Requirement(r.key, r.operator, tuple(sorted(set(r.values)))))
        return LabelSelector(tuple(sorted(reqs)))

    @property
    def is_empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Labels) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def canonical(self) -> str:
        """A stable, unambiguous text form (used for hashing and set comments)."""
        if not self.requirements:
            return "{}"
        parts = []
        for r in self.requirements:
            if r.operator == "In" and len(r.values) == 1:
                parts.append(f"{r.key}={r.values[0]}")
            elif r.operator in ("In", "NotIn"):
                parts.append(f"{r.key} {r.operator.lower()} ({','.join(r.values)})")
            elif r.operator == "Exists":
                parts.append(r.key)
            else:
                parts.append(f"!{r.key}")
        return ",".join(parts)

    def equality_terms(self) -> list[tuple[str, str]]:
        """`key=value` terms every match must have: candidates for an index look-up."""
        return [(r.key, r.values[0]) for r in self.requirements if r.operator == "In" and len(r.values) == 1]


MATCH_ALL = LabelSelector()


def stable_hash(*parts: str, length: int = 16) -> str:
    """Hash of a separator-delimited encoding (never plain concatenation)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(4, "big"))
        h.update(p.encode())
    return h.hexdigest()[:length]


def parse_selector_text(text: str) -> LabelSelector:
    """`app=web,tier!=db,env,!legacy` (requirements ANDed), as kubectl's -l takes it."""
    reqs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "!=" in part:
            k, v = part.split("!=", 1)
            reqs.append(Requirement(k.strip(), "NotIn", (v.strip(),)))
        elif "=" in part:
            k, v = part.split("=", 1)
            reqs.append(Requirement(k.strip().rstrip("="), "In", (v.strip(),)))
        elif part.startswith("!"):
            reqs.append(Requirement(part[1:], "DoesNotExist", ()))
        else:
            reqs.append(Requirement(part, "Exists", ()))
    return LabelSelector.build({}, reqs)
