"""What policyd knows of CNI plugins, in one place: how a plugin's pods look from the host
(routed through a veth with a known prefix, or bridged), which dispatch mode that calls for,
how the node's CNI configuration is read, and how Calico names a pod's host-side veth."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DispatchMode

CNI_DIR = Path("/etc/cni/net.d")
# A host-side interface prefix: an interface name (15 characters at most) less one.
IFPREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,14}$")


@dataclass(frozen=True)
class Detected:
    mode: DispatchMode
    prefixes: tuple[str, ...]
    reason: str


# Plugin type → how its pods look from the host. Routed plugins give each pod a host-side
# veth with a known prefix; bridging plugins put pods on a bridge, where br_netfilter shows
# the bridge to the inet hooks, so pods are told apart by address.
ROUTED = {"calico": ("cali",), "cilium-cni": ("lxc",), "kube-router": ("veth",), "ptp": ("veth",)}
BRIDGED = {"bridge", "flannel", "weave-net", "antrea"}


def plugin_types(conf: dict[str, Any]) -> list[str]:
    """The plugin types of a .conf (one plugin) or .conflist (a chain), in order."""
    if isinstance(conf.get("plugins"), list):
        return [str(p.get("type", "")) for p in conf["plugins"] if isinstance(p, dict)]
    return [str(conf.get("type", ""))]


def detect_dispatch(cni_dir: Path = CNI_DIR) -> Detected:
    """Read the first CNI config in lexical order, as the container runtime picks it.

    Raises ValueError when there is none or its plugin is unknown: the agent then needs
    `--dispatch-mode` (guessing wrong would leave pods unfiltered)."""
    try:
        files = sorted(p for p in cni_dir.iterdir() if p.suffix in (".conf", ".conflist", ".json") and p.is_file())
    except OSError as e:
        raise ValueError(f"cannot read CNI configuration in {cni_dir}: {e.strerror}") from None
    if not files:
        raise ValueError(f"no CNI configuration in {cni_dir}")
    first = files[0]
    try:
        conf = json.loads(first.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{first}: not readable JSON ({e})") from None
    types = plugin_types(conf)
    for t in types:
        if t in ROUTED:
            return Detected(DispatchMode.INTERFACE, ROUTED[t], f"{first.name}: plugin {t!r} routes each pod through its own veth")
        if t in BRIDGED:
            return Detected(DispatchMode.ADDRESS, (), f"{first.name}: plugin {t!r} bridges pods, dispatch by pod address")
    raise ValueError(f"{first.name}: plugins {types} are not known to policyd; set --dispatch-mode (and --interface-prefix)")


def calico_interface(pod_key: str, prefix: str = "cali") -> str:
    """The name Calico's CNI plugin gives a pod's host-side veth: prefix + sha1("ns.pod")[:11].
    Used where routes cannot be read (dry runs) and by the lab, which names veths the same way."""
    ns, _, name = pod_key.partition("/")
    return prefix + hashlib.sha1(f"{ns}.{name}".encode()).hexdigest()[:15 - len(prefix)]
