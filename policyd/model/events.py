"""What sources tell the agent: an object was created or changed, or it is gone.

Sources (the manifest directory of the lab, the kopf watch of a cluster) produce these;
`compile.engine.Compiler.apply` consumes them. Nothing downstream knows the source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .objects import KubeObject

Kind = Literal["Namespace", "Pod", "NetworkPolicy", "ClusterNetworkPolicy", "Node"]


def kind_of(obj: KubeObject) -> Kind:
    return type(obj).__name__  # type: ignore[return-value]


def key_of(obj: KubeObject) -> str:
    """`ns/name` for namespaced kinds, `name` otherwise."""
    return getattr(obj, "key", None) or obj.name


@dataclass(frozen=True)
class Upsert:
    obj: KubeObject


@dataclass(frozen=True)
class Delete:
    kind: Kind
    key: str


Event = Upsert | Delete
