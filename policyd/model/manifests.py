"""YAML/JSON manifests (files, directories, multi-document, `kind: List`) → objects.

Deployments are expanded into their pods (`<name>-<hash5>`, replicas of them) so the
classic "frontend/backend deployments" examples can be read as they are written.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from .objects import Namespace, NetworkPolicy, Node, Pod
from .parse import Context, parse_namespace, parse_object
from .problems import Problem
from .selectors import stable_hash

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class Manifests:
    namespaces: list[Namespace] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    policies: list[NetworkPolicy] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def add(self, obj: object) -> None:
        bucket = {Namespace: self.namespaces, Pod: self.pods, NetworkPolicy: self.policies, Node: self.nodes}
        bucket[type(obj)].append(obj)

    def with_implicit_namespaces(self) -> "Manifests":
        """Namespaces that pods or policies name but no manifest declares (e.g. `default`)
        exist implicitly, with the API server's `kubernetes.io/metadata.name` label."""
        known = {n.name for n in self.namespaces}
        for name in sorted({o.namespace for o in [*self.pods, *self.policies]} - known):
            ns = parse_namespace(Context("<implicit>", None, "Namespace"), {"metadata": {"name": name}})
            self.namespaces.append(ns)
        return self


def iter_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
        else:
            yield p


def expand_deployment(obj: dict) -> list[dict]:
    """apps/v1 Deployment → its pods: names `<deploy>-<hash5>`, labels from the template."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    replicas = spec.get("replicas", 1)
    pods = []
    for i in range(int(replicas)):
        name = f"{meta.get('name')}-{stable_hash(str(meta.get('name')), str(i), length=5)}"
        pod_meta = copy.deepcopy(template.get("metadata") or {})
        pod_meta.update({"name": name, "namespace": meta.get("namespace") or "default"})
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": copy.deepcopy(template.get("spec") or {})})
    return pods


def flatten(doc: Any) -> list[Any]:
    if isinstance(doc, dict) and doc.get("kind") == "List":
        return [x for item in doc.get("items") or [] for x in flatten(item)]
    if isinstance(doc, dict) and doc.get("kind") == "Deployment" and doc.get("apiVersion") == "apps/v1":
        return expand_deployment(doc)
    return [doc]


@dataclass(frozen=True)
class RawObject:
    """One API object as written (Deployments already expanded) and where it came from."""

    source: str
    index: int
    raw: Any


def raw_documents(source: str, text: str, problems: list[Problem]) -> list[RawObject]:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        problems.append(Problem(source, None, "", f"not valid YAML: {e}"))
        return []
    return [RawObject(source, i, obj) for i, doc in enumerate(docs) if doc is not None for obj in flatten(doc)]


def load_documents(source: str, text: str, into: Manifests) -> None:
    for r in raw_documents(source, text, into.problems):
        value, problems = parse_object(r.raw, r.source, r.index)
        into.problems.extend(problems)
        if value is not None:
            into.add(value)


def load(paths: Iterable[str | Path]) -> Manifests:
    """Read every manifest under `paths`; all problems are collected, none raised."""
    out = Manifests()
    for f in iter_files(paths):
        try:
            text = f.read_text()
        except OSError as e:
            out.problems.append(Problem(str(f), None, "", f"cannot read: {e.strerror}"))
            continue
        load_documents(str(f), text, out)
    check_duplicates(out)
    return out.with_implicit_namespaces()


def check_duplicates(m: Manifests) -> None:
    for kind, objs in (("Namespace", m.namespaces), ("Pod", m.pods), ("NetworkPolicy", m.policies), ("Node", m.nodes)):
        seen: set[str] = set()
        for o in objs:
            key = getattr(o, "key", None) or o.name  # type: ignore[attr-defined]
            if key in seen:
                m.problems.append(Problem("<manifests>", None, "metadata.name", f"duplicate {kind} {key}", kind, key))
            seen.add(key)
