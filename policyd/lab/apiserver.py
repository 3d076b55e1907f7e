"""The lab's API server: a directory of manifests, one file per object, that the node
agents read (`sources.manifest_dir`), with a generation number bumped after every change;
and the reading of a request's files as the API server would (all or nothing)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ..model.events import key_of, kind_of
from ..model.manifests import RawObject, iter_files, raw_documents, read_text
from ..model.objects import KubeObject, NetworkPolicy, Pod
from ..model.parse import parse_object
from ..model.problems import InvalidInput, Problem
from .records import LabError

LAB_KINDS = {("v1", "Pod"), ("v1", "Namespace"), ("v1", "Node"), ("networking.k8s.io/v1", "NetworkPolicy"),
             *((f"policy.networking.k8s.io/{v}", "ClusterNetworkPolicy") for v in ("v1alpha2", "v1beta1"))}
CLUSTER_SCOPED = ("Namespace", "Node", "ClusterNetworkPolicy")


def file_name(kind: str, key: str) -> str:
    """`pod.default.frontend-x.yaml`: names are validated DNS labels/subdomains, no `/`."""
    ns, _, name = key.rpartition("/")
    return f"{kind.lower()}.{ns or '_'}.{name}.yaml"


class ManifestStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, kind: str, key: str, raw: dict[str, Any]) -> bool:
        """Write atomically; False when the file already held exactly this."""
        path = self.path / file_name(kind, key)
        text = yaml.safe_dump(raw, sort_keys=False)
        if path.exists() and path.read_text() == text:
            return False
        tmp = self.path / f".{path.name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
        return True

    def read(self, kind: str, key: str) -> dict[str, Any] | None:
        path = self.path / file_name(kind, key)
        return yaml.safe_load(path.read_text()) if path.exists() else None

    def remove(self, kind: str, key: str) -> bool:
        path = self.path / file_name(kind, key)
        if not path.exists():
            return False
        path.unlink()
        return True

    def remove_namespaced(self, namespace: str) -> list[str]:
        """A namespace's pods and policies go with it; returns the pods' keys."""
        pods = []
        for f in list(self.path.glob("*.yaml")):
            kind_part, ns_part, rest = f.name.split(".", 2)  # namespaces have no dots
            if ns_part != namespace:
                continue
            f.unlink()
            if kind_part == "pod":
                pods.append(f"{namespace}/{rest[: -len('.yaml')]}")
        return pods

    def generation(self) -> int:
        path = self.path / "generation"
        return int(path.read_text()) if path.exists() else 0

    def bump_generation(self) -> int:
        gen = self.generation() + 1
        tmp = self.path / ".generation.tmp"
        tmp.write_text(str(gen))
        os.replace(tmp, self.path / "generation")
        return gen

    def objects(self) -> list[KubeObject]:
        """Every object, parsed (the same files the agents read)."""
        out = []
        for f in sorted(self.path.glob("*.yaml")):
            obj, problems = parse_object(yaml.safe_load(f.read_text()), str(f), 0)
            if obj is not None and not problems:
                out.append(obj)
        return out

    def implicit_namespaces(self, objs: Iterable[Any]) -> None:
        """Namespaces that pods or policies name exist, as they do on a cluster."""
        for ns in sorted({o.namespace for o in objs if isinstance(o, (Pod, NetworkPolicy))}):
            if self.read("Namespace", ns) is None:
                self.write("Namespace", ns, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})


# --- reading a request --------------------------------------------------------------------


def read_raw(paths: list[str]) -> list[RawObject]:
    problems: list[Problem] = []
    out: list[RawObject] = []
    for f in iter_files(paths):
        text = read_text(f, problems)
        if text is not None:
            out += raw_documents(str(f), text, problems)
    if problems:
        raise InvalidInput(problems)
    if not out:
        raise LabError(f"no objects in {', '.join(paths)}")
    return out


def identities(raws: list[RawObject]) -> list[tuple[str, str]]:
    """(kind, key) of each object, from apiVersion, kind and metadata alone: deleting needs
    no more (kubectl delete -f takes a manifest of just those)."""
    problems: list[Problem] = []
    out = []
    for r in raws:
        obj = r.raw if isinstance(r.raw, dict) else {}
        kind, api = obj.get("kind"), obj.get("apiVersion")
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        name, ns = meta.get("name"), meta.get("namespace") or "default"
        if (api, kind) not in LAB_KINDS:
            problems.append(Problem(r.source, r.index, "kind",
                                    f"cannot delete {api}/{kind}: the lab holds Pods, Namespaces, NetworkPolicies and ClusterNetworkPolicies"))
        elif not isinstance(name, str) or not name or not isinstance(ns, str):
            problems.append(Problem(r.source, r.index, "metadata.name", "required: which object to delete", str(kind)))
        else:
            out.append((str(kind), name if kind in CLUSTER_SCOPED else f"{ns}/{name}"))
    if problems:
        raise InvalidInput(problems)
    return out


def validate(raws: list[RawObject]) -> list[tuple[KubeObject, RawObject]]:
    """Parse everything; any problem rejects the whole request, as the API server would."""
    problems: list[Problem] = []
    out = []
    seen: set[tuple[str, str]] = set()
    for r in raws:
        obj, ps = parse_object(r.raw, r.source, r.index)
        problems += ps
        if obj is None:
            continue
        ident = (kind_of(obj), key_of(obj))
        if ident in seen:
            problems.append(Problem(r.source, r.index, "metadata.name", f"duplicate {ident[0]} {ident[1]}", ident[0], ident[1]))
        seen.add(ident)
        out.append((obj, r))
    if problems:
        raise InvalidInput(problems)
    return out
