"""YAML/JSON manifests (files, directories, multi-document, `kind: List`) → objects.

Deployments are expanded into their pods (`<name>-<hash5>`, replicas of them) so the
classic "frontend/backend deployments" examples can be read as they are written.
"""

from __future__ import annotations

import copy
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .fields import Context
from .objects import ClusterNetworkPolicy, KubeObject, Namespace, NetworkPolicy, Node, Pod
from .parse import parse_namespace, parse_object
from .problems import Problem
from .selectors import stable_hash

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class Manifests:
    namespaces: list[Namespace] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    policies: list[NetworkPolicy] = field(default_factory=list)
    cluster_policies: list[ClusterNetworkPolicy] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def add(self, obj: KubeObject) -> None:
        if isinstance(obj, Namespace):
            self.namespaces.append(obj)
        elif isinstance(obj, Pod):
            self.pods.append(obj)
        elif isinstance(obj, NetworkPolicy):
            self.policies.append(obj)
        elif isinstance(obj, ClusterNetworkPolicy):
            self.cluster_policies.append(obj)
        else:
            self.nodes.append(obj)

    def with_implicit_namespaces(self) -> Manifests:
        """Namespaces that pods or policies name but no manifest declares (e.g. `default`)
        exist implicitly, with the API server's `kubernetes.io/metadata.name` label."""
        known = {n.name for n in self.namespaces}
        for name in sorted(({p.namespace for p in self.pods} | {p.namespace for p in self.policies}) - known):
            ns = parse_namespace(Context("<implicit>", None, "Namespace"), {"metadata": {"name": name}})
            self.namespaces.append(ns)
        return self


def iter_files(paths: Iterable[str | Path], problems: list[Problem] | None = None) -> Iterator[Path]:
    """The files to read: each path given, and under each directory every entry named like a
    manifest (.yaml, .yml, .json) that is not a directory (a device or a link to one is then
    refused by read_text, not skipped). A directory without any is a problem, not silence."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES and not f.is_dir())
            if not found and problems is not None:
                problems.append(Problem(str(p), None, "", f"no manifest in this directory (files named {', '.join(SUFFIXES)})"))
            yield from found
        else:
            yield p


MAX_REPLICAS = 10_000  # pods one Deployment may expand into (each becomes an object here)
MAX_TEXT = 16 * 2**20  # bytes in one manifest file (the API server takes 3 MiB per object)
MAX_NODES = 1_000_000  # YAML nodes in one document once aliases are expanded


def _mapping(parent: dict[str, Any], key: str) -> dict[str, Any]:
    """parent[key] when it is a mapping, else empty (the parser reports the wrong shape)."""
    value = parent.get(key)
    return value if isinstance(value, dict) else {}


def expand_deployment(obj: dict[str, Any], problems: list[Problem], source: str, index: int) -> list[dict[str, Any]]:
    """apps/v1 Deployment → its pods: names `<deploy>-<hash5>`, labels from the template.
    `replicas` as the API server takes it (an integer ≥ 0, default 1), at most MAX_REPLICAS."""
    meta, spec = _mapping(obj, "metadata"), _mapping(obj, "spec")
    template = _mapping(spec, "template")
    replicas = spec.get("replicas", 1)
    where = (source, index, "spec.replicas")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        problems.append(Problem(*where, f"{replicas!r} must be a non-negative integer", "Deployment", str(meta.get("name"))))
        return []
    if replicas > MAX_REPLICAS:
        problems.append(Problem(*where, f"{replicas} replicas: policyd expands at most {MAX_REPLICAS} pods per Deployment",
                                "Deployment", str(meta.get("name"))))
        return []
    pods = []
    names: set[str] = set()
    for i in range(replicas):
        # 5 hex characters collide from a few hundred replicas on (the birthday bound):
        # a replica whose name is taken draws again, so earlier names never change.
        name, draw = f"{meta.get('name')}-{stable_hash(str(meta.get('name')), str(i), length=5)}", 0
        while name in names:
            draw += 1
            name = f"{meta.get('name')}-{stable_hash(str(meta.get('name')), str(i), str(draw), length=5)}"
        names.add(name)
        pod_meta = copy.deepcopy(_mapping(template, "metadata"))
        pod_meta.update({"name": name, "namespace": meta.get("namespace") or "default"})
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta,
                     "spec": copy.deepcopy(_mapping(template, "spec"))})
    return pods


def flatten(doc: Any, problems: list[Problem], source: str, index: int, depth: int = 0) -> list[Any]:
    if isinstance(doc, dict) and doc.get("kind") == "List":
        items = doc.get("items")
        if not isinstance(items, list) or depth > 8:
            problems.append(Problem(source, index, "items", "must be a list of objects (Lists nest at most 8 deep)"))
            return []
        return [x for item in items for x in flatten(item, problems, source, index, depth + 1)]
    if isinstance(doc, dict) and doc.get("kind") == "Deployment" and doc.get("apiVersion") == "apps/v1":
        return expand_deployment(doc, problems, source, index)
    return [doc]


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """YAML nodes in `node` with every alias expanded (memoised: a bomb is counted, not built)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = MAX_NODES + 1  # a cycle counts as too big
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[key] = min(size, MAX_NODES + 1)
    return memo[key]


