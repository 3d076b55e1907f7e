"""The cluster agent's settings, and the dispatch mode read from the node's CNI config."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ..backends import BACKENDS, table_problem
from ..dataplane.config import DispatchMode

PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,14}$")
CNI_DIR = Path("/etc/cni/net.d")


class FailMode(str, Enum):
    """What a pod interface policyd has not programmed yet gets (a pod just created, or one
    the agent has not seen in the API yet)."""

    OPEN = "open"  # traffic passes as the CNI left it until the pod's chains are in place
    CLOSED = "closed"  # traffic on an unprogrammed pod interface (by prefix) is dropped


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


@dataclass(frozen=True)
class AgentSettings:
    node_name: str
    kubeconfig: str | None = None  # None: in-cluster config, else ~/.kube/config
    dispatch_mode: DispatchMode | None = None  # None: detect from the CNI configuration
    interface_prefixes: tuple[str, ...] = ()
    cni_dir: Path = CNI_DIR
    fail_mode: FailMode = FailMode.OPEN
    table: str = "policyd"
    backend: str = "nftables"  # nftables | iptables (resolved from auto by the CLI)
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 9808  # /metrics; 0: none
    health_port: int = 9809  # /healthz (liveness) and /readyz; 0: none (the chart's probes need it)
    log_format: str = "text"
    min_interval: float = 0.0
    resync_every: float = 300.0
    relist_grace: float = 2.0  # after kopf relists a kind, compare with a list of ours
    relist_every: float = 1800.0  # and anyway this often: deletions a lost watch hid

    def problems(self) -> list[str]:
        out = []
        for p in self.interface_prefixes:
            if not PREFIX_RE.match(p):
                out.append(f"--interface-prefix {p!r}: 1-14 of [A-Za-z0-9_.-]")
        if self.fail_mode is FailMode.CLOSED and self.dispatch_mode is DispatchMode.ADDRESS:
            out.append("--fail-mode closed needs interface dispatch (it drops unprogrammed pod interfaces by prefix)")
        if self.fail_mode is FailMode.CLOSED and self.dispatch_mode is DispatchMode.INTERFACE and not self.interface_prefixes:
            out.append("--fail-mode closed needs --interface-prefix (which interfaces are pods')")
        if self.backend not in BACKENDS:
            out.append("--backend is nftables, iptables or auto")
        elif (why := table_problem(self.backend, self.table)) is not None:
            out.append(why)
        if self.log_format not in ("text", "json"):
            out.append("--log-format is text or json")
        return out