def load_yaml(text: str) -> list[Any]:
    """Every document, refusing what would cost more than any real manifest: files over
    MAX_TEXT, documents over MAX_NODES nodes once aliases are expanded (a "billion laughs"
    of a few hundred bytes is refused before it is built)."""
    if len(text) > MAX_TEXT:
        raise ValueError(f"{len(text)} bytes: larger than the {MAX_TEXT // 2**20} MiB policyd reads in one file")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)  # libyaml: ~10x faster, same documents
    try:
        docs: list[Any] = []
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            if _expanded_size(node, {}) > MAX_NODES:
                raise ValueError(f"document {len(docs)} expands to more than {MAX_NODES} YAML nodes (aliases); refused")
            docs.append(loader.construct_document(node))
        return docs
    except RecursionError:
        raise ValueError("nested too deeply") from None
    finally:
        loader.dispose()


@dataclass(frozen=True)
class RawObject:
    """One API object as written (Deployments already expanded) and where it came from."""

    source: str
    index: int
    raw: Any


def raw_documents(source: str, text: str, problems: list[Problem]) -> list[RawObject]:
    try:
        docs = load_yaml(text)
    except yaml.YAMLError as e:
        problems.append(Problem(source, None, "", f"not valid YAML: {e}"))
        return []
    except ValueError as e:
        problems.append(Problem(source, None, "", str(e)))
        return []
    return [RawObject(source, i, obj) for i, doc in enumerate(docs) if doc is not None
            for obj in flatten(doc, problems, source, i)]


def load_documents(source: str, text: str, into: Manifests) -> None:
    for r in raw_documents(source, text, into.problems):
        value, problems = parse_object(r.raw, r.source, r.index)
        into.problems.extend(problems)
        if value is not None:
            into.add(value)


def read_text(f: Path, problems: list[Problem]) -> str | None:
    """A manifest file's text, or None with the reason added to `problems`. Files and pipes
    (`-f /dev/stdin`, `-f <(kubectl get …)`) are read, at most MAX_TEXT bytes of them, so an
    endless input costs no more than a real manifest; devices and sockets are refused."""
    try:
        mode = f.stat().st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
            problems.append(Problem(str(f), None, "", "not a file: manifests are read from files, directories or pipes"))
            return None
        with f.open("rb") as fh:
            data = fh.read(MAX_TEXT + 1)
        if len(data) > MAX_TEXT:
            problems.append(Problem(str(f), None, "", f"larger than the {MAX_TEXT // 2**20} MiB policyd reads in one file"))
            return None
        return data.decode("utf-8")
    except OSError as e:
        problems.append(Problem(str(f), None, "", f"cannot read: {e.strerror}"))
    except UnicodeDecodeError as e:
        problems.append(Problem(str(f), None, "", f"not UTF-8 text (byte {e.start}): manifests are UTF-8"))
    return None


def load(paths: Iterable[str | Path]) -> Manifests:
    """Read every manifest under `paths`; all problems are collected, none raised."""
    out = Manifests()
    for f in iter_files(paths, out.problems):
        text = read_text(f, out.problems)
        if text is not None:
            load_documents(str(f), text, out)
    check_duplicates(out)
    return out.with_implicit_namespaces()


def check_duplicates(m: Manifests) -> None:
    objects: list[tuple[str, list[Any]]] = [("Namespace", m.namespaces), ("Pod", m.pods), ("NetworkPolicy", m.policies),
                                             ("ClusterNetworkPolicy", m.cluster_policies), ("Node", m.nodes)]
    for kind, objs in objects:
        seen: set[str] = set()
        for o in objs:
            key = getattr(o, "key", None) or o.name
            if key in seen:
                m.problems.append(Problem("<manifests>", None, "metadata.name", f"duplicate {kind} {key}", kind, key))
            seen.add(key)
